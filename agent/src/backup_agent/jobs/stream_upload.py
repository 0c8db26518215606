"""A command job's output streamed into one stored object while the command still writes: memory
stays at a few parts whatever the dump's size, and nothing touches the local disk."""

from __future__ import annotations

import hashlib
import logging
import queue
from concurrent.futures import Future, ThreadPoolExecutor

from backup_agent.storage.store import MultipartUpload, Store, StoreError

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20
IN_FLIGHT = 2  # parts uploading while the next one fills: memory is about IN_FLIGHT + 1 parts


def part_size(part_number: int) -> int:
    """Size to reach before sending part `part_number` (1-based).

    S3 allows 10,000 parts; growing by 8 MiB every 1,000 parts keeps dumps up to 8 GB at
    8 MiB parts (the least memory) and still reaches 440 GB before the part numbers run out.
    """
    return PART_SIZE * (1 + (part_number - 1) // 1000)


class StreamUpload:
    """Bytes in, one S3 object out: a single PUT if it stays under one part, multipart otherwise.

    Parts are filled into a fixed set of IN_FLIGHT + 1 buffers that are reused, so memory stays
    at those buffers however long the stream (allocating a fresh 8 MiB per part fragments the
    heap and lets RSS creep up). Parts upload in the background; `write` blocks while every
    buffer is busy, which in turn blocks the command on its pipe: back-pressure, not buffering.
    """

    def __init__(self, store: Store, key: str, storage_class: str | None) -> None:
        self.store, self.key, self.storage_class = store, key, storage_class
        self.sha = hashlib.sha256()
        self.size = 0
        self.upload: MultipartUpload | None = None
        self.parts: list[Future[None]] = []
        self.failed: BaseException | None = None
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(IN_FLIGHT):
            self.free.put(bytearray(PART_SIZE))
        self.cur = bytearray(PART_SIZE)
        self.fill = 0
        self.pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="part")

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.sha.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            n = min(len(self.cur) - self.fill, len(view))
            self.cur[self.fill : self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == len(self.cur):
                self._send(self.cur)
                self.cur, self.fill = self._next_buffer(), 0

    def _next_buffer(self) -> bytearray:
        buf = self.free.get()  # waits for an upload to finish when all buffers are in flight
        if self.failed is not None:
            raise self.failed
        want = part_size(len(self.parts) + 1)
        return buf if len(buf) == want else bytearray(want)

    def _send(self, body: bytearray) -> None:
        if self.failed is not None:
            raise self.failed
        if self.upload is None:
            self.upload = self.store.start_multipart(self.key, storage_class=self.storage_class)
        number = len(self.parts) + 1
        self.parts.append(self.pool.submit(self._part, number, body))

    def _part(self, number: int, body: bytearray) -> None:
        assert self.upload is not None
        try:
            # SHA-256 per part, verified by the store: payloads are not signed, so this is what
            # guards the bytes in transit. A bytearray is sent as it is: no copy of the part.
            self.upload.upload_part(number, body, hashlib.sha256(body).hexdigest())  # type: ignore[arg-type]
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            self.free.put(body)

    def finish(self) -> int:
        """Complete the object; returns the number of parts (0 = single PUT)."""
        tail = self.cur[: self.fill]
        self.cur, self.fill = bytearray(), 0
        if self.upload is None:
            self.pool.shutdown()
            self.store.put(self.key, bytes(tail), sha256=hashlib.sha256(tail).hexdigest(),
                           storage_class=self.storage_class)
            return 0
        if tail:
            self._send(tail)  # the last part may be smaller than the minimum
        for f in self.parts:
            f.result()
        self.pool.shutdown()
        self.upload.complete()
        return len(self.parts)

    def abort(self) -> None:
        """Drop everything sent so far; safe to call in any state."""
        for f in self.parts:
            f.cancel()
        self.pool.shutdown(wait=True)
        if self.upload is None:
            return
        try:
            self.upload.abort()
        except StoreError as exc:
            log.warning("cannot abort the upload of %s (the bucket's lifecycle rule will): %s", self.key, exc)
