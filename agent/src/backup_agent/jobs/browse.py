"""Finding what to restore in a files job's snapshots: ls, find, diff and dump.

Everything here reads manifests as streams (each spooled to an unlinked temp file, never held in
memory) and returns plain data; cli.py prints it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from backup_agent.errors import ConfigError, IntegrityError, JobFailed, NotReady
from backup_agent.jobs.base import JobRunner, S3Job, Snapshot, pick_snapshot, rfc3339
from backup_agent.storage.manifest import Entry, ManifestError, parse_entry, read, read_matching
from backup_agent.storage.reader import Piece, hashing, read_all

log = logging.getLogger(__name__)

# Manifests downloaded and searched at once by `find`: enough to keep the network busy while
# another thread scans, few enough that two cores are not fighting over the GIL.
FIND_WORKERS = 4
# `dump` holds a file this small in memory until it verifies; a larger one waits in a private
# temp file. Either way no byte reaches stdout before the whole content matched its sha256.
DUMP_IN_MEMORY = 16 << 20

# Fields that say what an entry *is*: a difference in one of them is a content change. Where the
# bytes are stored (object, offset) is no difference at all; everything else is metadata.
CONTENT_FIELDS = frozenset({"type", "size", "sha256", "target"})
STORAGE_FIELDS = frozenset({"object", "offset"})


def files_job(runner: JobRunner, verb: str) -> S3Job:
    from backup_agent.jobs.files import FilesJob

    if not isinstance(runner, FilesJob):
        raise ConfigError(f"{verb}: job {runner.job.name} is a {runner.job.type} job; "
                          "ls, find, diff and dump work on files jobs")
    return runner


def absolute(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(f"{what} {path}: must be an absolute path as backed up (e.g. /etc/hosts)")
    return path.rstrip("/") or "/"


def under(path: str, wanted: list[str]) -> bool:
    return not wanted or any(path == w or path.startswith(w.rstrip("/") + "/") for w in wanted)


def entry_json(e: Entry) -> dict[str, Any]:
    """One entry as `ls --json` and `find --json` show it (no storage locations: those are the
    bucket layout, not the contract)."""
    d: dict[str, Any] = {"path": e.path, "type": e.type, "size": e.apparent_size,
                         "mtime": rfc3339(datetime.fromtimestamp(e.mtime_ns / 1e9, UTC)),
                         "mode": e.mode, "uid": e.uid, "gid": e.gid}
    if e.target is not None:
        d["target"] = e.target
    return d


# --- ls --------------------------------------------------------------------------------------


@contextmanager
def ls(job: S3Job, snapshot: str | None, at: str | None,
       paths: list[str]) -> Iterator[tuple[Snapshot, Iterator[Entry]]]:
    """The snapshot's entries at or under `paths` (all without), in manifest order. The manifest
    is read once through before anything is yielded, so a corrupt one fails before any output."""
    wanted = [absolute(p, "ls:") for p in paths]
    snap = job.select(snapshot, at)
    name = f"snapshot {snap.id}"
    with _spool(job, snap.id) as spool:
        # The first pass checks the header, the gzip CRC and the trailer's count and decodes only
        # lines that hold a PATH (decoding every line costs as much again as the second pass).
        needles = sorted({json.dumps(w)[1:-1].encode() for w in wanted})
        try:
            found = sum(under(e.path, wanted) for e in read_matching(spool, name, needles))
        except ManifestError as exc:
            raise IntegrityError(str(exc)) from None
        if wanted and not found:
            raise JobFailed(f"{name}: no entry at or under {', '.join(wanted)}")
        yield snap, (e for e in _entries(spool, name) if under(e.path, wanted))


@contextmanager
def _spool(job: S3Job, sid: str) -> Iterator[IO[bytes]]:
    """The manifest in a temp file (never in memory), positioned at the start."""
    with tempfile.TemporaryFile() as spool:
        job.spool_manifest(sid, spool)
        spool.seek(0)
        yield spool


def _entries(spool: IO[bytes], name: str) -> Iterator[Entry]:
    spool.seek(0)
    try:
        yield from read(spool, name)[1]
    except ManifestError as exc:
        raise IntegrityError(str(exc)) from None


# --- find ------------------------------------------------------------------------------------


@dataclass
class Pattern:
    """A glob: without '/' on the base name, starting with '/' on the full path, otherwise on the
    end of the path (`nginx/*.conf`). `*` matches '/' too in path patterns."""

    glob: str
    regex: re.Pattern[str]
    on_name: bool
    literals: list[bytes] | None  # a line can only match if it contains one of these (None: any line)


def compile_patterns(globs: list[str], ignore_case: bool) -> list[Pattern]:
    out = []
    for g in globs:
        if not g:
            raise ConfigError("find: an empty pattern matches nothing")
        on_name = "/" not in g
        full = g if on_name or g.startswith("/") else "*/" + g
        regex = re.compile(fnmatch.translate(full), re.IGNORECASE if ignore_case else 0)
        out.append(Pattern(g, regex, on_name, _literal(g, ignore_case)))
    return out


def _literal(glob: str, ignore_case: bool) -> list[bytes] | None:
    """The longest run of plain characters in the glob, as the manifest writes it (JSON-escaped)."""
    # fnmatch's classes: '[', an optional '!', a ']' taken literally, then up to the next ']'
    # (an unclosed '[' is cut off with the rest: a shorter literal is still a safe one).
    runs = re.split(r"\*|\?|\[!?\]?[^]]*\]?", glob)
    if ignore_case:
        # Non-ASCII letters are escaped in the line (\u00e9 does not lower-case to the escape of
        # É), and re's IGNORECASE also matches i, k and s with U+0131, U+212A (Kelvin) and U+017F.
        runs = [piece for run in runs if run.isascii() for piece in re.split(r"[iksIKS]", run)]
    best = max(runs, key=len, default="")
    if not best:
        return None
    text = json.dumps(best)[1:-1]
    return [(text.lower() if ignore_case else text).encode()]


def needles(patterns: list[Pattern]) -> list[bytes] | None:
    """What a manifest line must contain to match one of the patterns (None: no such test)."""
    if any(p.literals is None for p in patterns):
        return None
    return sorted({lit for p in patterns for lit in (p.literals or [])})


def matches(e: Entry, patterns: list[Pattern]) -> bool:
    name = e.path[e.path.rfind("/") + 1 :] or "/"
    return any(p.regex.match(name if p.on_name else e.path) for p in patterns)


@dataclass
class Found:
    snapshot: Snapshot
    entries: list[Entry] = field(default_factory=list)
    error: str | None = None


def find(job: S3Job, globs: list[str], *, ignore_case: bool = False, newest: int | None = None,
         workers: int = FIND_WORKERS) -> tuple[int, Iterator[Found]]:
    """(snapshots searched, their matches newest first). Manifests are downloaded and searched
    `workers` at a time and yielded in order as they complete; only matching entries are kept."""
    if newest is not None and newest < 1:
        raise ConfigError("find: --newest must be at least 1")
    patterns = compile_patterns(globs, ignore_case)
    keep = needles(patterns)
    snaps = list(reversed(job.snapshots()))  # the listing's order, newest first
    if newest is not None:
        snaps = snaps[:newest]

    def search(snap: Snapshot) -> Found:
        found = Found(snap)
        try:
            with _spool(job, snap.id) as spool:
                found.entries = [e for e in read_matching(spool, f"snapshot {snap.id}", keep, ignore_case)
                                 if matches(e, patterns)]
        except JobFailed as exc:
            found.error = str(exc)
        except ManifestError as exc:
            found.error = str(exc)
        return found

    def results() -> Iterator[Found]:
        if not snaps:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(snaps))))
        try:
            # map() keeps the order; a finished manifest is dropped at once, only matches stay.
            yield from pool.map(search, snaps)
        finally:  # `find ... | head`: the reader left, nothing more is downloaded
            pool.shutdown(wait=True, cancel_futures=True)

    return len(snaps), results()


# --- diff ------------------------------------------------------------------------------------


class _Unsorted(Exception):
    pass


def _key(path: str) -> bytes:
    # The scan's order (depth first, each directory's children sorted by name) is the order of
    # paths compared component by component; with '/' as the lowest byte it is plain byte order.
    return path.encode("utf-8", "surrogatepass").replace(b"/", b"\0")


def _sorted_stream(entries: Iterable[Entry]) -> Iterator[tuple[bytes, Entry]]:
    prev: bytes | None = None
    for e in entries:
        k = _key(e.path)
        if prev is not None and k <= prev:
            raise _Unsorted
        prev = k
        yield k, e


def compare(a: Entry, b: Entry) -> str | None:
    """'content', 'metadata' or None (the same)."""
    if a == b:  # every field, also ones added later; most entries of two snapshots are this
        return None
    ja, jb = a.to_json(), b.to_json()
    differ = {k for k in ja.keys() | jb.keys() if ja.get(k) != jb.get(k)} - STORAGE_FIELDS
    if not differ:
        return None
    return "content" if differ & CONTENT_FIELDS else "metadata"


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    metadata_only: list[str] = field(default_factory=list)
    added_bytes: int = 0
    removed_bytes: int = 0
    changed_bytes: int = 0  # the size in B of the files whose content changed
    changed_bytes_before: int = 0
    ordered_merge: bool = True  # False: the manifests were not in one order and were sorted on disk

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge(a: Iterator[tuple[bytes, Entry]], b: Iterator[tuple[bytes, Entry]], out: Diff) -> Diff:
    """One pass over two manifests in the same order: memory follows the difference, not the trees."""
    end = (b"\xff" * 8, None)
    ka, ea = next(a, end)
    kb, eb = next(b, end)
    while ea is not None or eb is not None:
        if eb is None or (ea is not None and ka < kb):
            assert ea is not None
            out.removed.append(ea.path)
            out.removed_bytes += ea.apparent_size
            ka, ea = next(a, end)
        elif ea is None or kb < ka:
            out.added.append(eb.path)
            out.added_bytes += eb.apparent_size
            kb, eb = next(b, end)
        else:
            what = compare(ea, eb)
            if what:
                out.changed.append(eb.path)
                if what == "metadata":
                    out.metadata_only.append(eb.path)
                else:
                    out.changed_bytes += eb.apparent_size
                    out.changed_bytes_before += ea.apparent_size
            ka, ea = next(a, end)
            kb, eb = next(b, end)
    return out


def diff(job: S3Job, snap_a: str, snap_b: str) -> tuple[Snapshot, Snapshot, Diff]:
    snaps = job.snapshots()
    where = f"s3://{job.bucket}/{job.root}"
    a = pick_snapshot(snaps, snap_a, None, job.job.name, where)
    b = pick_snapshot(snaps, snap_b, None, job.job.name, where)
    with job.manifest_passes(a.id) as pa, job.manifest_passes(b.id) as pb:
        try:
            return a, b, merge(_sorted_stream(pa()[1]), _sorted_stream(pb()[1]), Diff())
        except _Unsorted:
            # Several `paths` are scanned in config order, and configs change: such manifests
            # are sorted through a temp SQLite file, so memory still stays flat.
            log.info("diff: manifests are not in path order; sorting them on disk")
            with tempfile.TemporaryDirectory() as tmp:
                db = sqlite3.connect(f"{tmp}/diff.db")
                try:
                    out = merge(_sorted_on_disk(db, "a", pa()[1]), _sorted_on_disk(db, "b", pb()[1]), Diff())
                finally:
                    db.close()
            out.ordered_merge = False
            return a, b, out


def _sorted_on_disk(db: sqlite3.Connection, table: str, entries: Iterable[Entry]) -> Iterator[tuple[bytes, Entry]]:
    db.execute(f"CREATE TABLE {table} (k BLOB PRIMARY KEY, j TEXT NOT NULL)")
    # A path listed twice (overlapping `paths`) keeps its last entry, as a restore would write it.
    db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)",
                   ((_key(e.path), json.dumps(e.to_json())) for e in entries))
    db.commit()
    for k, j in db.execute(f"SELECT k, j FROM {table} ORDER BY k"):
        yield k, parse_entry(json.loads(j), f"{table}: {j[:80]}")


# --- dump ------------------------------------------------------------------------------------


@contextmanager
def dump(job: S3Job, path: str, snapshot: str | None, at: str | None) -> Iterator[tuple[Entry, IO[bytes]]]:
    """One file's content, verified against its sha256 before the caller gets any of it:
    (entry, a readable file positioned at the start)."""
    wanted = absolute(path, "dump:")
    snap = job.select(snapshot, at)
    entry: Entry | None = None
    with job.open_manifest(snap.id) as (_, entries, _):
        for e in entries:
            if e.path == wanted:
                entry = e  # read on to the end: the trailer vouches for the whole manifest
    if entry is None:
        raise JobFailed(f"snapshot {snap.id}: no {wanted}")
    if entry.type != "file":
        what = f"a symlink to {entry.target}" if entry.type == "symlink" else f"a {entry.type}, not a file"
        raise JobFailed(f"snapshot {snap.id}: {wanted} is {what}")
    if entry.size == 0:
        if entry.sha256 not in (None, hashlib.sha256(b"").hexdigest()):
            raise IntegrityError(f"snapshot {snap.id}: {wanted}: empty, but its sha256 is of some content")
        with _with_holes(entry, io.BytesIO()) as whole:
            yield entry, whole
        return
    _ready(job, entry)
    spool: IO[bytes]
    with (io.BytesIO() if entry.size <= DUMP_IN_MEMORY else tempfile.TemporaryFile()) as spool:
        # TemporaryFile is created 0600 and unlinked at once: nobody else can open the content.

        def sink(piece: Piece, chunks: Iterator[bytes]) -> str | None:
            spool.seek(0)
            spool.truncate()  # a retried read starts the piece again
            return hashing(chunks, piece, write)

        def write(chunk: bytes) -> None:
            spool.write(chunk)

        problems = read_all(job.store, job.root, [entry], job.cfg.storage, sink, job.data_encoding(snap.id),
                            concurrency=1)
        if problems:
            raise IntegrityError(f"snapshot {snap.id}: {problems[0]}")
        spool.seek(0)
        with _with_holes(entry, spool) as whole:
            yield entry, whole


@contextmanager
def _with_holes(entry: Entry, stored: IO[bytes]) -> Iterator[IO[bytes]]:
    """A sparse file's verified stored bytes laid out at its extents, holes read as zeros (as
    `cat` of the file would give); any other file's content as it is."""
    if entry.extents is None:
        yield stored
        return
    with tempfile.TemporaryFile() as out:  # 0600, unlinked at once; its holes take no space
        for offset, length in entry.extents:
            out.seek(offset)
            out.write(stored.read(length))
        out.truncate(entry.length)
        out.seek(0)
        yield out


def _ready(job: S3Job, entry: Entry) -> None:
    """Archived (Glacier) objects are asked for as a restore does it (a chunked file's may be
    several packs); exit 75 until all are readable."""
    thaw = job.thaw()
    survey = thaw.prepare([job.root + o for o in entry.objects()])
    if survey.waiting:
        raise NotReady(thaw.pending_message(survey, f"dump {job.job.name} {entry.path}"),
                       {"job": job.job.name, "path": entry.path, **thaw.pending_details(survey)})
