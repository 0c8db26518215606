"""Damage heals, snapshots have one order, and a foreign object in the bucket is no one's problem
but its own: against the real SeaweedFS."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from conftest import AGENT
from hypothesis import given, settings
from hypothesis import strategies as st
from support.contentkeys import content_keys
from support.treeutil import capture

from backup_agent import config
from backup_agent.jobs.files import FilesJob
from backup_agent.state import FileCache
from backup_agent.storage import layout
from backup_agent.storage.s3_boto import BotoStore

ROOT = "test-node/data/"


def in_process(agent, clock=None) -> FilesJob:  # type: ignore[no-untyped-def]
    cfg = config.load(str(agent.path))
    return FilesJob(cfg, cfg.job("data"), clock=clock or (lambda: datetime.now(UTC)), store=BotoStore(cfg.storage))


def make_tree(src: Path) -> None:
    src.mkdir()
    for i in range(20):
        (src / f"small-{i}.txt").write_text(f"small file {i}\n" * 50)
    (src / "big.bin").write_bytes(os.urandom((1 << 20) + 123))  # over large_file_mb: chunks


def damage(agent, how: str, src: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """Damage the bucket; returns the damaged keys."""
    keys = agent.object_keys(ROOT)
    if how == "delete_pack":
        key = next(k for k in keys if "/packs/" in k)
        agent.s3.delete_object(Bucket=agent.bucket, Key=key)
    elif how == "corrupt_pack":
        key = next(k for k in keys if "/packs/" in k)
        body = bytearray(agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read())
        body[7] ^= 0xFF  # same size: only reading the data tells
        agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=bytes(body))
    else:  # the big file's chunks: whatever pack(s) they went to
        big = content_keys(agent.path, "data", str(src / "big.bin"))
        for key in big:
            agent.s3.delete_object(Bucket=agent.bucket, Key=key)
        return big
    return [key]


@pytest.mark.parametrize("state", ["kept", "wiped"])
@pytest.mark.parametrize("how", ["delete_pack", "corrupt_pack", "delete_large"])
def test_damage_found_by_check_is_stored_again_by_the_next_run(agent, tmp_path: Path, how: str, state: str) -> None:
    src = tmp_path / "src"
    make_tree(src)
    agent.write(storage={**agent.data["storage"], "large_file_mb": 1})
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    first = agent.json("run", "data")
    damaged = damage(agent, how, src)
    state_dir = Path(agent.data["state_dir"])
    if state == "wiped" and how != "corrupt_pack":
        shutil.rmtree(state_dir)  # no check at all: the run learns from the bucket what is really there
    else:
        if state == "wiped":
            shutil.rmtree(state_dir)  # the cache is gone; check records what it finds in the new one
        proc = agent.run("check", "data", "--read-data", "--json")
        assert proc.returncode == 1, proc.stderr
        report = json.loads(proc.stdout)
        assert report["damaged_objects"] == sorted(k[len(ROOT) :] for k in damaged)
    time.sleep(1.1)  # prune below compares the store's times, which have second resolution
    out = agent.json("run", "data")
    assert out["status"] == "success"
    assert out["bytes_uploaded"] > 0
    assert out["snapshot"] != first["snapshot"]
    target = tmp_path / "r"
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)
    assert agent.json("prune", "data")["forget"] == [first["snapshot"]]
    proc = agent.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr
    # healed: the next run is an ordinary incremental one again
    again = agent.json("run", "data")
    assert again["bytes_uploaded"] == 0 and again["files_unchanged"] == 21


def test_content_pruned_from_an_older_snapshot_elsewhere_is_uploaded_again(agent, tmp_path: Path) -> None:
    """The node's cache knew content from an older snapshot; a prune from another machine deleted
    that snapshot and its pack. When the content comes back it must be stored again."""
    src = tmp_path / "src"
    src.mkdir()
    doc = src / "doc.txt"
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    doc.write_text("version A\n" * 100)
    assert agent.run("run", "data").returncode == 0
    time.sleep(1.1)
    doc.write_text("version B\n" * 100)
    assert agent.run("run", "data").returncode == 0
    time.sleep(1.1)
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**agent.data, "state_dir": str(tmp_path / "other-state")}))
    proc = subprocess.run([AGENT, "-c", str(elsewhere), "prune", "data", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["objects_deleted"] == 1, proc.stderr
    doc.write_text("version A\n" * 100)  # reverted
    out = agent.json("run", "data")
    assert out["bytes_uploaded"] > 0  # stored again (compressed: fewer bytes than the file's)
    proc = agent.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr


def test_two_runs_in_the_same_instant_keep_their_order(agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped clock (and a random suffix that sorts the wrong way): the second run is still the
    latest for restore, --at and keep_last."""
    src = tmp_path / "src"
    src.mkdir()
    doc = src / "doc.txt"
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    frozen = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)
    suffixes = iter(["ffffff", "000000"])
    real = layout.secrets

    class Suffixes:  # snapshot ids' random suffixes, in the order that sorted them wrongly
        @staticmethod
        def token_hex(n: int) -> str:
            return next(suffixes) if n == 3 else real.token_hex(n)

    monkeypatch.setattr(layout, "secrets", Suffixes)
    made = []
    for text in ("first\n", "second\n"):
        doc.write_text(text)
        made.append(in_process(agent, clock=lambda: frozen).run().snapshot)
    listed = [s["id"] for s in agent.json("snapshots", "data")]
    assert listed == made
    for how in ([], ["--at", "2026-11-27T02:00:00Z"]):
        target = tmp_path / f"r{len(how)}"
        proc = agent.run("restore", "data", *how, "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert (target / str(doc).lstrip("/")).read_text() == "second\n"
    out = agent.json("prune", "data")
    assert out["forget"] == [made[0]] and [k["id"] for k in out["keep"]] == [made[1]]


def test_snapshot_ids_of_earlier_versions_sort_with_new_ones() -> None:
    old_same_second = "20261127T020000Z-ffffff"
    new = layout.new_snapshot_id(datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC), after=old_same_second)
    older = "20261127T015959Z-000000"
    assert sorted([new, old_same_second, older], key=layout.snapshot_order) == [older, old_same_second, new]
    assert layout.snapshot_time(new) > layout.snapshot_time(old_same_second)
    from backup_agent.retention import apply

    pairs = [(s, layout.snapshot_time(s)) for s in (old_same_second, new)]
    assert apply(pairs, {"keep_last": 1}).keep == [new]


def _put(agent, rel: str, body: bytes) -> None:  # type: ignore[no-untyped-def]
    agent.s3.put_object(Bucket=agent.bucket, Key=ROOT + rel, Body=body)


def test_stray_objects_under_snapshots_are_reported_and_skipped(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 2})
    sid = agent.json("run", "data")["snapshot"]
    strays = ["snapshots/20261399T256199Z-aaaaaa.json.gz", "snapshots/notes.txt", "snapshots/x/y.json.gz",
              "snapshots/a&b <c>+%20ü.json.gz"]
    for rel in strays:
        _put(agent, rel, b"not a manifest")
    listed = agent.run("snapshots", "data", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == [sid]
    assert "snapshots/20261399T256199Z-aaaaaa.json.gz is not a snapshot manifest" in listed.stderr
    proc = agent.run("restore", "data", "--target", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    proc = agent.run("check", "data", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["foreign_snapshot_keys"]) == sorted(strays)
    assert agent.json("run", "data")["status"] == "success"
    out = agent.json("prune", "data")
    assert out["foreign_keys"] == 4
    assert all(ROOT + rel in agent.object_keys(ROOT) for rel in strays)  # never deleted


def test_an_unreadable_manifest_stops_no_verb(agent, tmp_path: Path) -> None:
    """A manifest that is not one (a valid name, garbage inside): check reports it; run, restore
    of the others and prune go on; prune deletes no data it cannot prove unreferenced."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 5})
    _put(agent, "snapshots/20200101T000000Z-abcdef.json.gz", gzip.compress(b"garbage\n"))
    _put(agent, "packs/00/leftover", b"unreferenced")
    out = agent.json("run", "data")  # seeds from the newest snapshot: the garbage one
    assert out["status"] == "success" and out["bytes_uploaded"] > 0
    proc = agent.run("check", "data")
    assert proc.returncode == 1 and "20200101T000000Z-abcdef" in proc.stderr
    proc = agent.run("restore", "data", "--target", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    pruned = agent.json("prune", "data")
    assert pruned["objects_deleted"] == 0 and pruned["unreadable_manifests"]
    assert ROOT + "packs/00/leftover" in agent.object_keys(ROOT)


def test_a_run_that_fails_after_its_manifest_is_stored_says_the_snapshot_exists(
        agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent.job("data", type="files", paths=[str(src)])

    def disk_full(*_a, **_k):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(FileCache, "commit_files", disk_full)
    result = in_process(agent).run()
    monkeypatch.undo()
    assert result.status == "success" and result.snapshot
    assert any("is complete" in w for w in result.warnings)
    assert [s["id"] for s in agent.json("snapshots", "data")] == [result.snapshot]
    again = agent.json("run", "data")  # the cache was reset: a rescan, nothing uploaded twice
    assert again["status"] == "success" and again["bytes_uploaded"] == 0
    assert agent.run("check", "data", "--read-data").returncode == 0


def test_a_file_from_before_1970_round_trips(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    old = src / "old.txt"
    old.write_text("punched cards\n")
    os.utime(old, ns=(-86_400 * 10**9, -86_400 * 10**9))
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    target = tmp_path / "r"
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_a_lost_answer_to_the_manifest_upload_still_reports_the_snapshot(
        agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backup_agent.storage.store import Unreachable

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent.job("data", type="files", paths=[str(src)])
    stored = FilesJob.upload_manifest

    def answer_lost(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        stored(self, *args, **kwargs)
        raise Unreachable("PutObject: InternalError: connection reset", code="InternalError")

    monkeypatch.setattr(FilesJob, "upload_manifest", answer_lost)
    result = in_process(agent).run()
    monkeypatch.undo()
    assert result.status == "success" and [s["id"] for s in agent.json("snapshots", "data")] == [result.snapshot]
    assert any("is stored and complete" in w for w in result.warnings)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                             timezones=st.just(UTC)), min_size=1, max_size=12),
       st.sampled_from([None, "20261127T020000Z-ffffff"]))
def test_ids_follow_the_order_of_runs_whatever_the_clock_says(clocks: list[datetime], before: str | None) -> None:
    """Each run makes its id after the previous one (an id of an earlier version included): the
    listing, `latest` and keep_last follow the order of the runs, not of the clock readings."""
    from backup_agent.jobs.base import Snapshot, pick_snapshot
    from backup_agent.retention import apply

    made = [before] if before else []
    for now in clocks:
        made.append(layout.new_snapshot_id(now, after=made[-1] if made else None))
    assert sorted(reversed(made), key=layout.snapshot_order) == made
    snaps = [Snapshot(s, layout.snapshot_time(s)) for s in sorted(made, key=layout.snapshot_order)]
    assert pick_snapshot(snaps, None, None, "data", "here").id == made[-1]
    assert apply([(s.id, s.time) for s in snaps], {"keep_last": 1}).keep == [made[-1]]


def test_command_job_snapshots_keep_the_order_they_were_made_in(agent, tmp_path: Path) -> None:
    """A clock set back between two dumps: the second is still the latest (restore, keep_last)."""
    from datetime import timedelta

    from backup_agent.jobs.command import CommandJob

    marker = tmp_path / "n"
    agent.job("db", type="command", command=["cat", str(marker)], retention={"keep_last": 1})
    now = datetime(2026, 11, 27, 2, 0, 0, tzinfo=UTC)
    made = []
    for text, at in (("first\n", now), ("second\n", now - timedelta(hours=1))):
        marker.write_text(text)
        cfg = config.load(str(agent.path))
        made.append(CommandJob(cfg, cfg.job("db"), clock=lambda at=at: at, store=BotoStore(cfg.storage)).run().snapshot)
    assert [s["id"] for s in agent.json("snapshots", "db")] == made
    proc = agent.run("restore", "db", "--target", "-")
    assert proc.returncode == 0 and proc.stdout == "second\n", proc.stderr
    out = agent.json("prune", "db")
    assert out["forget"] == [made[0]]
