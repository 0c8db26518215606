"""A direct S3 client (http.client and SigV4) for what backups and restores ask of S3.

Why it exists: `import boto3` and building one client take 0.4-0.6 s, while an unchanged rerun
of 5,000 files needs about 0.3 s besides; on the hourly run of a fleet that is most of the work,
and it is a tenth of a restore. This client speaks the operations of a run, a restore and a
check (HeadObject, GetObject, ListObjectsV2, GetBucketVersioning, PutObject, the multipart
upload calls) with botocore's method names, arguments, answers and exceptions, so the rest of
the code takes either client. Deletes, Glacier restore requests, bucket setup and command jobs'
streamed uploads keep boto3, imported only when one of them is needed.

It serves storage with static keys (the config's, or AWS_ACCESS_KEY_ID in the environment) and
no setting that boto3 would honour and this client does not (proxies, endpoint overrides, FIPS or
dual-stack endpoints, China regions); otherwise boto3 does it all, as it does when
BACKUP_AGENT_S3_CLIENT=boto3. Retries follow botocore's standard mode: up to 10 attempts for
connection errors, 5xx, throttling and RequestTimeout, with exponential backoff and full jitter;
a body that breaks off while it streams raises StreamBroken for the reader to retry, as
botocore's errors do.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import random
import re
import ssl  # http.client imports it anyway
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote_plus, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent import __version__
from backup_agent.config import Storage
from backup_agent.errors import ConfigError
from backup_agent.storage.s3 import IncompleteAnswer
from backup_agent.storage.sigv4 import EMPTY_SHA256, UNSIGNED, Signer, uri_encode

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
MAX_ATTEMPTS = 10
MAX_BACKOFF = 20.0
SEND_BLOCK = 1 << 20
RETRY_STATUS = frozenset({500, 502, 503, 504, 429})
# Throttling backs off 1 s * 2^n (capped, jittered), other faults 0.05 s * 2^n: botocore's scales.
THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "TooManyRequestsException", "RequestThrottled", "PriorRequestNotComplete"})
RETRY_CODES = THROTTLING | {"RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable"}
# Settings boto3 would apply that this client does not implement: with any of them, boto3 it is.
BOTO_ONLY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT")
HEADER_OF = {"ServerSideEncryption": "x-amz-server-side-encryption",
             "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
             "StorageClass": "x-amz-storage-class", "ContentType": "content-type",
             "ChecksumSHA256": "x-amz-checksum-sha256", "ChecksumAlgorithm": "x-amz-checksum-algorithm"}
DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_CONTENTS = re.compile(rb"<Contents>(.*?)</Contents>", re.S)
_ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|amp|lt|gt|quot|apos);")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class Readable(Protocol):
    """A re-readable request body that is not in memory (bodies.FileRange, bodies.Pieces)."""

    def __len__(self) -> int: ...
    def read(self, n: int = -1) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...


class S3Unreachable(BotoCoreError):
    fmt = "{operation}: no answer from {endpoint} after {attempts} attempts: {error}"


class StreamBroken(BotoCoreError):
    fmt = "{key}: the answer broke off: {error}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    stream: StreamBody | None = None


class StreamBody:
    """An object's bytes as they arrive, like botocore's StreamingBody: a body that ends before
    its Content-Length, or breaks, raises StreamBroken (a BotoCoreError) for the caller to retry."""

    def __init__(self, client: DirectS3, host: str, conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, label: str) -> None:
        self._client, self._host, self._conn, self._resp, self._label = client, host, conn, resp, label
        self.remaining = resp.length  # None without a Content-Length
        self._open = True

    def read(self, n: int = -1) -> bytes:
        if not self._open:
            return b""
        try:
            data = self._resp.read(None if n is None or n < 0 else n)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StreamBroken(key=self._label, error=str(exc) or type(exc).__name__) from None
        if self.remaining is not None:
            self.remaining -= len(data)
            if not data and self.remaining > 0 and n != 0:
                self.close()
                raise StreamBroken(key=self._label, error=f"{self.remaining} bytes missing")
        if self.remaining == 0 or (not data and n != 0):
            self._open = False
            self._client._done_with(self._host, self._conn, self._resp)
        return data

    def close(self) -> None:
        if self._open:  # not read to its end: the connection is mid-answer
            self._open = False
            self._conn.close()


def direct_client(storage: Storage) -> DirectS3 | None:
    """The direct client for this storage, or None when boto3 must serve it (module docstring)."""
    choice = os.environ.get("BACKUP_AGENT_S3_CLIENT", "auto")
    if choice not in ("auto", "boto3"):
        raise ConfigError(f"BACKUP_AGENT_S3_CLIENT={choice}: expected auto or boto3")
    if choice == "boto3":
        return None
    from backup_agent.storage import endpoints

    # Interim wiring of storage.endpoints until the storage factory (storage/open.py) calls it once.
    storage = endpoints.resolve(storage)
    if any(os.environ.get(name) for name in BOTO_ONLY_ENV) or storage.region.startswith("cn-"):
        return None
    if storage.access_key_id and storage.secret_access_key:
        keys = (storage.access_key_id, storage.secret_access_key, storage.session_token)
    elif os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                os.environ.get("AWS_SESSION_TOKEN") or None)
    else:
        return None  # instance profiles, SSO, shared files: botocore's credential chain
    if storage.endpoint_url and urlsplit(storage.endpoint_url).scheme not in ("http", "https"):
        return None
    return DirectS3(storage.endpoint_url, Signer(*keys, region=storage.region))


class DirectS3:
    def __init__(self, endpoint_url: str | None, signer: Signer) -> None:
        self.signer = signer
        self.endpoint_url = endpoint_url
        if endpoint_url:  # SeaweedFS, MinIO and other custom endpoints: path-style addressing
            url = urlsplit(endpoint_url)
            self.scheme, self._netloc, self._base = url.scheme, url.netloc, url.path.rstrip("/")
        else:
            self.scheme, self._netloc, self._base = "https", "", ""
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._tls: Any = None

    # --- the operations, as botocore names them ---------------------------------------------------

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        h = self._request("HeadObject", "HEAD", Bucket, Key).headers
        out: dict[str, Any] = {"ContentLength": int(h.get("content-length", 0)), "ETag": h.get("etag", "")}
        for name, header in (("StorageClass", "x-amz-storage-class"), ("Restore", "x-amz-restore"),
                             ("ArchiveStatus", "x-amz-archive-status")):
            if header in h:
                out[name] = h[header]
        return out

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        a = self._request("GetObject", "GET", Bucket, Key, headers={"range": Range} if Range else None, stream=True)
        assert a.stream is not None
        return {"Body": a.stream, "ContentLength": a.stream.remaining}

    def download_fileobj(self, Bucket: str, Key: str, Fileobj: Any) -> None:
        """The whole object into a seekable file; a body that breaks off is fetched again."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            Fileobj.seek(0)
            Fileobj.truncate()
            body = self.get_object(Bucket=Bucket, Key=Key)["Body"]
            try:
                while chunk := body.read(SEND_BLOCK):
                    Fileobj.write(chunk)
                return
            except StreamBroken:
                if attempt == MAX_ATTEMPTS:
                    raise
                _backoff(attempt, 0.05)
            finally:
                body.close()

    def get_paginator(self, name: str) -> ListPages:
        if name != "list_objects_v2":
            raise ValueError(f"DirectS3: no paginator {name}")
        return ListPages(self)

    def list_page(self, bucket: str, prefix: str, token: str | None, page_size: int | None = None) -> dict[str, Any]:
        # encoding-type=url, as botocore asks: keys with characters XML cannot carry still list.
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url",
                 **({"continuation-token": token} if token else {}),
                 **({"max-keys": str(page_size)} if page_size else {})}
        body = self._request("ListObjectsV2", "GET", bucket, "", query).body
        decode = unquote_plus if _tag(body, "EncodingType") == "url" else str
        contents = []
        for m in _CONTENTS.finditer(body):
            item = m.group(1)
            obj: dict[str, Any] = {"Key": decode(_tag(item, "Key") or ""), "Size": int(_tag(item, "Size") or 0)}
            for name in ("StorageClass", "ETag"):
                value = _tag(item, name)
                if value is not None:
                    obj[name] = value
            modified = _tag(item, "LastModified")
            if modified:
                obj["LastModified"] = datetime.fromisoformat(modified)
            contents.append(obj)
        page: dict[str, Any] = {"KeyCount": len(contents), "IsTruncated": _tag(body, "IsTruncated") == "true"}
        if contents:
            page["Contents"] = contents
        if page["IsTruncated"]:
            page["NextContinuationToken"] = _tag(body, "NextContinuationToken")
        return page

    def get_bucket_versioning(self, *, Bucket: str) -> dict[str, Any]:
        body = self._request("GetBucketVersioning", "GET", Bucket, "", {"versioning": ""}).body
        status = _tag(body, "Status")
        return {"Status": status} if status else {}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes | Readable, **extra: str) -> dict[str, Any]:
        a = self._request("PutObject", "PUT", Bucket, Key, headers=_headers(extra), body=Body)
        return {"ETag": a.headers["etag"]} if "etag" in a.headers else {}

    def create_multipart_upload(self, *, Bucket: str, Key: str, **extra: str) -> dict[str, Any]:
        a = self._request("CreateMultipartUpload", "POST", Bucket, Key, {"uploads": ""}, _headers(extra))
        upload_id = _tag(a.body, "UploadId")
        if not upload_id:
            raise IncompleteAnswer(operation="CreateMultipartUpload", detail="the answer has no UploadId")
        return {"UploadId": upload_id}

    def upload_part(self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes | Readable,
                    ChecksumAlgorithm: str | None = None) -> dict[str, Any]:
        headers = {}
        if ChecksumAlgorithm:
            if ChecksumAlgorithm != "SHA256":
                raise ValueError(f"ChecksumAlgorithm {ChecksumAlgorithm}: only SHA256 is implemented")
            headers["x-amz-checksum-sha256"] = _sha256_b64(Body)
        a = self._request("UploadPart", "PUT", Bucket, Key, {"partNumber": str(PartNumber), "uploadId": UploadId},
                          headers, Body)
        out = {}
        if "etag" in a.headers:
            out["ETag"] = a.headers["etag"]
        if "x-amz-checksum-sha256" in a.headers:  # no headers at all: the caller sends it again
            out["ChecksumSHA256"] = a.headers["x-amz-checksum-sha256"]
        return out

    def complete_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str,
                                  MultipartUpload: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        parts = "".join(
            f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{_escape(p['ETag'])}</ETag>"
            + (f"<ChecksumSHA256>{p['ChecksumSHA256']}</ChecksumSHA256>" if "ChecksumSHA256" in p else "")
            + "</Part>" for p in MultipartUpload["Parts"])
        body = f'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{parts}' \
               "</CompleteMultipartUpload>".encode()
        a = self._request("CompleteMultipartUpload", "POST", Bucket, Key, {"uploadId": UploadId},
                          {"content-type": "application/xml"}, body, hashlib.sha256(body).hexdigest())
        return {"ETag": _tag(a.body, "ETag") or ""}

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self._request("AbortMultipartUpload", "DELETE", Bucket, Key, {"uploadId": UploadId})
        return {}

    # --- one request, retried ---------------------------------------------------------------------

    def _request(self, op: str, method: str, bucket: str, key: str, query: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, body: bytes | Readable | None = None,
                 payload: str | None = None, *, stream: bool = False) -> Answer:
        query = query or {}
        if payload is None:
            payload = EMPTY_SHA256 if body is None or len(body) == 0 else UNSIGNED
        failure: Exception | None = None
        scale = 0.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            host, path = self._where(bucket, key)
            target = path + ("?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query.items())
                             if query else "")
            signed = self.signer.sign(method, host, path, query, headers or {}, payload)
            signed["user-agent"] = f"backup-agent/{__version__}"
            try:
                answer = self._exchange(host, method, target, signed, body, stream)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise S3Unreachable(operation=op, endpoint=self._describe_endpoint(host), attempts=attempt,
                                        error=str(exc)) from None
                failure = S3Unreachable(operation=op, endpoint=self._describe_endpoint(host), attempts=attempt,
                                        error=str(exc) or type(exc).__name__)
                scale = 0.05
            else:
                # CompleteMultipartUpload can fail after its 200 status line: the error is the body.
                failed = answer.status >= 300 or (op == "CompleteMultipartUpload" and b"<Error>" in answer.body)
                if not failed:
                    return answer
                code, message = _error(answer)
                failure = ClientError({"Error": {"Code": code, "Message": message},
                                       "ResponseMetadata": {"HTTPStatusCode": answer.status}},  # type: ignore[typeddict-item]
                                      op)
                region = answer.headers.get("x-amz-bucket-region")
                if not self.endpoint_url and region and region != self.signer.region:
                    self.signer.region = region  # the bucket lives elsewhere: ask there
                    continue
                if answer.status not in RETRY_STATUS and code not in RETRY_CODES:
                    raise failure
                scale = 1.0 if code in THROTTLING or answer.status == 429 else 0.05
            if attempt < MAX_ATTEMPTS:
                _backoff(attempt, scale)
        assert failure is not None
        raise failure

    def _exchange(self, host: str, method: str, target: str, headers: dict[str, str],
                  body: bytes | Readable | None, stream: bool) -> Answer:
        conn = self._connection(host)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is None:
                if method in ("PUT", "POST"):
                    conn.putheader("content-length", "0")
                conn.endheaders()
            elif isinstance(body, bytes | bytearray | memoryview):
                conn.putheader("content-length", str(len(body)))
                conn.endheaders(body)
            else:
                conn.putheader("content-length", str(len(body)))
                conn.endheaders()
                send_to = getattr(body, "send_to", None)
                if send_to is not None and self.scheme == "http":
                    send_to(conn.sock)
                else:
                    body.seek(0)
                    while chunk := body.read(SEND_BLOCK):
                        conn.send(chunk)
            resp = conn.getresponse()
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
            if stream and resp.status < 300:  # the body is read by the caller, on this connection
                return Answer(resp.status, rheaders, b"", StreamBody(self, host, conn, resp, target))
            data = resp.read()
        except BaseException:
            conn.close()  # mid-request: this connection cannot be reused
            raise
        self._done_with(host, conn, resp)
        return Answer(resp.status, rheaders, data)

    def _done_with(self, host: str, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        if resp.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.setdefault(host, []).append(conn)

    def _connection(self, host: str) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(host)
            if idle:
                return idle.pop()
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(host, timeout=CONNECT_TIMEOUT, context=self._tls_context())
        else:
            conn = http.client.HTTPConnection(host, timeout=CONNECT_TIMEOUT)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(READ_TIMEOUT)
        return conn

    def _tls_context(self) -> Any:
        if self._tls is None:
            # AWS_CA_BUNDLE as botocore reads it: a private CA in front of a custom endpoint.
            self._tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
        return self._tls

    def _where(self, bucket: str, key: str) -> tuple[str, str]:
        """Host and encoded path: path-style on custom endpoints, virtual-hosted on AWS."""
        if self.endpoint_url:
            return self._netloc, uri_encode(f"{self._base}/{bucket}" + (f"/{key}" if key else ""), path=True)
        aws = f"s3.{self.signer.region}.amazonaws.com"
        if DNS_BUCKET.fullmatch(bucket):  # dotted names would not match the wildcard certificate
            return f"{bucket}.{aws}", uri_encode(f"/{key}", path=True)
        return aws, uri_encode(f"/{bucket}" + (f"/{key}" if key else ""), path=True)

    def _describe_endpoint(self, host: str | None = None) -> str:
        return self.endpoint_url or f"https://{host or 's3.' + self.signer.region + '.amazonaws.com'}"


class ListPages:
    """`get_paginator("list_objects_v2")` as botocore offers it, for Bucket and Prefix."""

    def __init__(self, client: DirectS3) -> None:
        self.client = client

    def paginate(self, *, Bucket: str, Prefix: str = "",
                 PaginationConfig: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self.client.list_page(Bucket, Prefix, token, (PaginationConfig or {}).get("PageSize"))
            yield page
            token = page.get("NextContinuationToken")
            if not token:
                return


def _backoff(attempt: int, scale: float) -> None:
    time.sleep(random.random() * min(scale * 2 ** (attempt - 1), MAX_BACKOFF))


def _headers(extra: dict[str, str]) -> dict[str, str]:
    unknown = set(extra) - set(HEADER_OF)
    if unknown:
        raise TypeError(f"DirectS3: unsupported arguments {sorted(unknown)}")
    return {HEADER_OF[k]: v for k, v in extra.items()}


def _tag(body: bytes, name: str) -> str | None:
    """The text of the first <name> element: S3's answers are flat enough for a pattern."""
    m = re.search(rb"<%s>(.*?)</%s>" % (name.encode(), name.encode()), body, re.S)
    return _ENTITY.sub(_entity, m.group(1).decode()) if m else None


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _entity(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref.startswith("#"):
        return chr(int(ref[2:], 16) if ref[1:2] in ("x", "X") else int(ref[1:]))
    return _NAMED[ref]


def _error(answer: Answer) -> tuple[str, str]:
    """Code and message as botocore gives them: from the XML body, or the status for HEAD."""
    code = _tag(answer.body, "Code") if answer.body else None
    if code:
        return code, _tag(answer.body, "Message") or ""
    return str(answer.status), http.client.responses.get(answer.status, "")


def _sha256_b64(body: bytes | Readable) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        return base64.b64encode(hashlib.sha256(body).digest()).decode()
    h = hashlib.sha256()
    body.seek(0)
    while chunk := body.read(SEND_BLOCK):
        h.update(chunk)
    return base64.b64encode(h.digest()).decode()
