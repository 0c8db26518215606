"""Linux inotify through ctypes, enough to notice that something under a tree changed.

A maintained package (inotify_simple, or watchdog) would be preferred; neither is available to
this project's offline wheelhouse, and the kernel API is three calls. We only need "did anything
change under these paths", never which file: the snapshot that follows finds what changed, so
every hard case falls back to a rescan of the directories rather than to cleverness:
- a directory renamed inside the tree keeps its watch (watches follow inodes) but its path
  changes: all watches are rebuilt from the paths, so later new subdirectories get watched;
- the kernel's queue overflowed (IN_Q_OVERFLOW: events were lost): rebuild and count it a change.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Iterable

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

CHANGES = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def parse(buf: bytes) -> list[tuple[int, int, bytes]]:
    """(wd, mask, name) of each event in what read(2) returned."""
    out, pos = [], 0
    while pos + _EVENT.size <= len(buf):
        wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
        pos += _EVENT.size
        out.append((wd, mask, buf[pos:pos + length].rstrip(b"\0")))
        pos += length
    return out


class TreeWatch:
    """Watches every directory under `paths` (not following symlinks, skipping `skip(path)`)."""

    def __init__(self, paths: Iterable[str], skip: object = None) -> None:
        self.paths = list(paths)
        self.skip = skip if callable(skip) else (lambda path: False)
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd
        self.wds: dict[int, str] = {}
        self.rescans = 0
        self.full = False  # the per-user watch limit was hit: some directories are not watched
        self.rescan()

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _add(self, path: str) -> None:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), CHANGES | IN_ONLYDIR | IN_DONT_FOLLOW)
        if wd >= 0:
            self.wds[wd] = path
            return
        err = ctypes.get_errno()
        if err == errno.ENOSPC:  # fs.inotify.max_user_watches
            self.full = True
        # ENOENT/ENOTDIR: gone or replaced since it was listed; the event that did it is a change.

    def _add_tree(self, top: str) -> None:
        if self.skip(top):
            return
        self._add(top)
        for root, dirs, _files in os.walk(top, onerror=lambda e: None):
            keep = []
            for d in dirs:
                path = os.path.join(root, d)
                if not self.skip(path) and not os.path.islink(path):
                    self._add(path)
                    keep.append(d)
            dirs[:] = keep

    def rescan(self) -> None:
        """Drop every watch and watch the tree as it is now."""
        for wd in list(self.wds):
            _libc.inotify_rm_watch(self.fd, wd)
        self.wds.clear()
        self.full = False
        for top in self.paths:
            if os.path.isdir(top):
                self._add_tree(top)
            elif os.path.lexists(top):  # a single file: watch the directory holding it
                self._add(os.path.dirname(top) or "/")
        self.rescans += 1

    def read(self) -> bool:
        """Consume what is queued; True if anything under the paths changed."""
        changed = False
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            changed = self.handle(parse(buf)) or changed
        return changed

    def handle(self, events: list[tuple[int, int, bytes]]) -> bool:
        """Act on events (new directories get watches, renames and overflow a rescan); True if
        any of them is a change under the paths."""
        changed, rebuild = False, False
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                changed = rebuild = True
                continue
            if mask & IN_IGNORED:
                self.wds.pop(wd, None)
                continue
            base = self.wds.get(wd)
            if base is None:
                continue
            path = os.path.join(base, os.fsdecode(name)) if name else base
            if self._single_file_parent(base) and not self._watched_file(path):
                continue  # another file in the directory of a watched single file
            changed = True
            if mask & IN_ISDIR and mask & (IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE):
                rebuild = True
            elif mask & IN_ISDIR and mask & IN_CREATE and not self.skip(path):
                self._add_tree(path)
            elif mask & (IN_MOVE_SELF | IN_DELETE_SELF):
                rebuild = True
        if rebuild:
            self.rescan()
        return changed

    def _single_file_parent(self, base: str) -> bool:
        return any(not os.path.isdir(p) and os.path.dirname(p) == base for p in self.paths) \
            and not any(base == p or base.startswith(p.rstrip("/") + "/") for p in self.paths if os.path.isdir(p))

    def _watched_file(self, path: str) -> bool:
        return path in self.paths
