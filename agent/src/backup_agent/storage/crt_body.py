"""Bodies between Python and awscrt's event loop, both directions, with bounded memory.

Downloads: awscrt pushes a response's bytes into a callback on its own event-loop thread, and a
callback that blocked would stall every other connection on that loop. So `WindowedBody` never
blocks there: it asks for the object in ranged windows (WINDOW bytes each, at most AHEAD windows
requested ahead of the reader), buffers what arrives, and hands it to the caller's `read`. Memory
per body stays under (AHEAD + 1) * WINDOW whatever the object's size. A window that breaks off
(connection reset, truncated answer) is asked again from the byte where it broke, with If-Match
on the first answer's ETag so a resumed read never splices two versions of an object.

Uploads: `UploadStream` gives awscrt a `readinto` over a bytes object or a re-readable body
(bodies.FileRange reads with pread and raises FileShrank). Exceptions raised while awscrt reads
are kept and re-raised to the caller after the request fails, so a shrinking file is reported as
FileShrank and not as an opaque native error. With `verify_sha256`, the stream hashes what it
hands out and refuses the last chunk when the whole does not match: a multipart upload of a file
that changed since it was hashed is then aborted instead of completed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from backup_agent.storage.bodies import FileRange, FileShrank, Pieces
from backup_agent.storage.store import Readable, StoreError

# awscrt hands a window over only once all of it arrived: a reader waits for a whole window at
# the start of a body and whenever it catches up. 2 MiB windows, three requested ahead (8 MiB in
# flight, as one 8 MiB window with one ahead was), cut a restore's peak RSS by a third (eight
# bodies at once on small files: 205 → 133 MB) at the same speed.
WINDOW = 2 << 20
AHEAD = 3
MAX_RESUMES = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ContentChanged(StoreError):
    """The bytes read for an upload do not hash to the SHA-256 given for them."""


class UploadStream:
    def __init__(self, data: bytes | Readable, *, verify_sha256: str | None = None, label: str = "",
                 release: bool = False) -> None:
        self.src: Readable | io.BytesIO = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        self.release = release  # let a pack (bodies.Pieces) go once all of it is in awscrt's buffer
        self.length = len(data)
        self.pos = 0
        self.want = verify_sha256
        self.label = label
        self.hasher = hashlib.sha256() if verify_sha256 else None
        self.error: BaseException | None = None

    def readinto(self, m: memoryview) -> int:
        try:
            n = self._fill(m[: min(len(m), self.length - self.pos)])
            if self.hasher is not None:
                self.hasher.update(m[:n])
                if self.pos + n >= self.length and self.hasher.hexdigest() != self.want:
                    raise ContentChanged(f"put {self.label}: the data changed while it was uploaded "
                                         "(SHA-256 differs from the one computed before)", code="BadDigest",
                                         key=self.label)
        except BaseException as exc:
            self.error = exc
            raise
        self.pos += n
        if self.release and self.pos >= self.length and isinstance(self.src, Pieces):
            # All of it is in awscrt's buffer now, which its retries resend (aws-c-s3 reads a
            # request's body only when preparing it the first time).
            self.src.release()
        return n

    def _fill(self, m: memoryview) -> int:
        """Bytes straight into awscrt's buffer: a file range with preadv (no Python copies: with
        one 200 MiB part, pread-then-copy took 3.5 s of a 7.7 s upload, faulting in fresh memory
        twice), a BytesIO or a pack (bodies.Pieces) with readinto, anything else through read()."""
        if not len(m):
            return 0
        src = self.src
        if isinstance(src, FileRange):
            got = 0
            while got < len(m):
                n = os.preadv(src.fd, [m[got:]], src.start + self.pos + got)
                if n == 0:
                    raise FileShrank(f"{src.path}: ended at {src.start + self.pos + got} bytes while being uploaded")
                got += n
            return got
        if isinstance(src, io.BytesIO | Pieces):
            return src.readinto(m)
        data = src.read(len(m))
        m[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        """What awscrt checks for to accept a stream; it reads through `readinto`."""
        buf = bytearray(self.length - self.pos if n < 0 else n)
        return bytes(buf[: self.readinto(memoryview(buf))])

    def seek(self, offset: int, whence: int = 0) -> int:
        if isinstance(self.src, FileRange):
            self.src.pos = self.pos  # _fill reads at self.pos and leaves the range's own untouched
        self.pos = self.src.seek(offset, whence)
        if self.hasher is not None:
            # Hashing restarts with a rewind (a retried single request); any other jump makes a
            # whole-body hash meaningless, and the server's per-request checksums still hold.
            self.hasher = hashlib.sha256() if self.pos == 0 else None
        return self.pos


def b64_sha256(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class _Window:
    __slots__ = ("chunks", "done", "end", "error", "headers", "received", "request", "start", "status", "taken")

    def __init__(self, start: int, end: int | None) -> None:
        self.start, self.end = start, end  # end exclusive; None: to the object's end (first window)
        self.chunks: deque[bytes] = deque()
        # Bytes of chunks[0] already handed out: the runtime delivers a whole window in one
        # callback, and slicing off the rest at every small read copied megabytes per read.
        self.taken = 0
        self.received = 0
        self.done = False
        self.error: BaseException | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.request: Any = None


# fetch(start, end_inclusive, if_match, on_headers, on_body, on_done) -> request handle
Fetch = Callable[..., Any]


class WindowedBody:
    def __init__(self, fetch: Fetch, start: int, end: int | None, *,
                 on_error: Callable[[BaseException], StoreError], transient: Callable[[BaseException], bool],
                 window: int = WINDOW) -> None:
        self._fetch, self._on_error, self._transient = fetch, on_error, transient
        self._window = window
        self._cond = threading.Condition()
        self._next = start  # where the next window starts
        self._end = end  # exclusive; learnt from Content-Range when None
        self._etag: str | None = None
        self._windows: deque[_Window] = deque()
        self._resumes = 0
        self._closed = False
        if end is not None and end <= start:
            return  # nothing asked for
        first = self._open(start)
        with self._cond:
            while not 200 <= first.status < 300 and not first.done:
                self._cond.wait()
        if first.done and first.error is not None:
            # 416 at 0 is an empty object, at the object's end no bytes: both an empty body. Past
            # the end it is an error, as with any GET that starts there.
            m = re.fullmatch(r"bytes \*/(\d+)", first.headers.get("content-range", ""))
            if first.status != 416 or (start and not (m and int(m.group(1)) == start)):
                raise self._on_error(first.error)
            self._windows.clear()
            self._end = self._next = start

    # --- requests (window bookkeeping runs under the condition's lock or before sharing) ---------

    def _open(self, start: int) -> _Window:
        stop = start + self._window if self._end is None else min(start + self._window, self._end)
        w = _Window(start, stop if self._end is not None else None)
        self._windows.append(w)
        self._next = stop
        self._request(w, start, stop)
        return w

    def _request(self, w: _Window, start: int, stop: int) -> None:
        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            hdrs = {k.lower(): v for k, v in headers}
            with self._cond:
                w.status, w.headers = status_code, hdrs
                if 200 <= status_code < 300:
                    self._learn(w, status_code, hdrs)
                self._cond.notify_all()

        def on_body(chunk: Any, offset: int, **_: Any) -> None:
            data = bytes(chunk)
            with self._cond:
                w.chunks.append(data)
                w.received += len(data)
                self._cond.notify_all()

        def on_done(error: BaseException | None, status_code: int | None = None, **_: Any) -> None:
            with self._cond:
                if status_code and not w.status:
                    w.status = status_code
                w.error, w.done = error, True
                self._cond.notify_all()

        w.request = self._fetch(start, stop - 1, self._etag, on_headers, on_body, on_done)

    def _learn(self, w: _Window, status: int, hdrs: dict[str, str]) -> None:
        if self._etag is None:
            self._etag = hdrs.get("etag")
        m = _CONTENT_RANGE.match(hdrs.get("content-range", ""))
        # 206 names the total; a 200 (a server ignoring Range) is the whole object from 0.
        ranged = m is not None and m.group(3) != "*"
        if self._end is None:
            total = int(m.group(3)) if m and ranged else w.start + int(hdrs.get("content-length", "0"))
            self._end = total
            w.end = min(w.start + self._window, total)
            self._next = w.end
        elif m and ranged and int(m.group(3)) < self._end:
            # S3 clips a range that runs past the object's end: the body ends where the object
            # does (the caller sees the short read), not in a resume asking past it (416).
            self._clip(int(m.group(3)))

    def _clip(self, total: int) -> None:
        self._end = total
        self._next = min(self._next, total)
        for other in list(self._windows):
            if other.start >= total:
                # Dropped unanswered (its answer, a 416, goes nowhere): cancelling from the
                # runtime's own callback thread is not safe.
                self._windows.remove(other)
            elif other.end is not None and other.end > total:
                other.end = total

    def _top_up(self) -> None:
        while (not self._closed and self._end is not None and self._next < self._end
               and len(self._windows) <= AHEAD):
            self._open(self._next)

    # --- the caller's side -----------------------------------------------------------------------

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        out: list[bytes] = []
        have = 0
        with self._cond:
            while n < 0 or have < n:
                if not self._windows:
                    if self._end is not None and self._next >= self._end:
                        break
                    self._top_up()
                    continue
                w = self._windows[0]
                if w.chunks:
                    data, at = w.chunks[0], w.taken
                    stop = len(data) if n < 0 else min(len(data), at + n - have)
                    if stop == len(data):
                        w.chunks.popleft()
                        w.taken = 0
                    else:
                        w.taken = stop
                    if at or stop != len(data):
                        data = data[at:stop]
                    out.append(data)
                    have += len(data)
                    self._top_up()
                    if n < 0:
                        continue
                    break  # return what is here rather than wait for more
                if not w.done:
                    self._top_up()
                    self._cond.wait()
                    continue
                if w.status == 416 and w.received == 0:
                    # A window starting at or past the object's end (it is shorter than the range
                    # asked for): the body ends there.
                    self._clip(w.start)
                    continue
                expected = (w.end - w.start) if w.end is not None else None
                if w.error is None and (expected is None or w.received >= expected):
                    self._windows.popleft()
                    self._top_up()
                    continue
                self._resume(w)
        return b"".join(out)

    def _resume(self, w: _Window) -> None:
        """The window ended early or broke: ask again for the rest of it, a few times."""
        error = w.error or StoreError(f"answer ended after {w.received} of {(w.end or 0) - w.start} bytes")
        if self._resumes >= MAX_RESUMES or (w.error is not None and not self._transient(w.error)):
            self._closed = True
            raise self._on_error(error)
        self._resumes += 1
        start = w.start + w.received
        stop = w.end if w.end is not None else (self._end or start)
        w.start, w.received, w.done, w.error, w.status = start, 0, False, None, 0
        self._request(w, start, stop)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = [w.request for w in self._windows if not w.done and w.request is not None]
            self._windows.clear()
        for req in pending:
            req.cancel()

    def __enter__(self) -> WindowedBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
