"""Job logic against the in-memory store: no server, milliseconds per test. What a user notices
(a restore equal to the source, a prune that says which object it could not delete, an archived
dump that needs a restore request first, damage that `check` names) holds on every store."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.contentkeys import piece_at
from support.treeutil import capture

from backup_agent import config
from backup_agent.errors import IntegrityError, NotReady
from backup_agent.jobs.command import CommandJob
from backup_agent.jobs.files import FilesJob
from backup_agent.storage import cold
from backup_agent.storage.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def files_job(tmp_path: Path, store: MemoryStore, clock: Clock, **spec: object) -> FilesJob:
    src = tmp_path / "src"
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"), "storage": {"bucket": "mem", "prefix": "n"},
                            "jobs": {"data": {"type": "files", "paths": [str(src)], **spec}}})
    return FilesJob(cfg, cfg.job("data"), clock=clock, store=store)


def make_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"small{i}").write_text(f"content {i}\n" * i)
    (src / "big").write_bytes(bytes(range(256)) * 40_000)  # ~10 MB: an object of its own
    return src


def test_files_backup_and_restore_round_trip(tmp_path: Path) -> None:
    store, clock = MemoryStore(), Clock()
    src = make_src(tmp_path)
    job = files_job(tmp_path, store, clock)
    result = job.run()
    assert result.status == "success" and result.files_new == 21
    target = tmp_path / "target"
    job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert capture(target / str(src).lstrip("/")) == capture(src)
    assert job.check(read_data=True)["status"] == "ok"


def test_check_names_a_damaged_object(tmp_path: Path) -> None:
    store, clock = MemoryStore(), Clock()
    make_src(tmp_path)
    job = files_job(tmp_path, store, clock)
    job.run()
    key, offset, stored = piece_at(job, f"{tmp_path}/src/big", 2)  # a big file is chunks in packs
    data = bytearray(store.objects[key].data)
    data[offset + stored // 2] ^= 0xFF
    store.objects[key].data = bytes(data)
    with pytest.raises(IntegrityError, match=f"{tmp_path}/src/big: ") as err:
        job.check(read_data=True)
    assert err.value.details["damaged_objects"] == [key.removeprefix(job.root)]


def test_prune_skips_and_counts_what_object_lock_keeps(tmp_path: Path) -> None:
    store, clock = MemoryStore(clock=Clock()), Clock()
    store.clock = clock
    src = make_src(tmp_path)
    job = files_job(tmp_path, store, clock, retention={"keep_last": 1})
    first = job.run().snapshot
    clock.tick(hours=1)
    (src / "big").write_bytes(b"new content" * 1000)
    job.run()
    old_manifest = next(k for k in store.objects if first and first in k)
    store.locked.add(old_manifest)
    out = job.prune(dry_run=False)
    # The snapshot stays whole (its manifest and the data it references) until a later prune.
    assert out["locked_skipped"] == 1 and out["locked_snapshots"] == [first], out
    assert old_manifest in store.objects and "Object Lock" in out["note"]
    assert job.snapshots()[0].id == first
    store.locked.clear()  # the lock's date has passed
    out = job.prune(dry_run=False)
    assert out["locked_skipped"] == 0 and old_manifest not in store.objects


def test_archived_dump_is_restored_after_a_restore_request(tmp_path: Path) -> None:
    store, clock = MemoryStore(), Clock()
    cfg = config.from_dict({"state_dir": str(tmp_path / "state"), "storage": {"bucket": "mem", "prefix": "n"},
                            "jobs": {"db": {"type": "command", "command": ["printf", "dumped\\n"],
                                            "compression": "none"}}})
    job = CommandJob(cfg, cfg.job("db"), clock=clock, store=store)
    job.run()
    dump = next(k for k in store.objects if "/dumps/" in k)
    assert hashlib.sha256(store.data(dump)).hexdigest()
    store.objects[dump].storage_class = "GLACIER"  # a lifecycle rule moved it
    out = tmp_path / "out.dump"
    with pytest.raises(NotReady, match="waiting for archived data"):
        job.restore(snapshot=None, at=None, target=str(out), paths=[])
    assert ("request_restore", dump) in store.calls
    with pytest.raises(NotReady):  # asked already: not asked again, still waiting
        job.restore(snapshot=None, at=None, target=str(out), paths=[])
    assert store.calls.count(("request_restore", dump)) == 1
    store.finish_restore(dump)
    job.restore(snapshot=None, at=None, target=str(out), paths=[])
    assert out.read_bytes() == b"dumped\n"
    assert cold.is_archived(store.stat(dump).storage_class)
