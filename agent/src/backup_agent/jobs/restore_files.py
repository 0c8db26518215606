"""Writing a snapshot's entries under a target directory, never outside it.

Order matters for safety: each directory before anything in it (made private, 0700), file
contents (each written to a temp name and renamed only once its sha256 matched), then symlinks
last so no link from the snapshot can redirect a later write, then directory metadata deepest
first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup_agent.jobs import restore_special as special
from backup_agent.storage.manifest import Entry, ManifestError, safe_relative
from backup_agent.storage.reader import Piece, hashing, read_all

if TYPE_CHECKING:
    from backup_agent.jobs.base import S3Job

IS_ROOT = os.geteuid() == 0


class Target:
    def __init__(self, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(target)
        # Parents already resolved and found inside the target, while no symlink from the
        # snapshot exists yet: thousands of files share a few directories.
        self.checked: set[str] | None = set()
        self.made: set[str] = set()  # directories this restore made or found

    def dest(self, path: str) -> str:
        rel = safe_relative(path, "restore")
        dest = os.path.join(self.root, rel) if rel else self.root
        parent = os.path.dirname(dest)
        if self.checked is not None and parent in self.checked:
            return dest
        real = os.path.realpath(parent)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise ManifestError(f"{path}: would be written outside the target through a symlink")
        if self.checked is not None:
            self.checked.add(parent)
        return dest

    def make_parent(self, dest: str) -> None:
        parent = os.path.dirname(dest)
        if parent not in self.made:
            os.makedirs(parent, exist_ok=True)
            self.made.add(parent)

    def symlinks_from_now(self) -> None:
        """Links from the snapshot are about to be made: every path is resolved again."""
        self.checked = None


def _apply_meta(where: str | int, e: Entry, link: bool = False) -> None:
    """Owner (as root), mode and mtime, on a path or an open descriptor; `link`: the link itself."""
    if IS_ROOT:
        with contextlib.suppress(OSError):
            # A path never has its owner changed through a symlink (lchown); a descriptor is the file.
            os.chown(where, e.uid, e.gid, follow_symlinks=isinstance(where, int))
    special.set_xattrs(where, e, link=link)  # after chown, before chmod: see set_xattrs
    if not link:
        os.chmod(where, e.mode)
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(where, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=not link)


def restore_entries(job: S3Job, entries: Iterable[Entry], target_dir: Path, content_bytes: int) -> dict[str, Any]:
    """Restore a stream of entries in one pass (the manifest's scan order puts each directory
    before what it holds); only directories and symlinks are held until the end."""
    target = Target(target_dir)
    errors: list[str] = []
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "specials": 0, "hardlinks": 0, "bytes": 0}
    lock = threading.Lock()
    progress = _Progress(content_bytes)
    dirs: list[Entry] = []
    links: list[Entry] = []
    # Hard links: the first path of a group restored here gets the content, the rest link to it.
    firsts: dict[str, str] = {}
    hard: list[tuple[Entry, str]] = []

    def dest_or_error(e: Entry) -> str | None:
        try:
            return target.dest(e.path)
        except ManifestError as exc:
            errors.append(str(exc))
            return None

    def content() -> Iterator[Entry]:
        """Makes directories and empty files on the way; yields what has bytes to fetch."""
        for e in entries:
            if e.type == "symlink":
                links.append(e)
                continue
            if e.hardlink is not None:
                if e.hardlink in firsts:
                    hard.append((e, firsts[e.hardlink]))
                    continue
                firsts[e.hardlink] = e.path
            if e.type == "file" and e.size > 0:
                yield e
                continue
            d = dest_or_error(e)
            if d is None:
                continue
            if e.type in special.NODE_TYPES:
                target.make_parent(d)
                special.place_node(d, e)
                with lock:
                    counts["specials"] += 1
            elif e.type == "dir":
                # Private until the end: its own mode comes last, with the other metadata.
                os.makedirs(d, mode=0o700, exist_ok=True)
                target.made.add(d)
                dirs.append(e)
                counts["dirs"] += 1
            else:
                target.make_parent(d)
                with open(d, "wb") as f:
                    special.finish_size(f.fileno(), e)  # all hole: only a length
                _apply_meta(d, e)
                with lock:
                    counts["files"] += 1

    def sink(piece: Piece, chunks: Iterator[bytes]) -> str | None:
        dests = []
        for e in piece.entries:
            d = dest_or_error(e)
            if d is not None:
                dests.append((e, d))
        # The content goes to the first destination; the others (hard links, identical files) are
        # copied from it once it is verified, one at a time: a descriptor per destination ran out
        # of descriptors on trees with thousands of identical files.
        fd = tmp = None
        problem: str | None = None
        verified = False
        try:
            if dests:
                target.make_parent(dests[0][1])
                tmp = f"{dests[0][1]}.restore-tmp"
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)

            sparse = special.layout_writer(fd, dests[0][0]) if fd is not None and dests[0][0].extents else None

            def write(chunk: bytes) -> None:
                if sparse is not None:
                    sparse(chunk)
                elif fd is not None:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                progress.add(len(chunk))

            problem = hashing(chunks, piece, write)
            if not problem and fd is not None:
                special.finish_size(fd, dests[0][0])
                for e, d in dests[1:]:
                    _copy_restored(fd, dests[0][0], e, d, target)
                # Metadata through the open descriptor, before the rename: no path walks, and the
                # mtime that marks a verified file comes last.
                _apply_meta(fd, dests[0][0])
            verified = not problem
        finally:
            if fd is not None:
                os.close(fd)
            if tmp is not None and not verified:  # a mismatch, or an error on the way
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        if problem:
            return problem
        if tmp is not None:
            os.replace(tmp, dests[0][1])
        with lock:
            counts["files"] += len(dests)
            counts["bytes"] += piece.size * len(dests)
        return None

    errors += read_all(job.store, job.bucket, job.root, content(), job.cfg.storage, sink)
    progress.close()

    for e, first in hard:
        d, src = dest_or_error(e), dest_or_error(Entry(path=first, type="file"))
        if d is not None and src is not None:
            target.make_parent(d)
            special.place_link(d, src)
            counts["hardlinks"] += 1

    target.symlinks_from_now()
    for e in links:
        d = dest_or_error(e)
        if d is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            if os.path.islink(d) or os.path.isfile(d):
                os.unlink(d)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        assert e.target is not None
        os.symlink(e.target, d)
        _apply_meta(d, e, link=True)
        counts["symlinks"] += 1

    for e in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
        d = dest_or_error(e)
        if d is not None:
            _apply_meta(d, e)
    return {**counts, "errors": errors}


def _copy_restored(src: int, src_e: Entry, e: Entry, dest: str, target: Target) -> None:
    """Another destination of verified content: a copy of it under a temp name, renamed once whole."""
    target.make_parent(dest)
    tmp = f"{dest}.restore-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        special.copy_content(src, src_e, fd, e)
        _apply_meta(fd, e)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, dest)


class _Progress:
    """A progress bar on a terminal, nothing otherwise (logs and --json stay clean)."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        self.lock = threading.Lock()
        if sys.stderr.isatty() and total > 0:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="restore", file=sys.stderr)

    def add(self, n: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
