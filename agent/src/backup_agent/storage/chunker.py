"""Content-defined chunking of big files (FastCDC-style gear hash, normalised chunking).

Used by files jobs for big files (jobs/files.py; docs/PERFORMANCE.md, "Issue #20", has the figures).
A big file is cut where the content says so, not at fixed offsets, so bytes inserted in the
middle move the later boundaries along with the data and only the chunks around the edit change.

The hash at byte i is a gear hash over the 32 bytes ending there:

    h(i) = sum over k in 0..31 of (GEAR[b(i-k)] << k)   (mod 2**32)

which is what the usual rolling form `h = (h << 1) + GEAR[b]` holds after 32 bytes (older bytes
are shifted out). A chunk ends after byte i when the top bits of h(i) are all zero: more bits
(harder) while the chunk is shorter than the average, fewer (easier) after it, which is FastCDC's
normalised chunking (level 2): chunk sizes bunch around the average instead of spreading
exponentially. Boundaries depend on the 32 bytes before them only, never on where a read or a
chunk started, so they are the same whatever the block size and after any edit elsewhere.

Speed: a byte-at-a-time Python loop runs at about 10 MB/s here, too slow for a 1 GiB file (see
PERFORMANCE.md). With numpy the hash of a whole block is five vectorised shift-and-add passes
(window doubling: h_2w(i) = h_w(i) + h_w(i-w) << w) and the cut points come from searchsorted over
the candidates; the Python loop only runs per chunk. Blocks are hashed on two threads of their
own, ahead of the cutting (HASH_AHEAD), since numpy lets go of the GIL. numpy is optional:
without it the same boundaries come from the slow loop (tests check both agree).

The gear table comes from a seed; with encryption on it is seeded from the key (codec.Key.gear_seed),
so chunk sizes, which an observer of the bucket could otherwise match against known files, depend
on the secret too (restic randomises its polynomial per repository for the same reason).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import importlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

# numpy's OpenBLAS starts a thread per core that spins while idle; the chunker does no linear
# algebra, and those threads took CPU from zstd and the scan on a 2-core node. OpenBLAS reads the
# variable once, as numpy loads it; it is set for that moment only, so hooks and dump commands
# this process starts later do not inherit it. An operator's own setting wins.
_blas_set = "OPENBLAS_NUM_THREADS" not in os.environ
if _blas_set:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
try:
    # Any-typed on purpose: the agent does not require numpy, and mypy must pass without it.
    _np: Any = importlib.import_module("numpy")
except ImportError:  # pragma: no cover - depends on the install
    _np = None
finally:
    if _blas_set:
        del os.environ["OPENBLAS_NUM_THREADS"]

KIB = 1024
WINDOW = 32  # bytes the hash sees
BLOCK = 1 << 20  # bytes read at a time (a chunk is a view of its block: a few blocks stay alive)
SEGMENT = 128 << 10  # bytes hashed at a time: fewer numpy calls (each takes the GIL) against cache misses
LOOK = WINDOW  # look-back hashed before a segment: WINDOW - 1 bytes, rounded up to keep pairs aligned
DEFAULT_SEED = b"backup-agent gear v1"
# Blocks hashed ahead of the cutting, on threads of their own (numpy lets go of the GIL while it
# hashes): where a core is free, as when a changed log or database file is read again, a big file
# is cut up to twice as fast. Each block ahead costs BLOCK bytes.
HASH_AHEAD = 2
# Blocks of a guided cut (Chunker.guided) where it leaves last time's chunks: it usually finds them
# again a chunk or two later, and what it read and hashed beyond that is thrown away.
GUIDED_BLOCK = 64 << 10
HASH_THREADS = 2


class Readable(Protocol):
    """What the chunker reads from: a file, or regions of one (a sparse file's data)."""

    def read(self, n: int, /) -> bytes: ...


class _Slice:
    """Bytes [start, end) of a file read by offset, as a Readable."""

    def __init__(self, read_at: Callable[[int, int], bytes], start: int, end: int) -> None:
        self.read_at, self.pos, self.end = read_at, start, end

    def read(self, n: int) -> bytes:
        data = self.read_at(self.pos, min(n, self.end - self.pos)) if self.pos < self.end else b""
        self.pos += len(data)
        return data


@dataclass(frozen=True)
class Params:
    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        if not WINDOW * 2 <= self.min_size < self.avg_size < self.max_size:
            raise ValueError("need 64 <= min_size < avg_size < max_size")
        if self.avg_size & (self.avg_size - 1):
            raise ValueError("avg_size must be a power of two")

    @property
    def bits(self) -> int:
        return self.avg_size.bit_length() - 1


# 1 % of a database file's 8 KiB pages rewritten at random touches 1-(0.99**(C/8K)) of the chunks:
# 8 % at C = 64 KiB, 72 % at 1 MiB (restic's average). Small chunks cost index entries (32 bytes of
# id per 64 KiB in the manifest: 0.05 %) but they are packed, never one object each.
DEFAULT = Params(min_size=16 * KIB, avg_size=64 * KIB, max_size=256 * KIB)


@functools.lru_cache(maxsize=4)
def gear_table(seed: bytes = DEFAULT_SEED) -> tuple[int, ...]:
    """256 pseudo-random 32-bit values, fixed forever for a seed (boundaries depend on them).
    Made once per seed and process: a chunker is made per big file."""
    return tuple(int.from_bytes(hashlib.sha256(seed + bytes([i])).digest()[:4], "little") for i in range(256))


class Chunker:
    def __init__(self, params: Params = DEFAULT, seed: bytes = DEFAULT_SEED, use_numpy: bool = True) -> None:
        self.params = params
        self.table = gear_table(seed)
        # A chunk may end at i when h(i) < limit: the top `bits` bits are zero.
        self._limit_s = 1 << (32 - (params.bits + 2))
        self._limit_l = 1 << (32 - (params.bits - 2))
        self._np_table: Any = None
        self._pairs: Any = None
        if use_numpy and _np is not None:
            self._np_table, self._pairs = _numpy_tables(seed)

    @property
    def fast(self) -> bool:
        return self._np_table is not None

    def chunks(self, f: Readable, block: int = BLOCK, ahead: int = HASH_AHEAD) -> Iterator[bytes | memoryview]:
        """The file's bytes as chunks, read `block` bytes at a time (`ahead` of them hashed ahead):
        memory stays at a few blocks. With numpy a chunk is a view of the block it lies in (copied
        only when it spans two)."""
        if self._np_table is not None:
            return self._chunks_numpy(f, block, ahead)
        return self._chunks_python(f, block)

    def guided(self, read_at: Callable[[int, int], bytes], size: int, previous: Sequence[tuple[int, str]]
               ) -> Iterator[tuple[bytes | memoryview, str]]:
        """The chunks of a changed file of `size` bytes and their SHA-256s (hex), given its
        chunks of last time (`previous`: size and SHA-256 of each, in order): the same chunks as
        `chunks` gives, with far less hashing where the file kept its content.

        Where a chunk is cut depends only on the bytes from its start (its window never reaches
        back past it), so a chunk of last time whose bytes are found unchanged where the next
        chunk begins is exactly the chunk the gear hash would cut there: it is taken after a
        SHA-256 of those bytes, which the caller needs anyway. Elsewhere (a changed region, an
        insertion) the gear hash cuts as usual, in small blocks, until a chunk it cuts is one of
        last time's; the one after that is tried next. Last time's final chunk ended where the
        file did, not where its content says: it is never taken this way. `read_at(offset, n)`
        gives n bytes (fewer only at the end of the file)."""
        olds = list(previous[:-1])
        after = {sha: i + 1 for i, (_, sha) in reversed(list(enumerate(olds)))}  # its first occurrence
        pos, nxt = 0, 0
        while pos < size:
            if nxt < len(olds) and pos + olds[nxt][0] <= size:
                n, want = olds[nxt]
                same = read_at(pos, n)
                if len(same) == n and hashlib.sha256(same).hexdigest() == want:
                    yield same, want
                    pos, nxt = pos + n, nxt + 1
                    continue
            # Out of step: small blocks hashed on this thread, since the old chunks usually come
            # back soon (a hand-off to the hashing threads and back waits for the GIL each way);
            # after a BLOCK of new content, the usual blocks (a file rewritten whole is cut at full speed).
            nxt, lost = len(olds), 0
            for block, ahead in ((GUIDED_BLOCK, 0), (BLOCK, HASH_AHEAD)):
                for data in self.chunks(_Slice(read_at, pos, size), block, ahead):
                    sha = hashlib.sha256(data).hexdigest()
                    yield data, sha
                    pos, lost = pos + len(data), lost + len(data)
                    if after.get(sha, len(olds)) < len(olds):  # back in step with last time's chunks
                        nxt = after[sha]
                        break
                    if lost >= BLOCK and block < BLOCK:
                        break
                else:
                    return  # the end of the file (or of what it still holds)
                if nxt < len(olds):
                    break

    def _chunks_python(self, f: Readable, block: int = BLOCK) -> Iterator[bytes]:
        buf = b""
        eof = False
        while not eof:
            data = f.read(block)
            eof = not data
            buf = buf + data if buf else data
            if not buf:
                return
            start = 0
            for cut in self._cuts_python(buf, eof):
                yield buf[start:cut]
                start = cut
            buf = buf[start:]

    def _chunks_numpy(self, f: Readable, block: int = BLOCK, ahead: int = HASH_AHEAD) -> Iterator[bytes | memoryview]:
        """Each block is hashed once, with the WINDOW-1 bytes before it as look-back: the bytes
        after the last cut are never hashed again nor joined with the next block, and a chunk is
        handed out as a view (two copies per byte fewer than slicing; PERFORMANCE.md)."""
        p = self.params
        blocks: deque[tuple[int, memoryview]] = deque()  # (offset in the file, bytes) not yet all cut
        cand_l: list[int] = []  # offsets i after the current chunk's start where h(i) < limit_l
        cand_s: list[int] = []  # those where h(i) < limit_s too
        s = n = 0  # the current chunk's start; bytes hashed
        for offset, data, found_l, found_s in self._hashed(f, block, ahead):
            eof = not data
            if data:
                cand_l.extend(found_l)
                cand_s.extend(found_s)
                blocks.append((offset, memoryview(data)))
                n = offset + len(data)
            while s < n:
                # A chunk of length L ends at i = s + L - 1 (the rules of _cuts_python).
                lo, mid, hi = s + p.min_size - 1, s + p.avg_size - 1, s + p.max_size - 1
                j = bisect.bisect_left(cand_s, lo)
                if j < len(cand_s) and cand_s[j] < mid:
                    cut = cand_s[j] + 1
                elif mid > n - 1 and not eof:
                    break  # the harder range runs past the data read so far
                else:
                    j = bisect.bisect_left(cand_l, mid)
                    if j < len(cand_l) and cand_l[j] <= hi:
                        cut = cand_l[j] + 1
                    elif (forced := _forced_cut(hi, n, eof)) is not None:
                        cut = forced
                    else:
                        break
                yield _span(blocks, s, cut)
                s = cut
            while blocks and blocks[0][0] + len(blocks[0][1]) <= s:
                blocks.popleft()
            del cand_l[:bisect.bisect_left(cand_l, s)]
            del cand_s[:bisect.bisect_left(cand_s, s)]

    def _hashed(self, f: Readable, block: int = BLOCK, ahead_max: int = HASH_AHEAD
                ) -> Iterator[tuple[int, bytes, list[int], list[int]]]:
        """(offset, block, candidates, harder candidates) of each block in order, then
        (size, b"", [], []); up to `ahead_max` blocks are read and hashed ahead on the hashing
        threads (0: hashed on the caller's thread, as it asks). Reads stay on the caller's thread."""
        pool = _hash_pool()
        ahead: deque[tuple[int, bytes, Future[tuple[list[int], list[int]]]]] = deque()
        tail = b""  # the last WINDOW-1 bytes read
        n = 0
        eof = False
        while True:
            while not eof and len(ahead) < max(ahead_max, 1):
                data = f.read(block)
                if not data:
                    eof = True
                    break
                if ahead_max:
                    work = pool.submit(self._candidates, tail, data, n)
                else:
                    work = Future()
                    work.set_result(self._candidates(tail, data, n))
                ahead.append((n, data, work))
                n += len(data)
                tail = (tail + data[-(WINDOW - 1):])[-(WINDOW - 1):]
            if not ahead:
                yield n, b"", [], []
                return
            offset, data, fut = ahead.popleft()
            yield (offset, data, *fut.result())

    def _candidates(self, tail: bytes, data: bytes, base: int) -> tuple[list[int], list[int]]:
        """The offsets (base = data's offset in the file) in data where a chunk may end, and
        those where a chunk shorter than the average may. Hashed SEGMENT bytes at a time: the
        arrays then stay in the CPU's cache, where a whole block's (4 bytes a byte, several
        passes) went to memory and back each pass."""
        np = _np
        tmp = getattr(_scratch, "arrays", None)
        if tmp is None:  # per thread: blocks of one file are hashed on several at once
            size = LOOK + SEGMENT
            tmp = _scratch.arrays = (np.empty(size, dtype=np.uint32), np.empty(size, dtype=np.uint32),
                                     np.empty(size, dtype=bool))
        hs, ts, bs = tmp
        table, pairs = self._np_table, self._pairs
        limit_l, limit_s = np.uint32(self._limit_l), np.uint32(self._limit_s)
        u8 = np.frombuffer(data, dtype=np.uint8)
        u16 = np.frombuffer(data, dtype=np.uint16, count=len(data) // 2)
        back = np.frombuffer(tail, dtype=np.uint8)
        cand_l: list[int] = []
        cand_s: list[int] = []
        for o in range(0, len(data), SEGMENT):
            # h[LOOK:] is the segment's hash; before it the look-back (the end of the previous
            # block, or of the previous segment), and zeros where the file has no bytes before.
            end = min(len(data), o + SEGMENT)
            n = end - o
            m = LOOK + n
            h, tmp, below = hs[:m], ts[:m], bs[:m]
            lb = back if o == 0 else u8[o - LOOK:o]
            h[:LOOK - len(lb)] = 0
            # mode="clip": with the default ("raise") numpy buffers `out` (one more array each time).
            np.take(table, lb, out=h[LOOK - len(lb):LOOK], mode="clip")
            # Two bytes' gear values per gather (a table of byte pairs): the gathers were most of
            # the time. o is even (SEGMENT is), and h[LOOK:] 8-byte aligned, so the pairs' values
            # land in place as uint64s; an odd last byte is looked up alone.
            np.take(pairs, u16[o // 2:o // 2 + n // 2], out=h[LOOK:LOOK + n - n % 2].view(np.uint64), mode="clip")
            if n % 2:
                h[m - 1] = table[u8[end - 1]]
            w = 1
            while w < WINDOW:  # window doubling: five passes give the 32-byte gear hash at every byte
                # Into a kept buffer: `h[w:] += h[:-w] << w` allocates a temporary each pass.
                np.left_shift(h[:-w], np.uint32(w), out=tmp[:m - w])
                np.add(h[w:], tmp[:m - w], out=h[w:])
                w *= 2
            np.less(h[LOOK:], limit_l, out=below[LOOK:])
            found = np.flatnonzero(below[LOOK:])
            if len(found):
                first = base + o
                cand_l.extend((found + first).tolist())
                cand_s.extend((found[h[found + LOOK] < limit_s] + first).tolist())
        return cand_l, cand_s

    def _cuts_python(self, buf: bytes, eof: bool) -> list[int]:
        p = self.params
        table = self.table
        n = len(buf)
        out: list[int] = []
        s = 0
        while s < n:
            lo, mid, hi = s + p.min_size - 1, s + p.avg_size - 1, s + p.max_size - 1
            cut = 0
            h = 0
            i = lo - WINDOW + 1  # hash the window before the first place a chunk may end
            end = min(hi, n - 1)
            while i <= end:
                h = ((h << 1) + table[buf[i]]) & 0xFFFFFFFF
                if i >= lo and h < (self._limit_s if i < mid else self._limit_l):
                    cut = i + 1
                    break
                i += 1
            if not cut:
                forced = _forced_cut(hi, n, eof)
                if forced is None:
                    break
                cut = forced
            out.append(cut)
            s = cut
        return out


@functools.lru_cache(maxsize=4)
def _numpy_tables(seed: bytes) -> tuple[Any, Any]:
    """The gear table as a numpy array, and the table of byte pairs: for the 2 bytes a uint16
    reads, both bytes' gear values as one uint64 (512 KiB; made once per seed, and a chunker is
    made per big file)."""
    np = _np
    table = np.array(gear_table(seed), dtype=np.uint32)
    pair = np.arange(1 << 16, dtype=np.uint32)
    low, high = table[pair & 0xFF].astype(np.uint64), table[pair >> 8].astype(np.uint64)
    # Either byte order: the first byte is the uint16's low byte and the uint64's first uint32
    # holds its low half (little-endian), or both are the high ones (big-endian).
    return table, low | (high << np.uint64(32))


_scratch = threading.local()
_hash_threads: ThreadPoolExecutor | None = None
_hash_threads_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    """The hashing threads, shared by every chunker of the process (started on first use)."""
    global _hash_threads
    with _hash_threads_lock:
        if _hash_threads is None:
            _hash_threads = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="gear")
        return _hash_threads


def _forced_cut(hi: int, n: int, eof: bool) -> int | None:
    """Where a chunk ends that found no content-defined boundary: at its maximum size when the
    data reaches that far, at the end of the data when it is the last; None: read more first."""
    if hi < n:
        return hi + 1
    if eof:
        return n
    return None


def _span(blocks: deque[tuple[int, memoryview]], start: int, end: int) -> bytes | memoryview:
    """Bytes [start, end) of the file from the blocks read: a view when one block holds them."""
    parts = []
    for off, view in blocks:
        if off + len(view) <= start:
            continue
        if off >= end:
            break
        parts.append(view[max(0, start - off):end - off])
    return parts[0] if len(parts) == 1 else b"".join(parts)
