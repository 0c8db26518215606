"""Request bodies that are not one bytes object: a range of an open file, a pack's pieces.

Both are re-readable (`read`/`seek`, what the S3 stores and a retry need): a file range reads
through the one descriptor with pread, and a pack keeps the files' bytes as read until a store
reads it, instead of growing one buffer (docs/PERFORMANCE.md, "Packs are a list"). A pack is let
go (`Pieces.release`) once awscrt has copied all of it: awscrt retries from its own copy.
"""

from __future__ import annotations

import bisect
import itertools
import os

from backup_agent.storage.store import StoreError


class FileShrank(Exception):
    """The file ended before the size it had when its upload started."""


class BodyReleased(StoreError):
    """A pack's bytes were let go once the store held its own copy, and were asked for again."""


class _Body:
    """`length` bytes read from `pos`: what botocore needs to size a body and rewind it."""

    length: int
    pos: int

    def __len__(self) -> int:
        return self.length

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class FileRange(_Body):
    """`length` bytes of an open file from `start`, as the seekable body botocore wants.

    http.client asks for 16 KiB at a time; reads go to the file 1 MiB at a time."""

    BLOCK = 1 << 20

    def __init__(self, fd: int, start: int, length: int, path: str) -> None:
        self.fd, self.start, self.length, self.path = fd, start, length, path
        self.pos = 0
        self.buf = b""
        self.buf_at = 0  # position of buf[0]

    def read(self, n: int = -1) -> bytes:
        want = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        if want <= 0:
            return b""
        skip = self.pos - self.buf_at
        if not 0 <= skip < len(self.buf):
            self.buf = os.pread(self.fd, max(want, min(self.BLOCK, self.length - self.pos)), self.start + self.pos)
            self.buf_at, skip = self.pos, 0
            if not self.buf:
                raise FileShrank(f"{self.path}: ended at {self.start + self.pos} bytes while being uploaded")
        data = self.buf[skip : skip + want]
        self.pos += len(data)
        return data


class Pieces(_Body):
    """A pack: small files' bytes back to back, kept as they were read.

    Reads copy from the parts themselves, never from one joined copy: a 16 MiB pack read as one
    join, then a copy per read, then awscrt's own buffer was four copies of every pack in flight
    (about 60 MB of a real tree's 265 MB peak); `readinto` fills the store's buffer directly."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.released = False
        self.starts = list(itertools.accumulate(map(len, parts), initial=0))  # offset of each part
        self.length = self.starts[-1]
        self.pos = 0

    def release(self) -> None:
        """Let the parts go: the store has read all of them into a buffer of its own and resends
        from that (awscrt reads a request's body once, then retries from its copy), so a pack
        waiting for its PUT to end is held once, not twice (docs/PERFORMANCE.md). Reading or
        rewinding afterwards raises BodyReleased: never a short or empty body."""
        self.parts, self.released = [], True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_held()
        return super().seek(offset, whence)

    def _check_held(self) -> None:
        if self.released:
            raise BodyReleased("a pack's bytes were released once the store had copied them and cannot be "
                               "sent again (the upload is retried by the next run)")

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), self.length - self.pos)
        if want > 0:
            self._check_held()
        i = bisect.bisect_right(self.starts, self.pos) - 1
        got = 0
        while got < want:
            part = self.parts[i]
            skip = self.pos + got - self.starts[i]
            n = min(len(part) - skip, want - got)
            view[got : got + n] = memoryview(part)[skip : skip + n]
            got += n
            i += 1
        self.pos += got
        return got

    def read(self, n: int = -1) -> bytes:
        want = self.length - self.pos if n is None or n < 0 else min(n, self.length - self.pos)
        if want <= 0:
            return b""
        self._check_held()
        i = bisect.bisect_right(self.starts, self.pos) - 1
        skip = self.pos - self.starts[i]
        part = self.parts[i]
        if len(part) - skip >= want:  # within one part (http.client's 16 KiB reads, mostly)
            self.pos += want
            return part if skip == 0 and want == len(part) else part[skip : skip + want]
        buf = bytearray(want)
        self.readinto(buf)
        return bytes(buf)
