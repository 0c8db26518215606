"""storage/chunker.py: boundaries that follow the content, the same with or without numpy."""

from __future__ import annotations

import hashlib
import io
import random
import tracemalloc

import pytest

from backup_agent.storage import chunker
from backup_agent.storage.chunker import DEFAULT, Chunker, Params

needs_numpy = pytest.mark.skipif(chunker._np is None, reason="numpy not installed")


def data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def ids(c: Chunker, blob: bytes) -> list[str]:
    return [hashlib.sha256(x).hexdigest() for x in c.chunks(io.BytesIO(blob))]


def sizes(c: Chunker, blob: bytes) -> list[int]:
    return [len(x) for x in c.chunks(io.BytesIO(blob))]


@pytest.mark.parametrize("n", [0, 1, 63, DEFAULT.min_size, DEFAULT.max_size, DEFAULT.max_size + 1, 3 << 20])
def test_chunks_put_back_together_are_the_file(n: int) -> None:
    blob = data(n)
    got = list(Chunker().chunks(io.BytesIO(blob)))
    assert b"".join(got) == blob
    assert all(len(x) <= DEFAULT.max_size for x in got)
    assert all(len(x) >= DEFAULT.min_size for x in got[:-1])


def test_sizes_bunch_around_the_average() -> None:
    s = sizes(Chunker(), data(16 << 20))[:-1]
    mean = sum(s) / len(s)
    assert 0.75 * DEFAULT.avg_size < mean < 1.5 * DEFAULT.avg_size


@needs_numpy
@pytest.mark.parametrize("blob", [data(3 << 20), bytes(1 << 20), b"abcdefgh" * 100_000,
                                  data(1 << 20) + bytes(600_000) + data(700_000, 2)],
                         ids=["random", "zeros", "periodic", "mixed"])
def test_numpy_and_python_cut_in_the_same_places(blob: bytes) -> None:
    small = Params(min_size=2048, avg_size=8192, max_size=32768)
    assert sizes(Chunker(small), blob) == sizes(Chunker(small, use_numpy=False), blob)


class ShortReads(io.BytesIO):
    """Reads that stop short at odd places (a sparse file's regions end anywhere)."""

    def __init__(self, blob: bytes) -> None:
        super().__init__(blob)
        self.rnd = random.Random(5)

    def read(self, n: int | None = -1, /) -> bytes:
        return super().read(min(n if n is not None and n >= 0 else 1 << 30, self.rnd.choice([1, 31, 33, 4097, 70_001])))


@needs_numpy
def test_numpy_cuts_where_the_byte_loop_does_whatever_the_reads() -> None:
    """numpy hashes byte pairs from aligned views: reads of odd lengths shift every later pair."""
    small = Params(min_size=2048, avg_size=8192, max_size=32768)
    blob = data(1 << 20, 3)
    want = sizes(Chunker(small, use_numpy=False), blob)
    got = [len(x) for x in Chunker(small).chunks(ShortReads(blob))]
    assert got == want


def test_boundaries_do_not_depend_on_how_the_file_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = data(6 << 20)
    whole = sizes(Chunker(), blob)
    monkeypatch.setattr(chunker, "BLOCK", 300_001)
    assert sizes(Chunker(), blob) == whole


def test_an_append_changes_only_the_last_chunk() -> None:
    blob = data(8 << 20)
    before, after = ids(Chunker(), blob), ids(Chunker(), blob + data(100_000, 2))
    assert after[:len(before) - 1] == before[:-1]


def test_an_insertion_in_the_middle_changes_only_the_chunks_around_it() -> None:
    blob = data(8 << 20)
    edited = blob[:4 << 20] + b"inserted line\n" * 50 + blob[4 << 20:]
    before, after = ids(Chunker(), blob), ids(Chunker(), edited)
    new = set(after) - set(before)
    assert 1 <= len(new) <= 3
    assert len(set(before) - set(after)) <= 3


def test_an_in_place_rewrite_changes_only_its_chunk() -> None:
    blob = bytearray(data(8 << 20))
    before = ids(Chunker(), bytes(blob))
    blob[5_000_000:5_008_192] = data(8192, 3)
    after = ids(Chunker(), bytes(blob))
    assert len(set(after) - set(before)) <= 2


def test_the_seed_changes_the_boundaries() -> None:
    blob = data(4 << 20)
    assert sizes(Chunker(seed=b"key-derived seed"), blob) != sizes(Chunker(), blob)


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Params(16384, 50000, 262144)
    with pytest.raises(ValueError):
        Params(32, 64, 128)


class Endless(io.RawIOBase):
    """A large file that never exists in memory."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.rnd = random.Random(9)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, n if n >= 0 else self.left)
        self.left -= n
        return self.rnd.randbytes(n)


def test_memory_stays_bounded_on_a_large_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    if chunker._np is not None:
        total, bound = 192 << 20, 32 << 20  # 32 MiB for 192 MiB, and for any size
    else:  # the byte loop (9 MB/s, slower under tracemalloc): smaller blocks, a smaller file
        monkeypatch.setattr(chunker, "BLOCK", 128 << 10)
        total, bound = 2 << 20, 1 << 20
    tracemalloc.start()
    try:
        got = sum(len(x) for x in Chunker().chunks(Endless(total)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == total
    assert peak < bound


def test_boundaries_never_change_between_versions() -> None:
    """Chunk ids name what is stored: a change to the gear table or the cut rules would make every
    node upload every big file again. Changing these sizes needs a new seed or a format version."""
    blob = random.Random(1).randbytes(2 << 20)
    assert sizes(Chunker(), blob)[:8] == [88470, 110857, 72995, 91598, 70887, 60560, 85294, 84578]


EDITS = ["appended", "pages rewritten", "bytes inserted", "bytes deleted", "head cut off", "truncated",
         "rewritten whole", "unchanged", "emptied", "repeated"]


def _edits(old: bytes) -> dict[str, bytes]:
    """What happens to a big file between two runs (EDITS)."""
    rnd = random.Random(9)
    pages = bytearray(old)
    for _ in range(12):  # a database: 8 KiB pages rewritten in place
        at = rnd.randrange(len(old) // 8192) * 8192
        pages[at:at + 8192] = rnd.randbytes(8192)
    mid = len(old) // 2
    return {
        "appended": old + data(3 << 20, 7),
        "pages rewritten": bytes(pages),
        "bytes inserted": old[:mid] + b"inserted line\n" * 23 + old[mid:],
        "bytes deleted": old[:mid] + old[mid + 70_000:],
        "head cut off": old[300_000:],
        "truncated": old[:len(old) * 2 // 3],
        "rewritten whole": data(len(old), 8),
        "unchanged": old,
        "emptied": b"",
        "repeated": old[:DEFAULT.max_size * 2] * 6,
    }


def listed(c: Chunker, blob: bytes) -> list[tuple[int, str]]:
    """The chunk list a cache keeps of a big file: size and SHA-256 of each chunk."""
    return [(len(x), hashlib.sha256(x).hexdigest()) for x in c.chunks(io.BytesIO(blob))]


class Reads:
    """read_at over bytes."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __call__(self, offset: int, n: int) -> bytes:
        return self.blob[offset:offset + n]


@pytest.mark.parametrize("use_numpy", [pytest.param(True, marks=needs_numpy), False], ids=["numpy", "python"])
@pytest.mark.parametrize("edit", EDITS)
def test_a_guided_cut_gives_the_chunks_a_cut_from_scratch_gives(edit: str, use_numpy: bool) -> None:
    """Chunker.guided (last time's chunks found by their hash) and chunks() (the gear hash over
    everything) agree chunk for chunk, with each chunk's SHA-256, whatever happened to the file."""
    # Without numpy, smaller chunks and file: as many chunks, a tenth of the byte loop's time.
    c = Chunker(use_numpy=use_numpy) if use_numpy else Chunker(Params(2048, 8192, 32768), use_numpy=False)
    old = data(6 << 20 if use_numpy else 1_600_000, 3)
    previous = listed(c, old)
    new = _edits(old)[edit]
    guided = [(bytes(x), sha) for x, sha in c.guided(Reads(new), len(new), previous)]
    assert [x for x, _ in guided] == [bytes(x) for x in c.chunks(io.BytesIO(new))]
    assert all(hashlib.sha256(x).hexdigest() == sha for x, sha in guided)


@needs_numpy
@pytest.mark.parametrize(("edit", "at_most"), [("appended", 4 << 20), ("pages rewritten", 3 << 20),
                                               ("bytes inserted", 1 << 20), ("unchanged", 1 << 20)])
def test_a_guided_cut_hashes_only_around_what_changed(edit: str, at_most: int, gear_hashed: list[int]) -> None:
    """Where last time's chunks are still there, the gear hash does not run over them: a grown
    log or a database changed in place costs a SHA-256 pass, not the gear hash's too."""
    c = Chunker()
    old = data(16 << 20, 4)
    previous = listed(c, old)
    new = _edits(old)[edit]
    gear_hashed.clear()
    assert b"".join(bytes(x) for x, _ in c.guided(Reads(new), len(new), previous)) == new
    assert sum(gear_hashed) <= at_most, (edit, sum(gear_hashed))


@pytest.mark.parametrize("use_numpy", [pytest.param(True, marks=needs_numpy), False], ids=["numpy", "python"])
@pytest.mark.parametrize("keeps", [0, 100_000, 700_000, 1_000_000])
def test_a_guided_cut_of_a_file_that_shrinks_while_read_ends_where_it_ends(use_numpy: bool, keeps: int) -> None:
    """`size` is what stat said; the file then shrank to `keeps` bytes (reads come back short):
    the cut gives what is there and stops, whether it was taking old chunks or hashing."""
    c = Chunker(Params(2048, 8192, 32768), use_numpy=use_numpy)
    old = data(1_000_000, 3)
    previous = listed(c, old)
    changed = old[:400_000] + data(600_000, 6)  # old chunks up to 400 kB, new bytes after
    now = changed[:keeps]
    got = [bytes(x) for x, _ in c.guided(Reads(now), len(changed), previous)]
    assert b"".join(got) == now
    assert got == [bytes(x) for x in c.chunks(io.BytesIO(now))]
