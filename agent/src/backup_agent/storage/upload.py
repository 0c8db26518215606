"""Uploading one local file to one object, and noticing when the file shrinks under us.

s3transfer's `upload_file` reopens the file by name and sends each part with the Content-Length
the file had at the start; when the file shrinks meanwhile (copytruncate log rotation), the body
ends early, S3 waits for the missing bytes, answers RequestTimeout after ~20 s and the retries
take minutes before the whole run fails. Here every part reads through one descriptor with
`pread`, and a read that ends before the part does raises `FileShrank` at once: the caller treats
it like any file that changed while read.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent.storage.bodies import FileRange
from backup_agent.storage.s3 import IncompleteAnswer, checksum_args

MAX_PARTS = 10_000  # S3's limit


def upload_part(s3: Any, **kwargs: Any) -> dict[str, Any]:
    """UploadPart with a SHA-256 checked by S3; returns the part's entry for the completion.

    An answer cut right after its status line reaches botocore as a 200 without headers: without
    the ETag the part cannot be named at completion, so it is sent again (the same number
    replaces it)."""
    for _ in range(3):
        resp = s3.upload_part(**kwargs, ChecksumAlgorithm="SHA256")
        if "ETag" in resp and "ChecksumSHA256" in resp:
            return {"PartNumber": kwargs["PartNumber"], "ETag": resp["ETag"], "ChecksumSHA256": resp["ChecksumSHA256"]}
        if hasattr(kwargs["Body"], "seek"):  # a file range; bytes are sent again as they are
            kwargs["Body"].seek(0)
    raise IncompleteAnswer(operation="UploadPart", detail=f"part {kwargs['PartNumber']}: answered without an ETag")


def upload_file(s3: Any, bucket: str, key: str, path: str, *, size: int, sha256: str, extra: dict[str, str],
                part_size: int, concurrency: int) -> None:
    """One PUT carrying our SHA-256 below two parts, a multipart upload with per-part SHA-256
    (computed by the client, checked by S3) above; a failed multipart upload is aborted.

    Few large parts beat many small ones: each part is a request, a second SHA-256 pass over its
    bytes, and (on SeaweedFS and others) a piece to stitch together at completion
    (`multipart_chunk_mb`, default 128: one PUT below 256 MiB; measurements: docs/PERFORMANCE.md,
    "Multipart part size")."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        upload_open_file(s3, bucket, key, fd, path, size=size, sha256=sha256, extra=extra, part_size=part_size,
                         concurrency=concurrency)
    finally:
        os.close(fd)


def upload_open_file(s3: Any, bucket: str, key: str, fd: int, name: str, *, size: int, sha256: str,
                     extra: dict[str, str], part_size: int, concurrency: int) -> None:
    """`upload_file` for a descriptor we hold (a spooled manifest); `name` is for messages."""
    if size < 2 * part_size:
        s3.put_object(Bucket=bucket, Key=key, Body=FileRange(fd, 0, size, name), **extra, **checksum_args(sha256))
        return
    _multipart(s3, bucket, key, fd, name, size, extra, max(part_size, -(-size // MAX_PARTS)), concurrency)


def _multipart(s3: Any, bucket: str, key: str, fd: int, path: str, size: int, extra: dict[str, str],
               part_size: int, concurrency: int) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", **extra)["UploadId"]

    def part(number: int) -> dict[str, Any]:
        start = (number - 1) * part_size
        return upload_part(s3, Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                           Body=FileRange(fd, start, min(part_size, size - start), path))

    count = -(-size // part_size)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, count)), thread_name_prefix="part") as pool:
            futures = [pool.submit(part, n) for n in range(1, count + 1)]
            try:
                parts = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        # If this fails too, the bucket's abort-incomplete-multipart rule removes the parts later.
        with contextlib.suppress(ClientError, BotoCoreError):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
