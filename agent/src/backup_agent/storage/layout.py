"""Where things live in the bucket, relative to `<prefix>/<job>/`.

    snapshots/<id>.json.gz        the manifest; written last, so its presence means "complete"
                                  (sealed, under the same name, when an encryption key is set)
    packs/<xx>/<random id>        encoded pieces back to back: small files and chunks of big
                                  files; the manifest holds offsets and lengths
    files/<abs path>@<hash16>     large files under a readable key, written before format 3 (read only)
    blobs/<xx>/<sha256>           large files whose path could not be an S3 key, before format 3 (read only)
    dumps/<snapshot id>.<ext>     command job output (one object per snapshot)
"""

from __future__ import annotations

import contextlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from backup_agent.jobs.registry import OWNED_DIRS

# `20261127T020000.123456Z-1a2b3c`; ids made before sub-second times were added have no
# fraction (`20261127T020000Z-1a2b3c`) and still parse.
SNAPSHOT_ID = re.compile(r"^(?P<ts>\d{8}T\d{6})(?:\.(?P<us>\d{6}))?Z-(?P<rand>[0-9a-f]{6})$")
_KEY_SAFE = re.compile(r"^[^\x00-\x1f\x7f\\]+$")
# S3 refuses keys over 1,024 bytes (UTF-8); SeaweedFS, whose filer stores a key as a path, also
# refuses any '/'-separated part over 255 bytes (KeyTooLongError). A key must meet both.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
# The longest key below the job root the agent makes without a user's path in it (`blobs/` is
# longer than `packs/`, `snapshots/<id>.json.gz` and `dumps/<id>.dump.zst`).
LONGEST_FIXED_KEY = len("blobs/xx/") + 64


def job_root(prefix: str, job: str) -> str:
    return f"{prefix.strip('/')}/{job}/"


def fits(key: str) -> bool:
    """Whether every store the agent supports accepts `key` (a whole key, job root included)."""
    return (len(key.encode()) <= MAX_KEY_BYTES
            and all(len(part.encode()) <= MAX_SEGMENT_BYTES for part in key.split("/")))


def root_problem(prefix: str, job: str) -> str | None:
    """Why the job's root leaves no room for the agent's own keys, or None when it does.

    Config loading refuses such a prefix/job pair: otherwise every upload would fail at run time."""
    parts = prefix.strip("/").split("/")
    if (long := next((p for p in parts if len(p.encode()) > MAX_SEGMENT_BYTES), None)) is not None:
        return f"'{long[:20]}...' is {len(long.encode())} bytes; a store accepts at most " \
               f"{MAX_SEGMENT_BYTES} bytes between two '/'"
    size = len(job_root(prefix, job).encode())
    if size + LONGEST_FIXED_KEY > MAX_KEY_BYTES:
        return f"with job '{job}' the keys would be {size + LONGEST_FIXED_KEY} bytes; S3 accepts at most " \
               f"{MAX_KEY_BYTES} (prefix and job name may take {MAX_KEY_BYTES - LONGEST_FIXED_KEY - 2} bytes together)"
    return None


def new_snapshot_id(now: datetime, after: str | None = None) -> str:
    """A new id, later than `after` (the job's newest snapshot) even if the clock says otherwise.

    Microseconds and the `after` bound give snapshots a total order by creation: with whole
    seconds, two runs in the same second were ordered by their random suffix, and `latest`,
    `--at` and retention picked between them by chance. A clock that is stopped or set back
    still gives a later id than the snapshot before it."""
    t = now.astimezone(UTC)
    if after is not None and SNAPSHOT_ID.match(after):
        with contextlib.suppress(ValueError):
            t = max(t, snapshot_time(after) + timedelta(microseconds=1))
    return t.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


def snapshot_time(snapshot_id: str) -> datetime:
    """When the snapshot was made; ValueError for a string that is not a valid snapshot id."""
    m = SNAPSHOT_ID.match(snapshot_id)
    if not m:
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    t = datetime.strptime(m["ts"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    return t.replace(microsecond=int(m["us"])) if m["us"] else t


def order_rank(snapshot_id: str) -> int:
    """Breaks a tie of equal times: an id with a fraction was made after a whole-second id of the
    same instant (the fraction came with a later version of the agent)."""
    m = SNAPSHOT_ID.match(snapshot_id)
    return 1 if m and m["us"] else 0


def snapshot_order(snapshot_id: str) -> tuple[datetime, int, str]:
    """The sort key of snapshot ids, oldest first: every listing, selection and retention uses it."""
    return snapshot_time(snapshot_id), order_rank(snapshot_id), snapshot_id


def manifest_key(snapshot_id: str) -> str:
    return f"snapshots/{snapshot_id}.json.gz"


def snapshot_id_from_key(rel_key: str) -> str | None:
    if not rel_key.startswith("snapshots/") or not rel_key.endswith(".json.gz"):
        return None
    sid = rel_key[len("snapshots/") : -len(".json.gz")]
    try:
        snapshot_time(sid)  # the pattern alone lets through dates like 20261399T256199Z
    except ValueError:
        return None
    return sid


def new_pack_key() -> str:
    pid = secrets.token_hex(16)
    return f"packs/{pid[:2]}/{pid}"


def large_file_key(path: str, sha256: str, root: str) -> str:
    """The key of a large file below `root` (the job root): readable when it can be, else by hash.

    Only writers call this; readers take keys from manifests, so keys written by earlier versions
    (readable ones up to 900 bytes of path) keep working."""
    key = f"files/{path.lstrip('/')}@{sha256[:16]}"
    try:
        # The `@<hash16>` suffix makes a 239..255-byte file name a segment no store accepts; a
        # deep path or a long prefix makes the whole key too long: both take the hash key.
        readable = bool(_KEY_SAFE.match(path)) and fits(root + key)
    except UnicodeEncodeError:  # a name that is not UTF-8 (kept as surrogates)
        readable = False
    if readable:
        return key
    return f"blobs/{sha256[:2]}/{sha256}"


def is_owned(rel_key: str) -> bool:
    """Keys that the agent itself writes, and so may delete when nothing references them."""
    return rel_key.startswith(OWNED_DIRS)
