"""Restoring what is not plain bytes under a name: FIFOs and device nodes, hard links, holes of
sparse files, extended attributes and POSIX ACLs.

Every function works relative to a directory descriptor (`dir_fd`, `name`) or on an open file,
never through a path from the snapshot, so it fits a restore that creates each entry under a
private name and renames it into place. `place` is the adapter for callers that still hold a
path: it makes the entry under a temp name beside it and renames it over whatever is there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable

from backup_agent.storage.manifest import Entry

NODE_TYPES = {"fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}
IS_ROOT = os.geteuid() == 0


def create_node(dir_fd: int, name: str, e: Entry) -> None:
    """A FIFO or device node at `name`, private until its metadata is set (mknod fails if the
    name exists: nothing is followed or reused)."""
    kind = NODE_TYPES[e.type]
    os.mknod(name, kind | 0o600, os.makedev(e.major, e.minor) if kind != stat.S_IFIFO else 0, dir_fd=dir_fd)
    if IS_ROOT:
        with contextlib.suppress(OSError):
            os.chown(name, e.uid, e.gid, dir_fd=dir_fd, follow_symlinks=False)
    set_xattrs(_proc_path(dir_fd, name), e, link=False)
    os.chmod(name, e.mode, dir_fd=dir_fd)
    os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def link_to(dir_fd: int, name: str, src_dir_fd: int, src_name: str) -> None:
    """Another name for a file this restore made (the first path of a hard-link group)."""
    os.link(src_name, name, src_dir_fd=src_dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)


def set_xattrs(where: str | int, e: Entry, *, link: bool) -> None:
    """All stored attributes, on a path or an open descriptor. Call after chown (which clears
    security.capability) and before chmod (an ACL sets the group bits; the stored mode agrees
    with the stored ACL). A failure is raised: a restore that loses ACLs must say so."""
    if not e.xattrs:
        return
    for name, value in e.xattrs.items():
        try:
            os.setxattr(where, name, value, follow_symlinks=not link)
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, f"{exc.strerror} (extended attribute {name})",
                              where if isinstance(where, str) else e.path) from None
            raise


def _proc_path(dir_fd: int, name: str) -> str:
    """setxattr has no *at form; this names `name` in `dir_fd` without walking any path."""
    return f"/proc/self/fd/{dir_fd}/{name}"


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
    write = layout_writer(dst, dst_e) if dst_e.extents is not None else _appender(dst)
    for off, length in src_e.extents if src_e.extents is not None else [(0, src_e.size)]:
        done = 0
        while done < length:
            chunk = os.pread(src, min(length - done, 1 << 20), off + done)
            if not chunk:
                raise OSError(errno.EIO, "restored content shorter than verified", dst_e.path)
            write(chunk)
            done += len(chunk)
    finish_size(dst, dst_e)


def _appender(fd: int) -> Callable[[bytes], None]:
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


# --- for callers that hold paths ----------------------------------------------------------------


def place(dest: str, make: Callable[[int, str], None]) -> None:
    """Run `make(dir_fd, temp_name)` beside `dest`, then rename the result over `dest` (an
    existing link there is replaced, never followed). The temp name is random and short, so
    nothing in the snapshot or the target chooses it and a 255-byte name still fits."""
    parent, name = os.path.split(dest)
    dir_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = f".ba-{secrets.token_hex(8)}"
        try:
            make(dir_fd, tmp)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


def place_node(dest: str, e: Entry) -> None:
    place(dest, lambda dir_fd, tmp: create_node(dir_fd, tmp, e))


def place_link(dest: str, first: str) -> None:
    """`dest` becomes another name of the restored file `first`."""
    src_parent, src_name = os.path.split(first)
    src_fd = os.open(src_parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        place(dest, lambda dir_fd, tmp: link_to(dir_fd, tmp, src_fd, src_name))
    finally:
        os.close(src_fd)
