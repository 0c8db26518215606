"""Restoring what is not plain bytes under a name: FIFOs and device nodes, hard links, holes of
sparse files, extended attributes and POSIX ACLs.

Every function works relative to a directory descriptor (`dir_fd`, `name`) or on an open file,
never through a path from the snapshot: restore_files creates each entry under a private temp
name with these and renames it into place.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from backup_agent.storage.manifest import Entry

NODE_TYPES = {"fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}


def make_node(target: object, dir_fd: int, name: str, e: Entry) -> None:
    """A FIFO or device node at the temp name `name` (mknod fails if it exists: nothing is
    followed or reused), private (0600) until restore_files.place sets its metadata."""
    kind = NODE_TYPES[e.type]
    os.mknod(name, kind | 0o600, os.makedev(e.major, e.minor) if kind != stat.S_IFIFO else 0, dir_fd=dir_fd)


def set_xattrs(where: str | int, e: Entry) -> None:
    """All stored attributes, on an open descriptor or on a path whose last component is not
    followed (a symlink gets its own attributes). Call after chown (which clears
    security.capability) and before chmod (an ACL sets the group bits; the stored mode agrees
    with the stored ACL). A failure is raised: a restore that loses ACLs must say so."""
    if not e.xattrs:
        return
    for name, value in e.xattrs.items():
        try:
            os.setxattr(where, name, value, follow_symlinks=isinstance(where, int))
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, f"{exc.strerror} (extended attribute {name})",
                              where if isinstance(where, str) else e.path) from None
            raise


# --- sparse files -------------------------------------------------------------------------------


def layout_writer(fd: int, e: Entry) -> Callable[[bytes], None]:
    """Writes the stored bytes of `e` (in order) where its extents say; holes stay holes."""
    extents = list(e.extents or [])
    state = {"i": 0, "done": 0}  # extent index, bytes written into it

    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            i = state["i"]
            if i >= len(extents):
                raise OSError(errno.EIO, "more stored bytes than the extents hold", e.path)
            off, length = extents[i]
            n = min(len(view), length - state["done"])
            written = os.pwrite(fd, view[:n], off + state["done"])
            view = view[written:]
            state["done"] += written
            if state["done"] == length:
                state["i"], state["done"] = i + 1, 0

    return write


def finish_size(fd: int, e: Entry) -> None:
    """A sparse file ending in a hole gets its length (the hole is not written)."""
    if e.extents is not None:
        os.ftruncate(fd, e.length)


def copy_content(src: int, src_e: Entry, dst: int, dst_e: Entry) -> None:
    """Verified content restored at `src` (as `src_e`) again into `dst` laid out as `dst_e`:
    identical stored bytes may belong to files with different holes."""
    if src_e.extents is None and dst_e.extents is None:
        _copy_range(src, dst, src_e.size)
        return
    write = layout_writer(dst, dst_e) if dst_e.extents is not None else appender(dst)
    for off, length in src_e.extents if src_e.extents is not None else [(0, src_e.size)]:
        done = 0
        while done < length:
            chunk = os.pread(src, min(length - done, 1 << 20), off + done)
            if not chunk:
                raise OSError(errno.EIO, "restored content shorter than verified", dst_e.path)
            write(chunk)
            done += len(chunk)
    finish_size(dst, dst_e)


def appender(fd: int) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]

    return write


def _copy_range(src: int, dst: int, size: int) -> None:
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src, dst, size - done, done, done)
        except OSError as exc:  # not between these file systems: through user space
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = os.pwrite(dst, os.pread(src, min(size - done, 1 << 20), done), done)
        if n <= 0:
            raise OSError(errno.EIO, "restored content shorter than verified")
        done += n
