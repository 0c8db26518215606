"""Reading content back: group manifest entries by object, fetch each object once with ranged
GETs, and hand each piece of content (hashed on the way) to a sink. Restore and
`check --read-data` share it.

Entries arrive as a stream and are grouped a window at a time, so memory follows the window and
not the snapshot (a million-file restore held every entry and its pieces: about 1 GB). Scan order
keeps a pack's files together in the manifest, so windows rarely split a pack's reads.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from backup_agent.config import Storage
from backup_agent.errors import JobFailed, NotReady
from backup_agent.storage.manifest import Entry
from backup_agent.storage.store import Archived, Body, Store, StoreError

CHUNK = 1 << 20
# Entries in one object closer than this are fetched with one GET (reading the gap is cheaper
# than another request).
MAX_GAP = 1 << 20
# Entries grouped into GETs at a time (a few MB of entries and pieces). Content shared by entries
# in different windows is fetched once per window.
WINDOW = 20_000


@dataclass(slots=True)
class Piece:
    """One stored byte range and every manifest entry whose content it is."""

    object: str
    offset: int
    size: int
    sha256: str
    entries: list[Entry]


# A sink receives a piece and an iterator of its bytes; it returns a problem text or None.
Sink = Callable[[Piece, Iterator[bytes]], "str | None"]


def group(entries: Iterable[Entry]) -> dict[str, list[Piece]]:
    pieces: dict[tuple[str, int, int], Piece] = {}
    for e in entries:
        assert e.object is not None and e.sha256 is not None
        key = (e.object, e.offset, e.size)
        if key in pieces:
            pieces[key].entries.append(e)
        else:
            pieces[key] = Piece(e.object, e.offset, e.size, e.sha256, [e])
    by_object: dict[str, list[Piece]] = defaultdict(list)
    for p in pieces.values():
        by_object[p.object].append(p)
    for plist in by_object.values():
        plist.sort(key=lambda p: p.offset)
    return by_object


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
        end = max(end, p.offset + p.size)
    if run:
        yield run


def read_all(store: Store, root: str, entries: Iterable[Entry], storage: Storage, sink: Sink,
             concurrency: int | None = None) -> list[str]:
    """Fetch every piece once and feed it to `sink`; return the problems found."""
    workers = concurrency or storage.concurrency
    problems: list[str] = []
    pending: deque[Future[list[str]]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for window in _windows(entries):
                for obj, plist in group(window).items():
                    for run in _runs(plist):
                        # Bounded queue: the manifest is read only as far ahead as the GETs need.
                        while len(pending) >= 2 * workers:
                            problems += pending.popleft().result()
                        pending.append(pool.submit(_fetch_run, store, root + obj, run, sink))
            while pending:
                problems += pending.popleft().result()
        finally:
            for f in pending:  # a failed read or a bad manifest entry: nothing more is started
                f.cancel()
    return problems


def _windows(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    window: list[Entry] = []
    for e in entries:
        window.append(e)
        if len(window) >= WINDOW:
            yield window
            window = []
    if window:
        yield window


def _fetch_run(store: Store, key: str, run: list[Piece], sink: Sink) -> list[str]:
    start = run[0].offset
    end = max(p.offset + p.size for p in run)
    try:
        # A body that breaks while it streams is resumed inside the store: one read to the end.
        body: Body = store.get(key, start, end)
    except Archived:
        raise NotReady(f"{key} is archived and not restored yet") from None
    except StoreError as exc:
        raise JobFailed(f"cannot read {key}: {exc}") from None
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
                problems += _fetch_run(store, key, [p], sink)
                continue
            while pos < p.offset:  # skip the gap
                chunk = body.read(min(CHUNK, p.offset - pos))
                if not chunk:
                    break
                pos += len(chunk)

            def chunks(piece: Piece = p) -> Iterator[bytes]:
                nonlocal pos
                left = piece.size
                while left > 0:
                    chunk = body.read(min(CHUNK, left))
                    if not chunk:
                        return
                    pos += len(chunk)
                    left -= len(chunk)
                    yield chunk

            problem = sink(p, chunks())
            if problem:
                problems.append(problem)
    except StoreError as exc:
        raise JobFailed(f"cannot read {key}: {exc}") from None
    finally:
        body.close()
    return problems


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
    """Pass chunks to `each`, then compare size and sha256 with what the manifest says."""
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        h.update(c)
        each(c)
        n += len(c)
    if n != piece.size:
        return f"{piece.entries[0].path}: {piece.object} ended after {n} of {piece.size} bytes"
    if h.hexdigest() != piece.sha256:
        return f"{piece.entries[0].path}: content of {piece.object} does not match its sha256"
    return None


def verify_entries(store: Store, root: str, entries: Iterable[Entry], storage: Storage) -> list[str]:
    return read_all(store, root, entries, storage,
                    lambda piece, chunks: hashing(chunks, piece, lambda _c: None))
