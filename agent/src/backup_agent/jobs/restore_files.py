"""Writing a snapshot's entries under a target directory, never outside it, never through
anything that was there before.

Every entry is created new under a private temp name (`.ba-` and random characters, created
with O_EXCL: neither the snapshot nor whoever can write in the target chooses or reuses it, and
it stays short, so 255-byte names restore), gets its metadata through its own descriptor (or
without following links), and is renamed over its name: a link that was at that name is replaced,
never written through. Paths are reached one component at a time from the target's descriptor
with O_NOFOLLOW; a symlink or file where a directory belongs is replaced by a new directory.

Order: each directory before anything in it (those of the snapshot private, 0700, until the end),
file contents (renamed only once their sha256 matched), symlinks, then directory metadata deepest
first, also when the restore fails, so no directory is left at 0700. Hard links are made last,
as new names of the first path of their group that this restore made.

`Target.parent` and `place` are the primitives for any kind of entry; `KINDS` maps the manifest's
other types (symlinks, FIFOs, devices) to their makers. What is not plain bytes under a name
(holes, xattrs and ACLs, device numbers) is in restore_special.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from backup_agent.jobs import restore_special as special
from backup_agent.storage.manifest import Entry, ManifestError, safe_relative
from backup_agent.storage.reader import Piece, hashing, read_all

if TYPE_CHECKING:
    from backup_agent.jobs.base import S3Job
    from backup_agent.storage.encoding import Encoding

IS_ROOT = os.geteuid() == 0
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Directory descriptors kept open between entries (thousands of files share a few directories);
# few enough for a node's default limit of 1024 descriptors beside the S3 connections.
OPEN_DIRS = 64
T = TypeVar("T")

# Temp names: a random part per process and a counter, so a name costs no system call and no
# one can choose it; O_EXCL makes a name someone planted merely skipped.
_TEMP_PREFIX = f".ba-{secrets.token_hex(5)}"
_temp_counter = count()


def temp_name() -> str:
    return f"{_TEMP_PREFIX}{next(_temp_counter):x}"


def make_new(make: Callable[[str], T]) -> tuple[str, T]:
    """Call make(temp name) until it does not meet an existing name (make must refuse those with
    FileExistsError, as O_EXCL, mkdir, mkfifo, mknod, symlink and link do)."""
    for _ in range(100):
        tmp = temp_name()
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", tmp)


def open_new(dfd: int) -> tuple[str, int]:
    """A new empty file (0600) under a temp name in directory `dfd`: (name, descriptor)."""
    return make_new(lambda tmp: os.open(tmp, _NEW_FILE, 0o600, dir_fd=dfd))


def commit(dfd: int, tmp: str, name: str) -> None:
    """Rename the finished temp entry over `name` (replacing a file or link there); on failure the
    temp entry is removed."""
    try:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        discard(dfd, tmp)
        raise


def discard(dfd: int, tmp: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp, dir_fd=dfd)


def apply_meta(fd: int, e: Entry) -> None:
    """Owner (as root), xattrs, mode and mtime through the entry's own descriptor. The owner first:
    a chown clears set-id bits and security.capability; xattrs before the mode: an ACL sets the
    group bits, and the stored mode agrees with the stored ACL."""
    if IS_ROOT:
        with contextlib.suppress(OSError):
            os.fchown(fd, e.uid, e.gid)
    special.set_xattrs(fd, e)
    os.fchmod(fd, e.mode)
    with contextlib.suppress(OSError):
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def apply_meta_at(dfd: int, name: str, e: Entry) -> None:
    """The same for an entry that cannot be opened (symlink, FIFO, device), never following a link:
    a symlink keeps its mode (Linux has none to set)."""
    if IS_ROOT:
        with contextlib.suppress(OSError):
            os.chown(name, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
    if e.xattrs:
        # setxattr has no *at form: this names `name` in `dfd` without walking a path, and the
        # entry itself (a link among them) is not followed.
        special.set_xattrs(f"/proc/self/fd/{dfd}/{name}", e)
    if e.type != "symlink":
        os.chmod(name, e.mode, dir_fd=dfd, follow_symlinks=False)
    with contextlib.suppress(OSError, NotImplementedError):
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)


def place(dfd: int, name: str, e: Entry, make: Callable[[str], object]) -> None:
    """Create an entry of any kind new in directory `dfd` and put it at `name`: make(tmp) creates
    it (e.g. `lambda t: os.mkfifo(t, 0o600, dir_fd=dfd)`) and may add xattrs; then its metadata,
    without following links, and the rename over whatever was at `name`."""
    tmp, _ = make_new(make)
    try:
        apply_meta_at(dfd, tmp, e)
    except BaseException:
        discard(dfd, tmp)
        raise
    commit(dfd, tmp, name)


def _make_symlink(target: Target, dfd: int, tmp: str, e: Entry) -> None:
    assert e.target is not None
    os.symlink(e.target, tmp, dir_fd=dfd)


# Entries other than files and directories, by manifest type: make(target, dfd, tmp, e=entry)
# creates one under the temp name `tmp` in directory `dfd`, failing with FileExistsError if that
# name exists (symlink, mkfifo, mknod and link do), and may add xattrs to it; `place` then sets its
# metadata without following links and renames it over the entry's name. They are made after all
# file contents, so a hard link finds the file it links to (`target.parent(path)` gives that
# file's directory). Other modules add their kinds here.
Maker = Callable[..., object]
KINDS: dict[str, Maker] = {"symlink": _make_symlink, **dict.fromkeys(special.NODE_TYPES, special.make_node)}
# How the restore counts each kind (`run --json`/`restore --json` keys).
_COUNTED_AS = {"symlink": "symlinks", **dict.fromkeys(special.NODE_TYPES, "specials")}


def _open_dir(parent: int, name: str, make: bool, mode: int) -> tuple[int, bool]:
    """Open directory `name` in `parent` without following a link: (descriptor, made now). With
    `make`, a missing one is created and a link or file in its place is replaced by a new one."""
    try:
        return os.open(name, _DIR, dir_fd=parent), False
    except FileNotFoundError:
        if not make:
            raise
    except OSError as exc:  # ENOTDIR: a file or a symlink (O_NOFOLLOW|O_DIRECTORY); ELOOP: a symlink
        if not make or exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        os.unlink(name, dir_fd=parent)  # only the name: a hard-linked file elsewhere keeps its bytes
    os.mkdir(name, mode, dir_fd=parent)
    # Opened again without following: if something replaced it meanwhile, this fails, never follows.
    return os.open(name, _DIR, dir_fd=parent), True


class Target:
    """The restore target, reached only through directory descriptors opened component by
    component without following links. Descriptors are cached (least recently used closed first)
    and shared between the restore's threads."""

    def __init__(self, target: Path, limit: int = OPEN_DIRS) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(target)
        self.limit = limit
        self._lock = threading.Lock()
        # relative path → [descriptor, users]; the root is never closed before close()
        self._open: OrderedDict[str, list[int]] = OrderedDict({"": [os.open(self.root, _DIR), 1]})

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()

    def _acquire(self, rel: str, make: bool, mode: int) -> tuple[int, bool]:
        """Descriptor of directory `rel` ('' is the target), held until _release; `mode` for the
        last component if it is made (the ones above it get 0777 less umask, as mkdir -p)."""
        with self._lock:
            hit = self._open.get(rel)
            if hit is not None:
                hit[1] += 1
                self._open.move_to_end(rel)
                return hit[0], False
            parts = rel.split("/")
            i = len(parts) - 1
            while i > 0 and "/".join(parts[:i]) not in self._open:
                i -= 1
            cur = "/".join(parts[:i])
            fd = self._open[cur][0]
            made = False
            for n, name in enumerate(parts[i:], i + 1):
                fd, made = _open_dir(fd, name, make, mode if n == len(parts) else 0o777)
                cur = f"{cur}/{name}" if cur else name
                self._open[cur] = [fd, 0]
            self._open[rel][1] += 1
            self._trim()
            return fd, made

    def _release(self, rel: str) -> None:
        with self._lock:
            self._open[rel][1] -= 1
            self._trim()

    def _trim(self) -> None:
        excess = len(self._open) - self.limit
        if excess <= 0:
            return
        for rel in [r for r, (_, users) in self._open.items() if users == 0][:excess]:
            os.close(self._open.pop(rel)[0])

    @contextlib.contextmanager
    def parent(self, path: str, make: bool = True) -> Iterator[tuple[int, str]]:
        """(descriptor of the directory holding manifest path `path`, its last component)."""
        rel = self.relative(path)
        if not rel:
            raise ManifestError(f"{path}: would be written outside the target (it is the target itself)")
        head, _, name = rel.rpartition("/")
        fd, _ = self._acquire(head, make, 0o777)
        try:
            yield fd, name
        finally:
            self._release(head)

    @contextlib.contextmanager
    def directory(self, path: str, make: bool = True, mode: int = 0o777) -> Iterator[tuple[int, bool]]:
        """(descriptor of directory `path` itself, whether it was made now)."""
        rel = self.relative(path)
        got = self._acquire(rel, make, mode)
        try:
            yield got
        finally:
            self._release(rel)

    @staticmethod
    def relative(path: str) -> str:
        return safe_relative(path, "restore")

    def named(self, path: str, exc: OSError) -> OSError:
        """The error again, naming the entry's place under the target (a directory-relative call
        names only the last component, or a temp name)."""
        return OSError(exc.errno, exc.strerror, os.path.join(self.root, self.relative(path)))


def lstat_inside(root: str, path: str) -> os.stat_result | None:
    """lstat of manifest path `path` under `root`, through real directories only (None if absent
    or if a link is on the way)."""
    parts = safe_relative(path, "restore").split("/")
    try:
        fd = os.open(root, _DIR)
    except OSError:
        return None
    try:
        for name in parts[:-1]:
            nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(fd)


def restore_entries(job: S3Job, entries: Iterable[Entry], target_dir: Path, content_bytes: int,
                    encoding: Encoding) -> dict[str, Any]:
    """Restore a stream of entries in one pass (the manifest's scan order puts each directory
    before what it holds); only directories, symlinks and the other KINDS are held until the end.
    `encoding` opens the snapshot's data (job.data_encoding)."""
    target = Target(target_dir)
    try:
        return _restore(job, entries, target, content_bytes, encoding)
    finally:
        target.close()


def _empty_file(target: Target, e: Entry, errors: list[str]) -> bool:
    """An entry without bytes to fetch (empty, or a sparse file that is all hole); False when the
    manifest's entry is refused (in `errors`)."""
    try:
        with target.parent(e.path) as (dfd, name):
            tmp, fd = open_new(dfd)
            try:
                special.finish_size(fd, e)  # a sparse file that is all hole: a length
                apply_meta(fd, e)
            except BaseException:
                discard(dfd, tmp)
                raise
            finally:
                os.close(fd)
            commit(dfd, tmp, name)
    except ManifestError as exc:
        errors.append(str(exc))
        return False
    except OSError as exc:
        raise target.named(e.path, exc) from None
    return True


def _place_late(target: Target, late: list[Entry], hard: list[tuple[Entry, str]], counts: dict[str, int],
                errors: list[str]) -> None:
    """Symlinks, the other KINDS and hard links, once all content is in place."""
    for e in late:
        try:
            with target.parent(e.path) as (dfd, name):
                place(dfd, name, e, partial(KINDS[e.type], target, dfd, e=e))
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        except OSError as exc:
            raise target.named(e.path, exc) from None
        counts[_COUNTED_AS[e.type]] += 1
    for e, first in hard:
        try:
            _link(target, e, first)
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        except OSError as exc:
            raise target.named(e.path, exc) from None
        counts["hardlinks"] += 1


def _restore(job: S3Job, entries: Iterable[Entry], target: Target, content_bytes: int,
             encoding: Encoding) -> dict[str, Any]:
    errors: list[str] = []
    counts = {"files": 0, "dirs": 0, "symlinks": 0, "specials": 0, "hardlinks": 0, "bytes": 0}
    lock = threading.Lock()
    progress = _Progress(content_bytes)
    dirs: list[Entry] = []
    late: list[Entry] = []  # symlinks and the other KINDS
    # Hard links: the first path of a group restored here gets the entry, the others link to it.
    firsts: dict[str, str] = {}
    hard: list[tuple[Entry, str]] = []

    def content() -> Iterator[Entry]:
        """Makes directories and empty files on the way; yields what has bytes to fetch."""
        for e in entries:
            if e.hardlink is not None and e.type != "dir":
                first = firsts.setdefault(e.hardlink, e.path)
                if first != e.path:
                    hard.append((e, first))
                    continue
            if e.type == "file" and e.size > 0:
                yield e
            elif e.type == "dir":
                try:
                    # Private until the end: its own mode comes last, with the other metadata.
                    with target.directory(e.path, mode=0o700):
                        dirs.append(e)
                except OSError as exc:
                    raise target.named(e.path, exc) from None
                counts["dirs"] += 1
            elif e.type != "file":
                if e.type in KINDS:
                    late.append(e)
                else:
                    errors.append(f"{e.path}: entries of type {e.type!r} cannot be restored")
            elif _empty_file(target, e, errors):
                with lock:
                    counts["files"] += 1

    def sink(piece: Piece, chunks: Iterator[bytes]) -> str | None:
        dests = []
        for e in piece.entries:
            try:
                target.relative(e.path)
                dests.append(e)
            except ManifestError as exc:
                errors.append(str(exc))
        try:
            if not dests:
                return hashing(chunks, piece, lambda c: progress.add(len(c)))
            with target.parent(dests[0].path) as (dfd, name):
                return _write_piece(target, piece, chunks, dests, dfd, name, progress, counts, lock)
        except ManifestError as exc:
            errors.append(str(exc))
            return None
        except OSError as exc:
            raise target.named(dests[0].path, exc) from None

    try:
        errors += read_all(job.store, job.root, content(), job.cfg.storage, sink, encoding)
        progress.close()
        _place_late(target, late, hard, counts, errors)
    except BaseException:
        # Also after a failure: the directories made so far get their modes (none stays at 0700).
        _dir_meta(target, dirs, quiet=True)
        raise
    _dir_meta(target, dirs)
    return {**counts, "errors": errors}


def _link(target: Target, e: Entry, first: str) -> None:
    """`e` becomes another name of `first`, which this restore made: linked under a temp name
    (never following a link) and renamed over whatever is at `e`'s name."""
    with target.parent(first, make=False) as (src_dfd, src_name), target.parent(e.path) as (dfd, name):
        tmp, _ = make_new(lambda t: os.link(src_name, t, src_dir_fd=src_dfd, dst_dir_fd=dfd, follow_symlinks=False))
        commit(dfd, tmp, name)


def _write_piece(target: Target, piece: Piece, chunks: Iterator[bytes], dests: list[Entry], dfd: int, name: str,
                 progress: _Progress, counts: dict[str, int], lock: threading.Lock) -> str | None:
    """The content goes to the first destination; the others (identical files) are copied from it
    once it is verified, one at a time: a descriptor per destination ran out of descriptors on
    trees with thousands of identical files."""
    tmp, fd = open_new(dfd)
    placed = False
    try:
        out = special.layout_writer(fd, dests[0]) if dests[0].extents is not None else special.appender(fd)

        def write(chunk: bytes) -> None:
            out(chunk)
            progress.add(len(chunk))

        problem = hashing(chunks, piece, write)
        if problem:
            return problem
        special.finish_size(fd, dests[0])
        for e in dests[1:]:
            with target.parent(e.path) as (other_dfd, other_name):
                _copy_restored(fd, dests[0], e, other_dfd, other_name)
        # Metadata through the open descriptor, before the rename: the mtime that marks a
        # verified file (see files._already_restored) comes last.
        apply_meta(fd, dests[0])
        placed = True
    finally:
        os.close(fd)
        if not placed:  # a mismatch, or an error on the way
            discard(dfd, tmp)
    commit(dfd, tmp, name)
    with lock:
        counts["files"] += len(dests)
        counts["bytes"] += piece.size * len(dests)
    return None


def _copy_restored(src: int, src_e: Entry, e: Entry, dfd: int, name: str) -> None:
    """Another destination of verified content: a copy under a temp name, renamed once whole
    (identical stored bytes may belong to files with different holes)."""
    tmp, fd = open_new(dfd)
    try:
        special.copy_content(src, src_e, fd, e)
        apply_meta(fd, e)
    except BaseException:
        os.close(fd)
        discard(dfd, tmp)
        raise
    os.close(fd)
    commit(dfd, tmp, name)


def _dir_meta(target: Target, dirs: list[Entry], quiet: bool = False) -> None:
    """Deepest first, through a descriptor of the real directory. Every one is tried; the first
    error is raised afterwards unless `quiet` (another error is on its way already)."""
    first: OSError | None = None
    for e in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
        try:
            with target.directory(e.path, make=False) as (fd, _):
                apply_meta(fd, e)
        except OSError as exc:
            first = first or target.named(e.path, exc)
    if first is not None and not quiet:
        raise first


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
