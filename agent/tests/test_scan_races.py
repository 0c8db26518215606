"""Small files are read on the encoder threads, some time after the scan saw them (jobs/files.py,
SmallBatches): what a file does in between must still give an exact snapshot or a loud failure.
The walk is wrapped so each change happens after the scan's stat and before the file's read."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_agent import config
from backup_agent.jobs import files
from backup_agent.jobs.files import FilesJob
from backup_agent.jobs.scan import Found
from backup_agent.storage.memory import MemoryStore

MIB = 1 << 20
# Below this size a file is read on the scan thread, at once: these tests need the batched path.
BIG_ENOUGH = files.READ_INLINE


def run_with(tmp_path: Path, src: Path, after_stat: dict[str, Callable[[], None]],
             monkeypatch: pytest.MonkeyPatch, store: MemoryStore | None = None) -> tuple[FilesJob, Any]:
    """One backup of `src`; `after_stat[name]` runs once the scan has stat'ed that file."""
    real_walk = files.walk

    def walk(*args: Any) -> Iterator[Found]:
        for found in real_walk(*args):
            yield found
            change = after_stat.pop(os.path.basename(found.path), None)
            if change is not None:
                change()

    monkeypatch.setattr(files, "walk", walk)
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"),
                            "storage": {"bucket": "mem", "prefix": "n", "large_file_mb": 1},
                            "jobs": {"data": {"type": "files", "paths": [str(src)]}}})
    job = FilesJob(cfg, cfg.job("data"), clock=lambda: datetime.now(UTC), store=store or MemoryStore())
    result = job.run()
    assert not after_stat, "every change ran"
    return job, result


def test_a_file_that_grows_past_the_large_threshold_before_its_read_is_stored_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    first, small, last = (f"{name}\n".encode() * BIG_ENOUGH for name in ("first", "small at scan time", "last"))
    (src / "a-first.txt").write_bytes(first)
    log = src / "b-log.txt"
    log.write_bytes(small)
    (src / "c-last.txt").write_bytes(last)
    grown = small + os.urandom(3 * MIB)
    job, result = run_with(tmp_path, src, {"b-log.txt": lambda: log.write_bytes(grown)}, monkeypatch)
    assert result.status == "success" and result.files_new == 3, result
    target = tmp_path / "t"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    back = target / str(src).lstrip("/")
    assert (back / "b-log.txt").read_bytes() == grown
    assert (back / "a-first.txt").read_bytes() == first
    assert (back / "c-last.txt").read_bytes() == last


def test_a_file_deleted_or_replaced_by_a_link_before_its_read_is_not_in_the_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gone: not counted, no entry. Replaced by a symlink (an attacker pointing the read at a
    secret): the read refuses to follow it, the file is listed as failed, the secret not stored."""
    src = tmp_path / "src"
    src.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's secret " * 100)
    for name in ("gone.txt", "swapped.txt", "kept.txt"):
        (src / name).write_bytes(name.encode() * BIG_ENOUGH)

    def swap() -> None:
        (src / "swapped.txt").unlink()
        (src / "swapped.txt").symlink_to(secret)

    store = MemoryStore()
    job, result = run_with(tmp_path, src, {"gone.txt": lambda: (src / "gone.txt").unlink(), "swapped.txt": swap},
                           monkeypatch, store)
    assert result.status == "partial" and result.files_new == 1, result
    assert [f["path"] for f in result.failed] == [str(src / "swapped.txt")]
    assert not any(b"root's secret" in o.data for o in store.objects.values())
    target = tmp_path / "t"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    back = target / str(src).lstrip("/")
    assert sorted(p.name for p in back.iterdir()) == ["kept.txt"]
    assert (back / "kept.txt").read_bytes() == b"kept.txt" * BIG_ENOUGH


def test_many_small_files_keep_their_order_and_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More files than a batch, some read at once (below READ_INLINE) between batched ones, and
    entries waiting behind them: the manifest lists the tree in scan order, every file with its
    own bytes."""
    src = tmp_path / "src"
    for d in range(7):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(50):
            (src / f"d{d}" / f"f{i:03d}").write_bytes(f"{d}/{i}\n".encode() * (i * 20 + 1))
    job, result = run_with(tmp_path, src, {}, monkeypatch)
    assert result.files_new == 350
    with job.manifest_passes(result.snapshot) as again:
        paths = [e.path for e in again()[1]]
    assert len(paths) == 358 and paths == sorted(paths, key=lambda p: p.split("/"))
    target = tmp_path / "t"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    back = target / str(src).lstrip("/")
    for d in range(7):
        for i in range(50):
            assert (back / f"d{d}" / f"f{i:03d}").read_bytes() == f"{d}/{i}\n".encode() * (i * 20 + 1)


def test_each_new_file_has_its_attributes_listed_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hard-link and sparse checks list a file's attributes on the scan thread; a small file
    that then takes the batched read must not be asked again on the encoder thread."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("plain.txt", "linked.txt", "tiny.txt"):
        (src / name).write_bytes(name.encode() * (1 if name == "tiny.txt" else BIG_ENOUGH))
        os.setxattr(src / name, "user.name", name.encode())
    os.link(src / "linked.txt", tmp_path / "outside-link")  # nlink 2: the first path of a hard link
    asked: list[str] = []
    real = files.read_xattrs

    def counting(path: str, follow: bool) -> dict[str, bytes]:
        asked.append(os.path.basename(path))
        return real(path, follow)

    monkeypatch.setattr(files, "read_xattrs", counting)
    job, result = run_with(tmp_path, src, {}, monkeypatch)
    assert result.files_new == 3, result
    assert sorted(a for a in asked if a.endswith(".txt")) == ["linked.txt", "plain.txt", "tiny.txt"]
    target = tmp_path / "t"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    back = target / str(src).lstrip("/")
    for name in ("plain.txt", "linked.txt", "tiny.txt"):
        assert os.getxattr(back / name, "user.name") == name.encode()
