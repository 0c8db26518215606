"""What a backup reads besides a file's bytes: extended attributes (POSIX ACLs among them),
the data regions of sparse files, and a consistent copy of a file that changes while read.

Kept off the hot path for ordinary files: one llistxattr per entry (nothing more when it lists
nothing), and the search for holes only when a file occupies fewer blocks than its size says.
"""

from __future__ import annotations

import errno
import hashlib
import os
from typing import IO

# File systems or entries without xattrs (or no right to list them here): nothing to store.
_NO_XATTRS = (errno.ENOTSUP, errno.ENODATA, errno.ENOENT, errno.EOPNOTSUPP)


def read_xattrs(path: str, follow: bool) -> dict[str, bytes] | None:
    """Every attribute listed (user.*, trusted.* as root, security.*, system.posix_acl_*).

    An attribute that vanishes between listing and reading is left out; any other failure is
    raised, for the caller to report (never a silent omission)."""
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return None
        raise
    if not names:
        return None
    out: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since it was listed
                raise
    return out or None


def data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The file's data regions below `size` via SEEK_DATA/SEEK_HOLE; None when it has no holes
    (or the file system cannot tell)."""
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if out == [(0, size)]:
        return None
    return out


def read_ranges(fd: int, ranges: list[tuple[int, int]]) -> bytes:
    """The given regions back to back; a region cut short (the file shrank) ends the read."""
    parts: list[bytes] = []
    for off, length in ranges:
        done = 0
        while done < length:
            chunk = os.pread(fd, min(length - done, 1 << 20), off + done)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            done += len(chunk)
    return b"".join(parts)


def spool_ranges(fd: int, ranges: list[tuple[int, int]], spool: IO[bytes]) -> tuple[str, int]:
    """Copy the regions into `spool` while hashing them: what is uploaded from the spool is
    exactly what was hashed, whatever happens to the file meanwhile. Returns (sha256, bytes)."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    n = 0
    for off, length in ranges:
        done = 0
        while done < length:
            got = os.preadv(fd, [view[: min(length - done, len(buf))]], off + done)
            if not got:
                spool.flush()
                return h.hexdigest(), n
            h.update(view[:got])
            spool.write(view[:got])
            done += got
            n += got
    spool.flush()
    return h.hexdigest(), n
