"""Request bodies that are not one bytes object: a range of an open file, a pack's pieces.

Both are re-readable (`read`/`seek`, what botocore and a retry need) and can `send_to` a
plain-text socket without copying their bytes through Python: sendfile(2) for a file range,
sendmsg(2) over the pieces for a pack. On a full backup that is most of the agent's CPU:
reading a file into Python and sending it copies every byte twice, and joining 16 MiB packs
faulted in fresh memory for every pack.
"""

from __future__ import annotations

import os
import select
import socket


class FileShrank(Exception):
    """The file ended before the size it had when its upload started."""


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

    def send_to(self, sock: socket.socket) -> None:
        """The whole range with sendfile(2): the kernel hands the page cache to the socket.
        Plain-text sockets only (the caller checks)."""
        sent = 0
        poll = None
        while sent < self.length:
            try:
                n = os.sendfile(sock.fileno(), self.fd, self.start + sent, min(self.length - sent, 1 << 30))
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                if poll is None:
                    poll = select.poll()
                    poll.register(sock.fileno(), select.POLLOUT)
                timeout = sock.gettimeout()
                if not poll.poll(None if timeout is None else timeout * 1000):
                    raise TimeoutError("timed out sending the request body") from None
                continue
            if n == 0:
                raise FileShrank(f"{self.path}: ended at {self.start + sent} bytes while being uploaded")
            sent += n
        self.pos = self.length


class Pieces(_Body):
    """A pack: small files' bytes back to back, sent as they were read, never joined.

    `read` (botocore, or a TLS connection) joins them once, on first use."""

    IOV_MAX = 1024  # buffers per sendmsg(2) on Linux

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.length = sum(map(len, parts))
        self.pos = 0
        self._joined: memoryview | None = None

    def read(self, n: int = -1) -> bytes:
        if self._joined is None:
            self._joined = memoryview(b"".join(self.parts))
        end = self.length if n is None or n < 0 else min(self.length, self.pos + n)
        data = bytes(self._joined[self.pos : end])
        self.pos = end
        return data

    def send_to(self, sock: socket.socket) -> None:
        """All pieces with sendmsg(2), up to IOV_MAX at a time. Plain-text sockets only."""
        queue = [memoryview(p) for p in self.parts if p]
        i = 0
        while i < len(queue):
            sent = sock.sendmsg(queue[i : i + self.IOV_MAX])
            while sent and sent >= len(queue[i]):  # whole buffers sent
                sent -= len(queue[i])
                i += 1
            if sent:  # part of one: the rest of it goes first next time
                queue[i] = queue[i][sent:]
        self.pos = self.length
