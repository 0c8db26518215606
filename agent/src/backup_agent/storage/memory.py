"""A Store in memory, for fast unit tests of job logic: no server, no network, the same answers
and error types a real store gives.

What a test can set up beyond plain objects: storage classes (archived ones refuse `get` with
`Archived` until `request_restore` and then `finish_restore`), a versioning status, locked keys
(deletes refused with `Locked`), and a clock for `last_modified`. `calls` records each operation
so a test can count requests.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_agent.storage.bodies import FileRange
from backup_agent.storage.store import (
    Archived,
    Body,
    NotFound,
    ObjectInfo,
    Readable,
    StoreError,
)
from backup_agent.storage.store import (
    Locked as LockedError,
)

ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
MIN_PART = 5 << 20


@dataclass
class _Object:
    data: bytes
    last_modified: datetime
    storage_class: str
    # None: never asked; "ongoing": asked, not readable yet; "done": a readable copy exists.
    restore: str | None = None


class _Upload:
    def __init__(self, store: MemoryStore, key: str, storage_class: str | None) -> None:
        self.store, self.key, self.storage_class = store, key, storage_class
        self.parts: dict[int, bytes] = {}
        self.done = False

    def upload_part(self, number: int, data: bytes | Readable, sha256: str) -> None:
        body = _bytes(data)
        self.store._check(self.key, body, sha256)
        self.parts[number] = body

    def complete(self) -> None:
        numbers = sorted(self.parts)
        if numbers != list(range(1, len(numbers) + 1)):
            raise StoreError(f"CompleteMultipartUpload: InvalidPart: parts {numbers}", code="InvalidPart", key=self.key)
        if any(len(self.parts[n]) < MIN_PART for n in numbers[:-1]):
            raise StoreError("CompleteMultipartUpload: EntityTooSmall", code="EntityTooSmall", key=self.key)
        self.store._write(self.key, b"".join(self.parts[n] for n in numbers), self.storage_class)
        self.store.uploads.discard(self)
        self.done = True

    def abort(self) -> None:
        self.parts.clear()
        self.store.uploads.discard(self)


class MemoryStore:
    label = "memory://"

    def __init__(self, clock: Callable[[], datetime] | None = None, *, versioning: str | None = "Enabled") -> None:
        self.objects: dict[str, _Object] = {}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.versioning_status = versioning
        self.locked: set[str] = set()
        self.uploads: set[_Upload] = set()
        self.calls: builtins.list[tuple[str, str]] = []
        self._lock = threading.Lock()

    # --- what tests set up and look at ---------------------------------------------------------

    def add(self, key: str, data: bytes, *, storage_class: str = "STANDARD", when: datetime | None = None) -> None:
        """An object as if a previous run (or a lifecycle rule) had stored it."""
        self.objects[key] = _Object(data, when or self.clock(), storage_class)

    def data(self, key: str) -> bytes:
        return self.objects[key].data

    def finish_restore(self, key: str) -> None:
        """The archive has made its readable copy (what takes hours on S3)."""
        self.objects[key].restore = "done"

    # --- the Store protocol --------------------------------------------------------------------

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        self.calls.append(("list", prefix))
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix) and k > start_after)
        for key in keys:
            obj = self.objects.get(key)
            if obj is not None:
                yield ObjectInfo(key, len(obj.data), obj.last_modified, _etag(obj.data), obj.storage_class)

    def stat(self, key: str) -> ObjectInfo:
        self.calls.append(("stat", key))
        obj = self._get(key, "HeadObject")
        restore = {None: None, "ongoing": 'ongoing-request="true"',
                   "done": 'ongoing-request="false", expiry-date="Fri, 01 Jan 2100 00:00:00 GMT"'}[obj.restore]
        return ObjectInfo(key, len(obj.data), obj.last_modified, _etag(obj.data), obj.storage_class, restore=restore)

    def get(self, key: str, start: int = 0, end: int | None = None) -> Body:
        self.calls.append(("get", key))
        obj = self._get(key, "GetObject")
        if obj.storage_class in ARCHIVE_CLASSES and obj.restore != "done":
            raise Archived(f"GetObject: InvalidObjectState: {key} is in {obj.storage_class}",
                           code="InvalidObjectState", key=key)
        return io.BytesIO(obj.data[start:end])

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        self.calls.append(("put", key))
        body = _bytes(data)
        self._check(key, body, sha256)
        self._write(key, body, storage_class)

    def put_file(self, key: str, fd: int, size: int, *, sha256: str, name: str,
                 storage_class: str | None = None) -> None:
        self.put(key, FileRange(fd, 0, size, name), sha256=sha256, storage_class=storage_class)

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> _Upload:
        self.calls.append(("start_multipart", key))
        upload = _Upload(self, key, storage_class)
        self.uploads.add(upload)
        return upload

    def delete(self, keys: Iterable[str]) -> builtins.list[StoreError]:
        failures: builtins.list[StoreError] = []
        for key in keys:
            self.calls.append(("delete", key))
            if key in self.locked:
                failures.append(LockedError(f"DeleteObject: AccessDenied: {key} is under Object Lock retention",
                                            code="AccessDenied", key=key))
                continue
            with self._lock:
                self.objects.pop(key, None)
        return failures

    def request_restore(self, key: str, *, days: int | None, tier: str) -> bool:
        self.calls.append(("request_restore", key))
        obj = self._get(key, "RestoreObject")
        if obj.storage_class not in ARCHIVE_CLASSES:
            raise StoreError(f"RestoreObject: InvalidObjectState: {key} is not archived", code="InvalidObjectState",
                             key=key)
        if obj.restore == "ongoing":
            return False
        if obj.restore is None:
            obj.restore = "ongoing"
        return True

    def versioning(self) -> str | None:
        self.calls.append(("versioning", ""))
        return self.versioning_status

    # --- inside --------------------------------------------------------------------------------

    def _get(self, key: str, op: str) -> _Object:
        obj = self.objects.get(key)
        if obj is None:
            raise NotFound(f"{op}: NoSuchKey: {key}", code="NoSuchKey", key=key)
        return obj

    def _check(self, key: str, body: bytes, sha256: str) -> None:
        if hashlib.sha256(body).hexdigest() != sha256:
            raise StoreError(f"PutObject: BadDigest: the body of {key} does not match its SHA-256",
                             code="BadDigest", key=key)

    def _write(self, key: str, body: bytes, storage_class: str | None) -> None:
        if key in self.locked:
            raise LockedError(f"PutObject: AccessDenied: {key} is under Object Lock retention", code="AccessDenied",
                              key=key)
        with self._lock:
            self.objects[key] = _Object(body, self.clock(), storage_class or "STANDARD")


def _bytes(data: bytes | Readable) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    data.seek(0)
    out = bytearray()
    while len(out) < len(data):  # a FileRange raises FileShrank when its file ends early
        chunk = data.read(len(data) - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
