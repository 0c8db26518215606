"""The Store on boto3: S3 and S3-compatible endpoints (SeaweedFS, MinIO).

botocore retries each request (adaptive mode, storage/s3.py); this module adds what it does not
retry and is the one place that does: a response body that breaks while it streams (resumed with
a ranged GET from the byte where it broke) and a 2xx answer cut before the headers that name what
was made (an ETag, an UploadId). Every botocore exception leaves here as a StoreError.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from backup_agent.config import Storage
from backup_agent.immutability import lock_params
from backup_agent.storage.bodies import FileRange
from backup_agent.storage.s3 import checksum_args, describe, make_client, put_args
from backup_agent.storage.store import (
    Archived,
    Body,
    Denied,
    Incomplete,
    Locked,
    NotFound,
    ObjectInfo,
    Readable,
    StoreError,
    Unreachable,
)

MAX_PARTS = 10_000  # S3's limit
# A body that breaks while it streams is resumed this many times in all (botocore's retries end
# once the response headers have arrived).
STREAM_ATTEMPTS = 5
# A 2xx without the ETag/UploadId the operation needs is sent again this many times in all.
ANSWER_ATTEMPTS = 3

NOT_FOUND = ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "NoSuchUpload")
DENIED = ("AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken", "InvalidToken",
          "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem")
# S3 refused a body that does not match the SHA-256 sent with it: raised as StoreError with code
# "BadDigest" whatever the endpoint called it, so callers test one code.
MISMATCH = ("BadDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch", "InvalidDigest")
BAD_DIGEST = "BadDigest"

T = TypeVar("T")


def _is_lock_refusal(code: str, message: str) -> bool:
    text = message.lower()
    return code in ("ObjectLocked", "InvalidRetentionPeriod") or (
        code == "AccessDenied" and ("object lock" in text or "retention" in text or "legal hold" in text
                                    or "worm" in text))


def translate(exc: BaseException, key: str = "") -> StoreError:
    """The StoreError for a botocore exception (or an OSError from a body)."""
    text = describe(exc)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if _is_lock_refusal(code, str(err.get("Message", ""))):
            return Locked(text, code=code, key=key)
        if code in NOT_FOUND:
            return NotFound(text, code=code, key=key)
        if code == "InvalidObjectState":
            return Archived(text, code=code, key=key)
        if code in DENIED:
            return Denied(text, code=code, key=key)
        if code in MISMATCH:
            return StoreError(text, code=BAD_DIGEST, key=key)
        if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
            return Unreachable(text, code=code, key=key)
        return StoreError(text, code=code, key=key)
    if isinstance(exc, BotoConnectionError | HTTPClientError | ReadTimeoutError | OSError):
        return Unreachable(text, key=key)
    return StoreError(text, key=key)


def _retry_incomplete(what: str, key: str, call: Callable[[], T], ok: Callable[[T], bool],
                      rewind: Callable[[], None] = lambda: None) -> T:
    """An answer cut right after its status line reaches botocore as a 2xx without headers:
    without the ETag (UploadId) nothing can name what was made, so the request is sent again."""
    for _ in range(ANSWER_ATTEMPTS):
        resp = call()
        if ok(resp):
            return resp
        rewind()
    raise Incomplete(f"{what}: answered without an ETag or UploadId", key=key)


def _rewinder(data: object) -> Callable[[], None]:
    seek = getattr(data, "seek", None)
    return (lambda: seek(0)) if seek is not None else (lambda: None)


class _ResumingBody:
    """A GET's body that, when the stream breaks (reset, truncated, read timeout), asks again for
    the rest with a ranged GET from the byte where it broke."""

    def __init__(self, store: BotoStore, key: str, start: int, end: int | None) -> None:
        self.store, self.key, self.pos, self.end = store, key, start, end
        self.failures = 0
        self.stream: Any = self._open()

    def _open(self) -> Any:
        rng = None
        if self.pos or self.end is not None:
            rng = f"bytes={self.pos}-" + ("" if self.end is None else str(self.end - 1))
        args: dict[str, Any] = {"Bucket": self.store.bucket, "Key": self.key}
        if rng:
            args["Range"] = rng
        try:
            resp = self.store.client.get_object(**args)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, self.key) from None
        if resp.get("ContentLength") is not None:
            # S3 clips a range that runs past the object's end: what it sends is all there is, and
            # only a stream that ends before its own length is broken.
            self.end = self.pos + int(resp["ContentLength"])
        return resp["Body"]

    def read(self, n: int = -1) -> bytes:
        if self.end is not None and self.pos >= self.end:
            return b""
        while True:
            try:
                data: bytes = self.stream.read(None if n is None or n < 0 else n)
                if not data and self.end is not None and self.pos < self.end:
                    raise OSError(f"the body of {self.key} ended at byte {self.pos}, before {self.end}")
                self.pos += len(data)
                self.failures = 0
                return data
            except (BotoCoreError, OSError) as exc:
                self.failures += 1
                if self.failures >= STREAM_ATTEMPTS:
                    err = translate(exc, self.key)
                    # Not a refusal or an outage: the body kept ending early.
                    raise (err if type(err) is not StoreError else Incomplete(str(err), key=self.key)) from None
                with contextlib.suppress(Exception):
                    self.stream.close()
                time.sleep(min(0.2 * 2**self.failures, 5.0))
                self.stream = self._open()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()


class _Multipart:
    """A multipart upload whose parts may be sent from several threads at once."""

    def __init__(self, store: BotoStore, key: str, extra: dict[str, Any]) -> None:
        self.store, self.key = store, key
        self.client = store.client
        resp = store._call(key, lambda: _retry_incomplete(
            "CreateMultipartUpload", key,
            lambda: self.client.create_multipart_upload(Bucket=store.bucket, Key=key, ChecksumAlgorithm="SHA256",
                                                        **extra),
            lambda r: "UploadId" in r))
        self.upload_id = resp["UploadId"]
        self.parts: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def upload_part(self, number: int, data: bytes | Readable, sha256: str) -> None:
        args = {"Bucket": self.store.bucket, "Key": self.key, "UploadId": self.upload_id, "PartNumber": number,
                "Body": data, **checksum_args(sha256)}
        resp = self.store._call(self.key, lambda: _retry_incomplete(
            f"UploadPart {number}", self.key, lambda: self.client.upload_part(**args),
            lambda r: "ETag" in r, _rewinder(data)))
        with self.lock:
            self.parts[number] = {"PartNumber": number, "ETag": resp["ETag"],
                                  "ChecksumSHA256": resp.get("ChecksumSHA256") or args["ChecksumSHA256"]}

    def complete(self) -> None:
        parts = [self.parts[n] for n in sorted(self.parts)]
        self.store._call(self.key, lambda: self.client.complete_multipart_upload(
            Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}))

    def abort(self) -> None:
        self.store._call(self.key, lambda: self.client.abort_multipart_upload(
            Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id))


class BotoStore:
    """A Store on one bucket through boto3. `client` (a boto3 S3 client) is made on first use
    unless given."""

    def __init__(self, storage: Storage, *, concurrency: int | None = None,
                 object_lock: tuple[str, int] | None = None, client: Any = None) -> None:
        self.storage = storage
        self.bucket = storage.bucket
        self.label = f"s3://{storage.bucket}"
        self.concurrency = concurrency or storage.concurrency
        self.object_lock = object_lock
        self._client = client
        self._making = threading.Lock()

    @property
    def client(self) -> Any:
        with self._making:
            if self._client is None:
                self._client = make_client(self.storage, concurrency=self.concurrency)
            return self._client

    def _call(self, key: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, key) from None

    def _write_args(self, storage_class: str | None) -> dict[str, Any]:
        # The lock's date is taken per request: from the write, not from the job's start.
        return {**put_args(self.storage, storage_class), **lock_params(self.object_lock)}

    # --- reading -------------------------------------------------------------------------------

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        args = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            args["StartAfter"] = start_after
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(key=obj["Key"], size=int(obj.get("Size", 0)),
                                     last_modified=_utc(obj.get("LastModified")), etag=obj.get("ETag", ""),
                                     storage_class=obj.get("StorageClass") or "STANDARD")
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, prefix) from None

    def stat(self, key: str) -> ObjectInfo:
        head = self._call(key, lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        return ObjectInfo(key=key, size=int(head.get("ContentLength") or 0),
                          last_modified=_utc(head.get("LastModified")), etag=head.get("ETag", ""),
                          storage_class=head.get("StorageClass") or "STANDARD", restore=head.get("Restore"),
                          archive_status=head.get("ArchiveStatus"), lock_mode=head.get("ObjectLockMode"),
                          lock_until=head.get("ObjectLockRetainUntilDate"))

    def get(self, key: str, start: int = 0, end: int | None = None) -> Body:
        return _ResumingBody(self, key, start, end)

    def versioning(self) -> str | None:
        resp = self._call("", lambda: self.client.get_bucket_versioning(Bucket=self.bucket))
        status = resp.get("Status")
        return str(status) if status else None

    # --- writing -------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        args = {"Bucket": self.bucket, "Key": key, "Body": data, **self._write_args(storage_class),
                **checksum_args(sha256)}
        self._call(key, lambda: _retry_incomplete("PutObject", key, lambda: self.client.put_object(**args),
                                                  lambda r: "ETag" in r, _rewinder(data)))

    def put_file(self, key: str, fd: int, size: int, *, sha256: str, name: str,
                 storage_class: str | None = None) -> None:
        """One PUT carrying our SHA-256 below two parts, a multipart upload with per-part SHA-256
        (checked by S3) above; a failed multipart upload is aborted.

        Few large parts beat many small ones: each part is a request, a second SHA-256 pass over
        its bytes, and (on SeaweedFS and others) a piece to stitch together at completion (see
        docs/PERFORMANCE.md; `multipart_chunk_mb`, default 128: one PUT below 256 MiB). Every
        part reads through the one descriptor with pread; a read that ends early raises
        FileShrank at once instead of S3 waiting ~20 s for bytes that never come."""
        part_size = self.storage.multipart_chunk_size
        if size < 2 * part_size:
            self.put(key, FileRange(fd, 0, size, name), sha256=sha256, storage_class=storage_class)
            return
        part_size = max(part_size, -(-size // MAX_PARTS))
        count = -(-size // part_size)
        upload = self.start_multipart(key, storage_class=storage_class)

        def part(number: int) -> None:
            start = (number - 1) * part_size
            body = FileRange(fd, start, min(part_size, size - start), name)
            upload.upload_part(number, body, _range_sha256(fd, start, len(body), name))

        try:
            workers = max(1, min(self.concurrency, count))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="part") as pool:
                futures = [pool.submit(part, n) for n in range(1, count + 1)]
                try:
                    for f in futures:
                        f.result()
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            upload.complete()
        except BaseException:
            # If this fails too, the bucket's abort-incomplete-multipart rule removes the parts later.
            with contextlib.suppress(StoreError):
                upload.abort()
            raise

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> _Multipart:
        return _Multipart(self, key, self._write_args(storage_class))

    def delete(self, keys: Iterable[str]) -> builtins.list[StoreError]:
        """With Object Lock every version of each key is deleted by its id: a plain DELETE in a
        versioned bucket only adds a delete marker, which no lock refuses, and the locked version
        would live on unseen. By version S3 refuses what is still locked (a Locked failure), and
        the key stays listed for the next prune."""
        failures: builtins.list[StoreError] = []
        keys = builtins.list(keys)
        entries = self._versions_of(keys) if self.object_lock else [{"Key": k} for k in keys]
        for i in range(0, len(entries), 1000):
            batch = entries[i : i + 1000]
            resp = self._call(batch[0]["Key"], lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}))
            for err in resp.get("Errors") or []:
                code, msg, key = str(err.get("Code", "")), str(err.get("Message", "")), str(err.get("Key", ""))
                if code in NOT_FOUND:
                    continue
                text = f"DeleteObjects: {code}: {msg}".rstrip(": ")
                cls = Locked if _is_lock_refusal(code, msg) else Denied if code in DENIED else StoreError
                failures.append(cls(text, code=code, key=key))
        return failures

    def _versions_of(self, keys: builtins.list[str]) -> builtins.list[dict[str, str]]:
        """Every version and delete marker of `keys`: one listing under their common prefix."""
        if not keys:
            return []
        wanted = set(keys)
        common = os.path.commonprefix(keys)  # noqa: RUF071 -- characters, cut at the last "/" below
        prefix = common[: common.rfind("/") + 1]
        out: builtins.list[dict[str, str]] = []
        pages = self._call(prefix, lambda: builtins.list(
            self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix)))
        for page in pages:
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if v["Key"] in wanted:
                    out.append({"Key": v["Key"], "VersionId": v["VersionId"]})
        return out

    def request_restore(self, key: str, *, days: int | None, tier: str) -> bool:
        body: dict[str, Any] = {"GlacierJobParameters": {"Tier": tier}}
        if days is not None:
            body["Days"] = days
        try:
            self.client.restore_object(Bucket=self.bucket, Key=key, RestoreRequest=body)
        except ClientError as exc:
            if translate(exc).code == "RestoreAlreadyInProgress":
                return False
            raise translate(exc, key) from None
        except BotoCoreError as exc:
            raise translate(exc, key) from None
        return True


def _utc(t: object) -> datetime:
    if isinstance(t, datetime):
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    return datetime.fromtimestamp(0, UTC)


def _range_sha256(fd: int, start: int, length: int, name: str) -> str:
    h = hashlib.sha256()
    body = FileRange(fd, start, length, name)
    while chunk := body.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()

