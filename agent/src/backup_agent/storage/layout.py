"""Where things live in the bucket, relative to `<prefix>/<job>/`.

    snapshots/<id>.json.gz        the manifest; written last, so its presence means "complete"
    packs/<xx>/<random id>        small files concatenated; the manifest holds offsets
    files/<abs path>@<hash16>     large files under a readable key (aws s3 cp works on them)
    blobs/<xx>/<sha256>           large files whose path cannot be an S3 key (control chars, bad UTF-8)
    dumps/<snapshot id>.<ext>     command job output (one object per snapshot)
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

SNAPSHOT_ID = re.compile(r"^(?P<ts>\d{8}T\d{6}Z)-(?P<rand>[0-9a-f]{6})$")
OWNED_DIRS = ("packs/", "files/", "blobs/", "dumps/")
_KEY_SAFE = re.compile(r"^[^\x00-\x1f\x7f\\]+$")


def job_root(prefix: str, job: str) -> str:
    return f"{prefix.strip('/')}/{job}/"


def new_snapshot_id(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def snapshot_time(snapshot_id: str) -> datetime:
    m = SNAPSHOT_ID.match(snapshot_id)
    if not m:
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def manifest_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}.json.gz"


def snapshot_id_from_key(rel_key: str) -> str | None:
    if not rel_key.startswith("snapshots/") or not rel_key.endswith(".json.gz"):
        return None
    sid = rel_key[len("snapshots/") : -len(".json.gz")]
    return sid if SNAPSHOT_ID.match(sid) else None


def new_pack_key() -> str:
    pid = secrets.token_hex(16)
    return f"packs/{pid[:2]}/{pid}"


def large_file_key(path: str, sha256: str) -> str:
    try:
        path.encode("utf-8")
        readable = bool(_KEY_SAFE.match(path)) and len(path.encode()) < 900
    except UnicodeEncodeError:
        readable = False
    if readable:
        return f"files/{path.lstrip('/')}@{sha256[:16]}"
    return f"blobs/{sha256[:2]}/{sha256}"


def is_owned(rel_key: str) -> bool:
    """Keys that the agent itself writes, and so may delete when nothing references them."""
    return rel_key.startswith(OWNED_DIRS)
