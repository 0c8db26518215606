"""Reading content back: group manifest entries by object, fetch each object once with ranged
GETs, and hand each piece of content (hashed on the way) to a sink. Restore, `check --read-data`
and `dump` share it.

Entries arrive as a stream and are grouped a window at a time, so memory follows the window and
not the snapshot (a million-file restore held every entry and its pieces: about 1 GB). Scan order
keeps a pack's files together in the manifest, so windows rarely split a pack's reads.

Manifest format 3 (issue #20) stores content encoded (storage/codec.py): a small file is one
encoded piece in a pack (`stored` bytes at `object`/`offset`), a big file a list of encoded
chunks. Either way the sink sees the plaintext, and `hashing` checks the whole file's size and
sha256 as for raw content. A piece that does not decode is a problem for its file, and its object
counts as damaged (Piece.damaged), as a sha256 mismatch does; a piece sealed with a key this node
lacks raises WrongKey (exit 2) and stops everything.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from backup_agent.config import Storage
from backup_agent.errors import IntegrityError, JobFailed, NotReady
from backup_agent.storage.encoding import Encoding, damaged
from backup_agent.storage.manifest import Chunk, Entry
from backup_agent.storage.store import Archived, Body, Store, StoreError

CHUNK = 1 << 20
# Entries in one object closer than this are fetched with one GET (reading the gap is cheaper
# than another request).
MAX_GAP = 1 << 20
# Entries grouped into GETs at a time (a few MB of entries and pieces). Content shared by entries
# in different windows is fetched once per window.
WINDOW = 20_000
# An encoded piece up to this size is read whole and opened in place (Codec.decode: one call per
# piece); a bigger one (a small file only by `storage.large_file_mb`) is opened as a stream.
IN_MEMORY = 16 << 20
# The chunker cuts at most 256 KiB (chunker.DEFAULT); a chunk above this, with a few bytes of
# header and tags, is refused unread.
MAX_CHUNK = 1 << 20
# Decoded bytes of one big file held ahead of its sink: the GETs and decoding of the next chunks
# run while the sink hashes and writes the current ones.
READ_AHEAD = 8 << 20


@dataclass(slots=True)
class Piece:
    """One stored byte range, or a big file's chunks, and every manifest entry whose content it is.
    `size` and `sha256` are of the plaintext; `stored` is the encoded length (None: raw bytes)."""

    object: str
    offset: int
    size: int
    sha256: str
    entries: list[Entry]
    stored: int | None = None
    chunks: list[Chunk] | None = None
    # Objects found damaged while reading (a piece that does not decode); filled by the reader.
    damaged: set[str] = field(default_factory=set)

    @property
    def length(self) -> int:
        """Bytes at object/offset (not for chunked pieces)."""
        return self.size if self.stored is None else self.stored

    def objects(self) -> list[str]:
        if self.chunks is not None:
            return list(dict.fromkeys(c[0] for c in self.chunks))
        return [self.object]


# A sink receives a piece and an iterator of its bytes; it returns a problem text or None. The
# iterator may raise IntegrityError (a damaged piece) or WrongKey: `hashing` turns the first into
# a problem.
Sink = Callable[[Piece, Iterator[bytes]], "str | None"]


def group(entries: Iterable[Entry]) -> tuple[dict[str, list[Piece]], list[Piece]]:
    """Pieces in objects (by object, in offset order) and chunked files' pieces (one per content)."""
    pieces: dict[tuple[str, int, int, bool], Piece] = {}
    chunked: dict[tuple[str, int, tuple[Chunk, ...]], Piece] = {}
    for e in entries:
        assert e.sha256 is not None
        if e.chunks is not None:
            ckey = (e.sha256, e.size, tuple(e.chunks))
            if ckey in chunked:
                chunked[ckey].entries.append(e)
            else:
                first = e.chunks[0]
                chunked[ckey] = Piece(first[0], first[1], e.size, e.sha256, [e], chunks=e.chunks)
            continue
        assert e.object is not None
        key = (e.object, e.offset, e.size if e.stored is None else e.stored, e.stored is not None)
        if key in pieces:
            pieces[key].entries.append(e)
        else:
            pieces[key] = Piece(e.object, e.offset, e.size, e.sha256, [e], stored=e.stored)
    by_object: dict[str, list[Piece]] = defaultdict(list)
    for p in pieces.values():
        by_object[p.object].append(p)
    for plist in by_object.values():
        plist.sort(key=lambda p: p.offset)
    return by_object, list(chunked.values())


def _runs(pieces: list[Piece]) -> Iterator[list[Piece]]:
    run: list[Piece] = []
    end = 0
    for p in pieces:
        if run and p.offset > end + MAX_GAP:
            yield run
            run = []
        if not run:
            end = p.offset
        run.append(p)
        end = max(end, p.offset + p.length)
    if run:
        yield run


def read_all(store: Store, root: str, entries: Iterable[Entry], storage: Storage, sink: Sink,
             encoding: Encoding, concurrency: int | None = None) -> list[str]:
    """Fetch every piece once and feed it to `sink`; return the problems found. `encoding` opens
    format 3 pieces (the job's: its keys)."""
    workers = concurrency or restore_workers(storage)
    problems: list[str] = []
    pending: deque[Future[list[str]]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def submit(fn: Callable[..., list[str]], *args: object) -> None:
            # Bounded queue: the manifest is read only as far ahead as the GETs need.
            nonlocal problems
            while len(pending) >= 2 * workers:
                problems += pending.popleft().result()
            pending.append(pool.submit(fn, *args))

        try:
            for window in _windows(entries):
                by_object, chunked = group(window)
                for obj, plist in by_object.items():
                    for run in _runs(plist):
                        submit(_fetch_run, store, root + obj, run, sink, encoding)
                for piece in chunked:
                    submit(_fetch_chunked, store, root, piece, sink, encoding)
            while pending:
                problems += pending.popleft().result()
        finally:
            for f in pending:  # a failed read or a bad manifest entry: nothing more is started
                f.cancel()
    return problems


def restore_workers(storage: Storage) -> int:
    """Threads that fetch and write: `concurrency`, but no more than the cores (two at least).
    Writing small files is Python and syscalls under the GIL, and the network waits happen in
    awscrt's event loop (WindowedBody reads ahead), so threads beyond the cores only contend: on
    2 cores, 8 threads made 226k futex calls restoring 5,000 small files, 2 threads 30k, and the
    random anchor's restore took 18 % less time and 50 MB less memory (PERFORMANCE.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(storage.concurrency, max(2, cores)))


def _windows(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    window: list[Entry] = []
    for e in entries:
        if e.type != "file" or e.size == 0:
            continue  # no content to read (a caller may pass whole manifests)
        window.append(e)
        if len(window) >= WINDOW:
            yield window
            window = []
    if window:
        yield window


def _get(store: Store, key: str, start: int, end: int) -> Body:
    try:
        # A body that breaks while it streams is resumed inside the store: one read to the end.
        return store.get(key, start, end)
    except Archived:
        raise NotReady(f"{key} is archived and not restored yet") from None
    except StoreError as exc:
        raise JobFailed(f"cannot read {key}: {exc}") from None


def _fetch_run(store: Store, key: str, run: list[Piece], sink: Sink, encoding: Encoding) -> list[str]:
    start = run[0].offset
    end = max(p.offset + p.length for p in run)
    body = _get(store, key, start, end)
    if len(run) > 1:
        # Packed small files: a few large reads cut into pieces in memory instead of one read per
        # file, which spares the threads a GIL hand-off per tiny read.
        body = _Buffered(body)
    problems: list[str] = []
    pos = start
    try:
        for p in run:
            if p.offset < pos:
                # Overlapping pieces (only from a crafted manifest) are fetched on their own.
                problems += _fetch_run(store, key, [p], sink, encoding)
                continue
            pos += _skip(body, p.offset - pos)

            def raw(piece: Piece = p) -> Iterator[bytes]:
                nonlocal pos
                left = piece.length
                while left > 0:
                    chunk = body.read(min(CHUNK, left))
                    if not chunk:
                        return
                    pos += len(chunk)
                    left -= len(chunk)
                    yield chunk

            problem = sink(p, raw() if p.stored is None else _opened(raw(), p, key, encoding))
            if problem:
                problems.append(problem)
            # A sink that stopped early (a damaged piece) leaves the rest of it unread.
            pos += _skip(body, p.offset + p.length - pos)
    except StoreError as exc:
        raise JobFailed(f"cannot read {key}: {exc}") from None
    finally:
        body.close()
    return problems


def _skip(body: Body, n: int) -> int:
    done = 0
    while done < n:
        chunk = body.read(min(CHUNK, n - done))
        if not chunk:
            break
        done += len(chunk)
    return done


def _exact(parts: Iterator[bytes], n: int, what: str) -> bytes:
    got = b"".join(parts)
    if len(got) != n:
        raise IntegrityError(f"{what}: object ended after {len(got)} of {n} stored bytes")
    return got


def _opened(raw: Iterator[bytes], p: Piece, key: str, encoding: Encoding) -> Iterator[bytes]:
    """A small file's encoded piece as plaintext; a damaged piece marks its object."""
    what = f"{key} at {p.offset}"
    try:
        if p.length <= IN_MEMORY:
            yield encoding.open_data(_exact(raw, p.length, what), aad=p.sha256, size=p.size, what=what)
        else:
            yield from encoding.open_data_iter(raw, aad=p.sha256, size=p.size, what=what)
    except Exception as exc:
        if damaged(exc):
            p.damaged.add(p.object)
        raise


# A big file's chunks in one object are read through one forward stream (a span) while each
# starts at most SPAN_GAP after the one before: the bytes between (chunks of other files, or
# older versions of this file's) are read and dropped, cheaper than another request.
SPAN_GAP = 1 << 20
# Spans of one file open at once (each a GET streaming ahead of its reader); beyond it the least
# recently used is closed, and opened again where it stopped when the file needs it next.
OPEN_SPANS = 4
# Plaintext of chunks the file uses again further on (repeated content) is kept for the next use,
# up to this many bytes per file; beyond it a repeat is read again.
REPEATS = 16 << 20
# Decoded chunks are handed to the sink's thread about this many bytes at a time.
BATCH = 1 << 20


@dataclass(slots=True)
class _Span:
    """One stream over [start, end) of an object; `last`: the last chunk read through it."""

    object: str
    start: int
    end: int
    last: int


@dataclass(slots=True)
class _Plan:
    spans: list[_Span]
    where: list[int]  # per chunk: its span, or -1 (a repeat served from memory)
    keep: set[int]  # chunks whose plaintext is kept for a repeat
    release: dict[int, list[Chunk]]  # chunk index → kept chunks whose last use it is


def _plan(chunks: list[Chunk], root: str) -> _Plan:
    """How a big file's chunks are read, decided before the first byte is.

    Chunks are placed in their packs in file order (one file at a time), so the chunks of one
    pack that a file needs come in increasing offsets: one span per pack serves them in order,
    however often the file alternates between packs (a file changed in place over several runs:
    its first run's packs and each later run's). A chunk behind its object's span or far after it
    starts a new span; a chunk used again is kept in memory until its last use (REPEATS)."""
    for obj, off, stored, size, _sha in chunks:
        if stored > MAX_CHUNK or size > MAX_CHUNK:
            # Only a crafted manifest: refused before anything is read.
            raise IntegrityError(f"{root + obj} at {off}: a chunk of {max(stored, size)} bytes is larger than "
                                 "any this agent writes")
    last_use = {c: i for i, c in enumerate(chunks)}
    spans: list[_Span] = []
    where = [0] * len(chunks)
    keep: set[int] = set()
    release: dict[int, list[Chunk]] = {}
    current: dict[str, int] = {}
    held = 0
    kept: set[Chunk] = set()
    for i, c in enumerate(chunks):
        obj, off, stored, size, _ = c
        if c in kept:
            where[i] = -1
        else:
            s = current.get(obj)
            if s is not None and 0 <= off - spans[s].end <= SPAN_GAP:
                spans[s].end, spans[s].last = off + stored, i
            else:
                s = current[obj] = len(spans)
                spans.append(_Span(obj, off, off + stored, i))
            where[i] = s
            if last_use[c] > i and held + size <= REPEATS:
                keep.add(i)
                kept.add(c)
                held += size
                release.setdefault(last_use[c], []).append(c)
        for done in release.get(i, ()):
            kept.discard(done)
            held -= done[3]
    return _Plan(spans, where, keep, release)


_DONE = object()


def _fetch_chunked(store: Store, root: str, piece: Piece, sink: Sink, encoding: Encoding) -> list[str]:
    """A big file's chunks, in order, as one piece: a thread of its own GETs and decodes up to
    READ_AHEAD bytes ahead while the sink's thread checks each plain chunk's sha256, then hashes
    and writes (with restore's threads all busy on big files this keeps both halves moving: the
    decoding, hashing and writing release the GIL). Decoded chunks cross between the threads in
    batches of about BATCH bytes.

    A plain chunk (no key) is hashed on its own so damage is pinned on the pack that holds it,
    and before any of its bytes reach the sink (`dump` streams to stdout). That hash ran on the
    decoding thread, which the sink's thread then waited for half the time; on the sink's thread
    the two halves take about as long (db file, six rounds under load: 1.16-1.31 s, 1.18-2.69
    with the hash on the decoding thread)."""
    check = not encoding.sealed
    ahead: queue.Queue[object] = queue.Queue(maxsize=max(2, READ_AHEAD // BATCH))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        parts = _decoded_chunks(store, root, piece, encoding, stop)
        batch: list[tuple[Chunk | None, bytes]] = []
        size = 0
        try:
            for part in parts:
                batch.append(part)
                size += len(part[1])
                if size >= BATCH:
                    if not put(batch):
                        return
                    batch, size = [], 0
            if (batch and not put(batch)) or not put(_DONE):
                return
        except BaseException as exc:  # handed to the sink's thread, which raises it
            put(exc)
        finally:
            parts.close()

    def consume() -> Iterator[bytes]:
        while True:
            item = ahead.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, list)
            for chunk, plain in item:
                if chunk is not None and check and hashlib.sha256(plain).hexdigest() != chunk[4]:
                    # A sealed chunk was authenticated for its sha256 where it was opened.
                    piece.damaged.add(chunk[0])
                    raise IntegrityError(f"{root + chunk[0]} at {chunk[1]}: chunk does not match its sha256")
                yield plain

    producer = threading.Thread(target=produce, name="chunks", daemon=True)
    producer.start()
    try:
        problem = sink(piece, consume())
    finally:
        stop.set()
        producer.join()
    return [problem] if problem else []


class _Cursor:
    """A span's body and the object offset of the next byte it gives."""

    __slots__ = ("body", "key", "pos")

    def __init__(self, store: Store, key: str, start: int, end: int) -> None:
        self.key, self.pos = key, start
        self.body = _get(store, key, start, end)

    def take(self, offset: int, n: int) -> bytes:
        """The n bytes at `offset` (at or after pos); fewer only where the object ends."""
        self.pos += _skip(self.body, offset - self.pos)
        blob = _read(self.body, n)
        self.pos += len(blob)
        return blob

    def close(self) -> None:
        self.body.close()


def _decoded_chunks(store: Store, root: str, piece: Piece, encoding: Encoding,
                    stop: threading.Event) -> Generator[tuple[Chunk | None, bytes], None, None]:
    """(chunk, plaintext) of a big file's chunks in order (chunk None: a repeat, its plaintext
    checked at its first use), read as _plan says: a 256 MiB database file with 1 % of its pages
    rewritten (3,564 chunks alternating between its first run's 6 packs and the second run's) is
    read with 7 GETs, one per pack (it was one per stretch of adjacent chunks: 564 round trips).
    A cursor opens its GET when the file first needs it: opening the next one early on a thread
    of its own showed no gain and 10-25 MB more peak RSS."""
    assert piece.chunks is not None
    chunks = piece.chunks
    plan = _plan(chunks, root)
    cursors: dict[int, _Cursor] = {}  # insertion order: least recently used first
    kept: dict[Chunk, bytes] = {}
    try:
        for i, c in enumerate(chunks):
            if stop.is_set():
                return
            s = plan.where[i]
            fresh: Chunk | None = None
            if s < 0:
                plain = kept[c]
            else:
                fresh = c
                obj, offset, stored, size, sha = c
                cur = cursors.pop(s, None)
                if cur is None or cur.pos > offset:
                    if cur is not None:
                        cur.close()
                    while len(cursors) >= OPEN_SPANS:
                        cursors.pop(next(iter(cursors))).close()
                    cur = _Cursor(store, root + obj, offset, plan.spans[s].end)
                if plan.spans[s].last != i:
                    cursors[s] = cur  # most recently used: last
                what = f"{cur.key} at {offset}"
                try:
                    try:
                        blob = cur.take(offset, stored)
                    except StoreError as exc:
                        raise JobFailed(f"cannot read {cur.key}: {exc}") from None
                    finally:
                        if plan.spans[s].last == i:
                            cur.close()
                    if len(blob) != stored:
                        raise IntegrityError(f"{what}: object ended after {len(blob)} of {stored} stored bytes")
                    # A sealed chunk is authenticated for its content id (the chunk's sha256); a
                    # plain one is hashed on the sink's thread.
                    plain = encoding.open_data(blob, aad=sha, size=size, what=what)
                except Exception as exc:
                    if damaged(exc):
                        piece.damaged.add(obj)
                    raise
                if i in plan.keep:
                    kept[c] = plain
            for done in plan.release.get(i, ()):
                kept.pop(done, None)
            yield fresh, plain
    finally:
        for cur in cursors.values():
            cur.close()


def _read(body: Body, n: int) -> bytes:
    """n bytes, fewer only at the end of the body."""
    first = body.read(n)
    if len(first) == n or not first:
        return first
    parts = [first]
    have = len(first)
    while have < n and (more := body.read(n - have)):
        parts.append(more)
        have += len(more)
    return b"".join(parts)


class _Buffered:
    """Reads a response body in blocks and serves small reads from memory."""

    BLOCK = 4 << 20

    def __init__(self, body: Body) -> None:
        self.body = body
        self.buf = b""
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            rest, self.buf, self.pos = self.buf[self.pos :], b"", 0
            return rest + self.body.read()
        if self.pos + n > len(self.buf):
            rest = self.buf[self.pos :]
            self.buf, self.pos = rest + self.body.read(max(n - len(rest), self.BLOCK)), 0
        chunk = self.buf[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.body.close()


def hashing(chunks: Iterator[bytes], piece: Piece, each: Callable[[bytes], None]) -> str | None:
    """Pass chunks to `each`, then compare size and sha256 with what the manifest says. A piece
    that does not decode is a problem too (its object is in piece.damaged); a wrong key raises."""
    h = hashlib.sha256()
    n = 0
    try:
        for c in chunks:
            h.update(c)
            each(c)
            n += len(c)
    except Exception as exc:
        if not damaged(exc):
            raise
        return f"{piece.entries[0].path}: {exc}"
    where = piece.object if piece.chunks is None else f"its {len(piece.chunks)} chunks"
    if n != piece.size:
        return f"{piece.entries[0].path}: {where} ended after {n} of {piece.size} bytes"
    if h.hexdigest() != piece.sha256:
        return f"{piece.entries[0].path}: content of {where} does not match its sha256"
    return None


def verify_entries(store: Store, root: str, entries: Iterable[Entry], storage: Storage,
                   encoding: Encoding) -> list[str]:
    return read_all(store, root, entries, storage,
                    lambda piece, chunks: hashing(chunks, piece, lambda _c: None), encoding)
