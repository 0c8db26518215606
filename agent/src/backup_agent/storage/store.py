"""The storage interface every job uses, whatever holds the bytes (S3, an S3-compatible cluster,
later a database).

Jobs see keys, byte ranges and a few error types; never a client library, never its exceptions.
An implementation owns everything below that line: signing, connections, retries (one layer,
here and nowhere else), multipart splitting, checksums, credentials, and settings that apply to every write (server-side
encryption, Object Lock retention). A stream that breaks while
it is read is resumed by the implementation from where it broke, so callers read a `Body` to
its end or get one `StoreError`.

Keys are full keys inside the store's bucket (the job root included). Ranges are half-open:
`get(key, 0, 10)` is the first ten bytes.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StoreError(Exception):
    """A storage operation failed. `str()` is one line naming the operation and key, without
    request ids or credentials; `code` is the store's error code when it gave one."""

    def __init__(self, message: str, *, code: str = "", key: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.key = key


class NotFound(StoreError):
    """No such key (or no such bucket: `code` says which)."""


class Archived(StoreError):
    """The object is in an archive class (GLACIER, DEEP_ARCHIVE, archived INTELLIGENT_TIERING)
    and no restored copy is readable yet."""


class Denied(StoreError):
    """The credentials may not do this (AccessDenied, bad signature, expired token)."""


class Locked(StoreError):
    """Object Lock retention or a legal hold forbids deleting or overwriting this object yet."""


class Unreachable(StoreError):
    """No usable answer after every retry (connection refused, reset, timeouts, 5xx)."""


class Incomplete(StoreError):
    """The store answered 2xx without what the operation needs (an ETag, an UploadId), or a body
    ended before its length; retried first, raised when retries are spent."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime  # timezone-aware UTC, the store's clock
    etag: str = ""
    storage_class: str = "STANDARD"
    # HEAD only: the x-amz-restore state of an archived object, e.g. 'ongoing-request="true"' or
    # 'ongoing-request="false", expiry-date="..."'; None when no restore was asked for.
    restore: str | None = None
    # HEAD only: Intelligent-Tiering's archive tier ("ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS") when
    # the object sits in one: it then needs a restore like GLACIER, but one without `days`.
    archive_status: str | None = None
    # HEAD only: Object Lock retention of this version, when the store reports one.
    lock_mode: str | None = None
    lock_until: datetime | None = None


class Body(Protocol):
    """An object's bytes as they arrive. `read(n)` returns at most n bytes, b"" at the end."""

    def read(self, n: int = -1) -> bytes: ...
    def close(self) -> None: ...


class Readable(Protocol):
    """A request body that can be read again from the start (a file range, pieces in memory)."""

    def __len__(self) -> int: ...
    def read(self, n: int = -1) -> bytes: ...
    def seek(self, offset: int, whence: int = 0) -> int: ...


class MultipartUpload(Protocol):
    """A streamed upload of unknown length (command jobs' dumps): parts of at least 5 MiB except
    the last, numbered from 1. Nothing is visible under the key before `complete()`."""

    key: str

    def upload_part(self, number: int, data: bytes, sha256: str) -> None: ...
    def complete(self) -> None: ...
    def abort(self) -> None: ...


class Store(Protocol):
    """What jobs ask of a storage destination."""

    # For messages: where the keys live, e.g. "s3://bucket".
    label: str

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix` in key order (current versions only); lazily, page by page."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """HEAD: raises NotFound."""
        ...

    def get(self, key: str, start: int = 0, end: int | None = None) -> Body:
        """The bytes [start, end) of an object (to its end when `end` is None). Raises NotFound,
        Archived; a broken stream is resumed inside, never seen by the caller."""
        ...

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        """One object from bytes or a re-readable body; the store verifies `sha256` (hex) of what
        it received. Splits into parts when the body is large."""
        ...

    def put_file(self, key: str, fd: int, size: int, *, sha256: str, name: str,
                 storage_class: str | None = None) -> None:
        """One object from `size` bytes of an open file, read with pread; raises
        bodies.FileShrank when the file ends early. `name` is for messages."""
        ...

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> MultipartUpload: ...

    def delete(self, keys: Iterable[str]) -> builtins.list[StoreError]:
        """Delete keys (batched); returns the failures, one per key not deleted (a Locked one for
        a locked object); a key that does not exist is not a failure."""
        ...

    def request_restore(self, key: str, *, days: int | None, tier: str) -> bool:
        """Ask for a readable copy of an archived object (`days` None for INTELLIGENT_TIERING's
        archive tiers). False when a restore of it is already under way."""
        ...

    def versioning(self) -> str | None:
        """The bucket's versioning status ("Enabled", "Suspended") or None when never set."""
        ...
