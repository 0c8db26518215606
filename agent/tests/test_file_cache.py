"""The local cache's baseline (state.FileCache): after a snapshot is committed, change detection
sees exactly that snapshot's files, whether the baseline was kept in memory (only the
differences written) or staged in a table (trees above PRELOAD_LIMIT), and a run that never
commits leaves the previous baseline as it was."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from backup_agent import state
from backup_agent.state import FileCache


def _row(path: str, size: int, sha: str = "a" * 64) -> tuple[Any, ...]:
    return (path, size, 1_700_000_000_000_000_000 + size, 1000 + size, 1_700_000_000_000_000_001, sha, "pack/1", size,
            None, size + 5)


def _snapshot(cache: FileCache, sid: str, rows: list[tuple[Any, ...]], batch: int = 2) -> None:
    cache.begin_files()
    for path, *_ in rows:
        cache.lookup_file(path)  # as the scan does, before staging
    for i in range(0, len(rows), batch):
        cache.stage_files(rows[i : i + batch])
    cache.commit_files(sid, {r[6] for r in rows})


def _baseline(tmp_path: Path) -> dict[str, tuple[Any, ...]]:
    cache = FileCache(tmp_path, "data", "s3://b/p")
    try:
        return {r[0]: tuple(r[1:]) for r in cache.db.execute("SELECT * FROM files")}
    finally:
        cache.close()


@pytest.mark.parametrize("limit", [100_000, 3], ids=["in-memory", "outgrows-memory"])
def test_committed_baseline_is_exactly_the_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     limit: int) -> None:
    monkeypatch.setattr(state, "PRELOAD_LIMIT", limit)
    first = [_row(f"/src/f{i}", i) for i in range(8)]
    cache = FileCache(tmp_path, "data", "s3://b/p")
    _snapshot(cache, "s1", first)
    # f0 vanished, f1 changed, f2..f7 unchanged, f8 and f9 new
    second = [_row("/src/f1", 1, sha="b" * 64), *first[2:], _row("/src/f8", 8), _row("/src/f9", 9)]
    _snapshot(cache, "s2", second)
    assert cache.get_meta("last_snapshot") == "s2"
    assert cache.lookup_file("/src/f0") is None
    assert cache.lookup_file("/src/f1") == second[0][1:]
    cache.close()
    assert _baseline(tmp_path) == {r[0]: r[1:] for r in second}


def test_a_run_that_does_not_commit_leaves_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = [_row(f"/src/f{i}", i) for i in range(5)]
    cache = FileCache(tmp_path, "data", "s3://b/p")
    _snapshot(cache, "s1", first)
    cache.begin_files()
    cache.stage_files([_row("/src/f0", 0, sha="c" * 64)])  # the run then fails: no commit
    cache.close()
    assert _baseline(tmp_path) == {r[0]: r[1:] for r in first}


@pytest.mark.parametrize("limit", [100_000, 1], ids=["in-memory", "outgrows-memory"])
def test_names_that_are_not_utf8_are_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """A name with bytes that are not UTF-8 (held as surrogate escapes) made every commit fail
    after the manifest was stored; now its file is found unchanged by the next run."""
    monkeypatch.setattr(state, "PRELOAD_LIMIT", limit)
    odd = "/srv/caf\udce9.txt"  # b"/srv/caf\xe9.txt", Latin-1
    rows = [_row(odd, 5), _row("/srv/hex:plain", 6), _row("/srv/ok", 7)]
    cache = FileCache(tmp_path, "data", "s3://b/p")
    _snapshot(cache, "s1", rows)
    assert cache.lookup_file(odd) == tuple(rows[0][1:])
    _snapshot(cache, "s2", rows[1:])  # the odd one deleted
    assert cache.lookup_file(odd) is None and cache.lookup_file("/srv/ok") == tuple(rows[2][1:])
    cache.close()


@pytest.mark.parametrize("limit", [1_000_000, 1], ids=["filtered", "above-the-filter-limit"])
def test_stored_content_is_found_whatever_the_filter_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          limit: int) -> None:
    """Content recorded before the run and during it is found (never uploaded twice); content
    never stored is not. The Bloom filter in front of the blobs table only spares queries."""
    monkeypatch.setattr(state, "BLOB_FILTER_LIMIT", limit)
    before = [(f"{i:064x}", "pack/old", i * 10, 10, 12) for i in range(1, 50)]
    cache = FileCache(tmp_path, "data", "s3://b/p")
    cache.add_blobs(before)
    cache.close()
    cache = FileCache(tmp_path, "data", "s3://b/p")
    try:
        assert cache.lookup_blob(f"{7:064x}") == ("pack/old", 70, 12)
        assert cache.lookup_blob("f" * 64) is None
        cache.add_blobs([("e" * 64, "pack/new", 0, 5, 9)])  # a pack this run uploaded
        assert cache.lookup_blob("e" * 64) == ("pack/new", 0, 9)
        assert all(cache.lookup_blob(sha) == (obj, off, stored) for sha, obj, off, _, stored in before)
    finally:
        cache.close()


def _older_cache(tmp_path: Path, rows: str) -> None:
    """A cache as agents before the `stored` column left it (format 3's fields in one JSON `ref`)."""
    FileCache(tmp_path, "data", "s3://b/p").close()
    db = sqlite3.connect(tmp_path / "cache" / "data.sqlite")
    db.executescript("""
        DROP TABLE files;
        CREATE TABLE files (path TEXT PRIMARY KEY, size INT, mtime_ns INT, ino INT, ctime_ns INT, sha256 TEXT,
            object TEXT, offset INT, ref TEXT);
        INSERT INTO meta VALUES ('last_snapshot', 's1');
    """ + rows)
    db.commit()
    db.close()


def test_a_cache_written_before_the_stored_column_keeps_its_baseline_and_blobs(tmp_path: Path) -> None:
    """An upgraded agent's first run must find its files unchanged and its content stored: the
    old one JSON `ref` per file ({"stored": n} or {"chunks": [...]}) becomes the columns."""
    _older_cache(tmp_path, """
        INSERT INTO files VALUES ('/src/small', 3, 10, 11, 12, 'aa', 'pack/1', 40, '{"stored":9}');
        INSERT INTO files VALUES ('/src/big', 9000, 20, 21, 22, 'bb', '', 0,
            '{"chunks":[["pack/2",0,77,4096,"cc"],["pack/3",5,66,4904,"dd"]]}');
        INSERT INTO files VALUES ('/src/empty', 0, 30, 31, 32, 'ee', '', 0, NULL);
        INSERT INTO blobs VALUES ('SHA', 'pack/1', 40, 3, 9);
    """.replace("SHA", "f" * 64))
    cache = FileCache(tmp_path, "data", "s3://b/p")
    try:
        assert cache.get_meta("last_snapshot") == "s1"
        assert cache.lookup_file("/src/small") == (3, 10, 11, 12, "aa", "pack/1", 40, None, 9)
        big = cache.lookup_file("/src/big")
        assert big is not None and big[7:] == ('[["pack/2",0,77,4096,"cc"],["pack/3",5,66,4904,"dd"]]', None)
        assert cache.lookup_file("/src/empty") == (0, 30, 31, 32, "ee", "", 0, None, None)
        assert cache.lookup_blob("f" * 64) == ("pack/1", 40, 9)
        cache.forget_objects({"pack/3"})  # a chunk's pack is still found in the moved list
        assert cache.lookup_file("/src/big") is None and cache.lookup_file("/src/small") is not None
    finally:
        cache.close()


def test_an_older_cache_that_cannot_be_read_is_rebuilt(tmp_path: Path) -> None:
    _older_cache(tmp_path, """
        INSERT INTO files VALUES ('/src/torn', 3, 10, 11, 12, 'aa', 'pack/1', 40, '{"stored":');
    """)
    cache = FileCache(tmp_path, "data", "s3://b/p")
    try:
        assert cache.lookup_file("/src/torn") is None and cache.get_meta("last_snapshot") is None
        _snapshot(cache, "s2", [_row("/src/new", 4)])
        assert cache.lookup_file("/src/new") == _row("/src/new", 4)[1:]
    finally:
        cache.close()
