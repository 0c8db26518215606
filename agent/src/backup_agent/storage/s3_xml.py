"""S3's XML answers and request bodies, through the standard library's ElementTree (expat).

S3 qualifies its elements with a namespace some servers leave out; `_local` strips it so one
lookup works for AWS, SeaweedFS and moto alike. Dates come in ISO 8601 from AWS and in other
forms from some compatible servers: an unreadable one must not fail a listing (see `parse_time`).
"""

from __future__ import annotations

import email.utils
import html
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from backup_agent.storage.store import ObjectInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(node: ET.Element) -> dict[str, ET.Element]:
    return {_local(c.tag): c for c in node}


def _text(node: ET.Element, name: str, default: str = "") -> str:
    for child in node:
        if _local(child.tag) == name:
            return child.text or ""
    return default


def _root(body: bytes) -> ET.Element | None:
    if not body or not body.strip():
        return None
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def parse_time(text: str) -> datetime:
    """ISO 8601 (AWS), RFC 1123 (HTTP dates, some gateways); the epoch when neither reads, so one
    odd object never fails a listing (its age then reads as very old, which only makes it a
    candidate for a re-check, never for deletion by itself)."""
    text = (text or "").strip()
    if not text:
        return EPOCH
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            value = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return EPOCH
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class ErrorAnswer:
    code: str = ""
    message: str = ""
    region: str = ""
    endpoint: str = ""


def parse_error(body: bytes | None) -> ErrorAnswer:
    root = _root(body or b"")
    if root is None:
        return ErrorAnswer()
    if _local(root.tag) != "Error":  # some servers wrap it: <ErrorResponse><Error>...
        inner = _children(root).get("Error")
        root = inner if inner is not None else root
    return ErrorAnswer(_text(root, "Code"), " ".join(_text(root, "Message").split()),
                       _text(root, "Region"), _text(root, "Endpoint"))


@dataclass
class ListPage:
    objects: list[ObjectInfo] = field(default_factory=list)
    next_token: str | None = None


def parse_list(body: bytes) -> ListPage:
    """A ListObjectsV2 page asked for with encoding-type=url (keys URL-encoded, so keys with
    characters XML 1.0 cannot carry still list)."""
    root = _root(body)
    if root is None or _local(root.tag) != "ListBucketResult":
        raise ValueError("not a ListBucketResult")
    url_encoded = _text(root, "EncodingType").lower() == "url"
    page = ListPage()
    for node in root:
        if _local(node.tag) != "Contents":
            continue
        key = _text(node, "Key")
        page.objects.append(ObjectInfo(
            key=unquote_plus(key) if url_encoded else key,  # AWS writes a space as '+', botocore reads it so
            size=int(_text(node, "Size", "0") or 0),
            last_modified=parse_time(_text(node, "LastModified")),
            etag=_text(node, "ETag").strip('"'),
            storage_class=_text(node, "StorageClass", "STANDARD") or "STANDARD",
        ))
    if _text(root, "IsTruncated").lower() == "true":
        page.next_token = _text(root, "NextContinuationToken") or None
        if page.next_token is None and page.objects:
            raise ValueError("a truncated page without NextContinuationToken")
    return page


def parse_versioning(body: bytes) -> str | None:
    root = _root(body)
    if root is None:
        return None
    return _text(root, "Status") or None


def parse_upload_id(body: bytes) -> str:
    root = _root(body)
    return _text(root, "UploadId") if root is not None else ""


@dataclass
class DeleteResult:
    deleted: list[str] = field(default_factory=list)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # key, code, message


def parse_delete(body: bytes) -> DeleteResult:
    root = _root(body)
    if root is None:
        raise ValueError("not a DeleteResult")
    out = DeleteResult()
    for node in root:
        if _local(node.tag) == "Deleted":
            out.deleted.append(_text(node, "Key"))
        elif _local(node.tag) == "Error":
            out.errors.append((_text(node, "Key"), _text(node, "Code"), " ".join(_text(node, "Message").split())))
    return out


def _escape(text: str) -> str:
    # html.escape, not xml.sax.saxutils.escape: that module imports urllib.request (50 ms per run).
    return html.escape(text, quote=False)


def complete_body(parts: list[tuple[int, str, str]]) -> bytes:
    """CompleteMultipartUpload: (number, etag, base64 SHA-256) per part. The checksums are the
    ones we computed and sent, so servers that do not echo them (moto) complete all the same."""
    items = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(etag)}</ETag>"
        + (f"<ChecksumSHA256>{sha}</ChecksumSHA256>" if sha else "") + "</Part>"
        for n, etag, sha in parts
    )
    return f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{items}</CompleteMultipartUpload>'.encode()


def delete_body(keys: list[str]) -> bytes:
    items = "".join(f"<Object><Key>{_escape(k)}</Key></Object>" for k in keys)
    return f'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>{items}</Delete>'.encode()


def restore_body(days: int | None, tier: str) -> bytes:
    inner = f"<Days>{days}</Days>" if days is not None else ""
    inner += f"<GlacierJobParameters><Tier>{_escape(tier)}</Tier></GlacierJobParameters>" if days is not None else ""
    return f'<RestoreRequest xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</RestoreRequest>'.encode()
