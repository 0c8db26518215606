"""Prune, check and hostile manifests: the data-safety promises of the files job."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import AGENT
from support.contentkeys import content_keys, piece_at, runner_for
from support.treeutil import capture

from backup_agent import config
from backup_agent.errors import IntegrityError, JobFailed
from backup_agent.jobs import files
from backup_agent.jobs.files import FilesJob
from backup_agent.retention import apply
from backup_agent.storage import reader
from backup_agent.storage.s3_boto import BotoStore
from backup_agent.storage.store import Unreachable


def in_process(agent, name: str, clock=None) -> FilesJob:
    cfg = config.load(str(agent.path))
    store = BotoStore(cfg.storage)
    return FilesJob(cfg, cfg.job(name), clock=clock or (lambda: datetime.now(UTC)), store=store)


def test_unchanged_rerun_makes_no_list_call(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_text(str(i) * 100)
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    job = in_process(agent, "data")
    calls: list[str] = []
    job.store.client.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
    result = job.run()
    assert result.bytes_uploaded == 0
    assert not [c for c in calls if c.startswith("List")], calls
    assert "PutObject" in calls or "CreateMultipartUpload" in calls  # only the manifest


def test_prune_over_a_simulated_year_keeps_what_retention_says(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    policy = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6}
    agent.job("data", type="files", paths=[str(src)], retention=policy)
    now = [datetime(2026, 1, 1, 2, 0, tzinfo=UTC)]
    history: dict[str, bytes] = {}
    for day in range(0, 240, 3):
        (src / "state.txt").write_bytes(f"day {day}\n".encode() * (day + 1))
        now[0] = datetime(2026, 1, 1, 2, 0, tzinfo=UTC) + timedelta(days=day)
        job = in_process(agent, "data", clock=lambda: now[0])
        history[job.run().snapshot] = (src / "state.txt").read_bytes()  # type: ignore[index]
    expected = apply([(s.id, s.time) for s in in_process(agent, "data").snapshots()], policy)
    out = agent.json("prune", "data")
    assert sorted(out["forget"]) == sorted(expected.forget)
    assert out["objects_deleted"] > 0
    left = [s["id"] for s in agent.json("snapshots", "data")]
    assert left == expected.keep
    assert agent.run("check", "data", "--read-data").returncode == 0
    for sid in left[:3] + left[-2:]:  # the kept snapshots still restore what they held
        target = tmp_path / f"r-{sid}"
        assert agent.run("restore", "data", "--snapshot", sid, "--target", str(target)).returncode == 0
        assert (target / str(src).lstrip("/") / "state.txt").read_bytes() == history[sid]


def test_prune_dry_run_deletes_nothing_and_foreign_keys_survive(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    agent.json("run", "data")
    (src / "a").write_text("b")
    import time

    time.sleep(1.1)
    agent.json("run", "data")
    agent.s3.put_object(Bucket=agent.bucket, Key="test-node/data/notes/user-file.txt", Body=b"mine")
    before = agent.object_keys()
    dry = agent.json("prune", "data", "--dry-run")
    assert len(dry["forget"]) == 1 and agent.object_keys() == before
    out = agent.json("prune", "data")
    assert out["foreign_keys"] == 1
    assert "test-node/data/notes/user-file.txt" in agent.object_keys()
    assert len(agent.json("snapshots", "data")) == 1


def test_check_finds_missing_and_corrupt_data(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("important\n" * 100)
    (src / "big.bin").write_bytes(os.urandom(9 << 20))
    agent.job("data", type="files", paths=[str(src)])
    sid = agent.json("run", "data")["snapshot"]
    assert agent.run("check", "data", "--read-data").returncode == 0
    pack, offset, stored = piece_at(runner_for(agent.path, "data"), str(src / "small.txt"))
    body = bytearray(agent.s3.get_object(Bucket=agent.bucket, Key=pack)["Body"].read())
    body[offset + stored // 2] ^= 0xFF  # same size, different bytes: only --read-data can tell
    agent.s3.put_object(Bucket=agent.bucket, Key=pack, Body=bytes(body))
    assert agent.run("check", "data").returncode == 0
    proc = agent.run("check", "data", "--read-data", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert any(sid in e and "small.txt" in e for e in report["errors"])
    for big in content_keys(agent.path, "data", str(src / "big.bin")):  # chunks, in one pack or more
        agent.s3.delete_object(Bucket=agent.bucket, Key=big)
    proc = agent.run("check", "data")
    assert proc.returncode == 1 and "big.bin" in proc.stderr and "missing" in proc.stderr
    # a restore of corrupt content fails loudly instead of writing wrong bytes
    target = tmp_path / "r"
    proc = agent.run("restore", "data", "--target", str(target), "--path", str(src / "small.txt"))
    assert proc.returncode == 1
    assert not (target / str(src).lstrip("/") / "small.txt").exists()


def _put_manifest(agent, sid: str, entries: list[dict]) -> None:
    lines = [{"format": "backup-agent-manifest", "version": 1, "snapshot": sid, "job": "data"}, *entries,
             {"end": True, "entries": len(entries), "summary": {}}]
    body = gzip.compress(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
    agent.s3.put_object(Bucket=agent.bucket, Key=f"test-node/data/snapshots/{sid}.json.gz", Body=body)


def test_hostile_manifest_never_writes_outside_target(agent, tmp_path: Path) -> None:
    agent.job("data", type="files", paths=[str(tmp_path)])
    agent.s3.put_object(Bucket=agent.bucket, Key="test-node/data/packs/aa/evil", Body=b"pwned")
    sha = "a" * 64
    escape = {"path": "/../../escaped.txt", "type": "file", "size": 5, "sha256": sha,
              "object": "packs/aa/evil", "offset": 0, "mode": 420, "uid": 0, "gid": 0, "mtime_ns": 0}
    _put_manifest(agent, "20260101T000000Z-aaaaaa", [escape])
    target = tmp_path / "deep" / "target"
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 1 and "not normalised" in proc.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()
    # a symlink in the snapshot cannot redirect a later file outside the target
    outside = tmp_path / "outside"
    outside.mkdir()
    link = {"path": "/d", "type": "symlink", "target": str(outside), "mode": 511, "uid": 0, "gid": 0,
            "mtime_ns": 0}
    through = {**escape, "path": "/d/file.txt"}
    _put_manifest(agent, "20260102T000000Z-bbbbbb", [link, through])
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 1
    assert list(outside.iterdir()) == []
    # truncated manifests are refused
    good = gzip.compress(b'{"format":"backup-agent-manifest","version":1}\n')
    agent.s3.put_object(Bucket=agent.bucket, Key="test-node/data/snapshots/20260103T000000Z-cccccc.json.gz",
                        Body=good)
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 1 and "truncated" in proc.stderr


def test_restore_and_check_read_the_manifest_a_window_at_a_time(agent, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore and check never hold a whole snapshot's entries; with windows of 4 entries, pieces
    of one pack, shared content and directory metadata span many windows and must still come back."""
    src = tmp_path / "src"
    for d in range(6):
        sub = src / f"dir{d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(7):
            (sub / f"f{i}.txt").write_text(f"{d}/{i}\n" * (i + 1))
        (sub / "same.txt").write_text("identical in every directory\n")
        (sub / "empty").write_bytes(b"")
        (sub / "link").symlink_to("f0.txt")
        sub.chmod(0o750)
        os.utime(sub, ns=(1_600_000_000_000_000_000 + d, 1_600_000_000_000_000_000 + d))
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    want = capture(src)
    monkeypatch.setattr(reader, "WINDOW", 4)
    monkeypatch.setattr(files, "HOLD_ENTRIES", 10)  # the manifest is read again for each pass
    job = in_process(agent, "data")
    target = tmp_path / "r"
    out = job.restore(snapshot=None, at=None, target=str(target), paths=[])
    assert out["files"] == 6 * 9 and out["symlinks"] == 6
    assert capture(target / str(src).lstrip("/")) == want
    assert job.check(read_data=True)["status"] == "ok"
    # a corrupt pack is reported for every file it holds, whichever window the file fell in
    pack = next(k for k in agent.object_keys() if "/packs/" in k)
    body = agent.s3.get_object(Bucket=agent.bucket, Key=pack)["Body"].read()
    agent.s3.put_object(Bucket=agent.bucket, Key=pack, Body=bytes(b ^ 0xFF for b in body))
    with pytest.raises(IntegrityError) as failed:
        in_process(agent, "data").check(read_data=True)
    bad = {e.split(": ")[1] for e in failed.value.details["errors"]}
    assert {p for p in bad if not p.endswith("same.txt")} == {str(p) for p in src.rglob("f*.txt")}
    assert any(p.endswith("same.txt") for p in bad)


def test_a_bad_entry_at_the_end_of_a_manifest_means_nothing_is_written(agent, tmp_path: Path) -> None:
    """The whole manifest is read and checked before the first file is written."""
    agent.job("data", type="files", paths=[str(tmp_path)])
    agent.s3.put_object(Bucket=agent.bucket, Key="test-node/data/packs/aa/pack", Body=b"hello")
    sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256(b"hello")
    ok = [{"path": "/d", "type": "dir", "mode": 493, "uid": 0, "gid": 0, "mtime_ns": 0},
          {"path": "/d/hello.txt", "type": "file", "size": 5, "sha256": sha, "object": "packs/aa/pack",
           "offset": 0, "mode": 420, "uid": 0, "gid": 0, "mtime_ns": 0}]
    _put_manifest(agent, "20260101T000000Z-aaaaaa", ok)
    target = tmp_path / "good"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    assert (target / "d" / "hello.txt").read_bytes() == b"hello"
    _put_manifest(agent, "20260102T000000Z-bbbbbb", [*ok, {"path": "/d/x", "type": "device"}])
    target = tmp_path / "bad"
    proc = agent.run("restore", "data", "--target", str(target))
    assert proc.returncode == 1 and "unknown type 'device'" in proc.stderr
    assert not target.exists() or list(target.iterdir()) == []


def test_thousands_of_identical_files_restore_under_a_small_descriptor_limit(agent, tmp_path: Path) -> None:
    """Identical files (LICENSE files, empty __init__.py's cousins) share one stored piece; restoring
    them must not hold a descriptor per file (a node's default limit is 1024)."""
    src = tmp_path / "src"
    for d in range(10):
        sub = src / f"pkg{d}"
        sub.mkdir(parents=True)
        for i in range(150):
            (sub / f"LICENSE{i}").write_text("MIT License\n")
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 200 more than this process has open already (earlier in-process tests on this worker leave
    # stores' connections behind): far below one descriptor per file.
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 200, hard))
    try:
        out = in_process(agent, "data").restore(snapshot=None, at=None, target=str(tmp_path / "r"), paths=[])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert out["files"] == 1500
    assert capture(tmp_path / "r" / str(src).lstrip("/")) == capture(src)


def test_prune_from_another_machine_leaves_a_running_backup_its_data(agent, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's lock lives in its own state_dir; a prune from another machine (same bucket and
    prefix, its own state_dir) runs while this node's backup has stored data that no manifest
    references yet. That data is newer than every complete snapshot: prune must leave it."""
    src = tmp_path / "src"
    src.mkdir()
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    for step in range(2):
        (src / "doc.txt").write_text(f"version {step}\n" * 100)
        assert agent.run("run", "data").returncode == 0
        time.sleep(1.1)  # snapshot ids and S3 times have second resolution
    (src / "doc.txt").write_text("version 2, stored while the other machine prunes\n" * 100)
    pruned: list[dict] = []
    upload = files.PackUploader._upload

    def upload_then_prune_elsewhere(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        done = upload(self, *args, **kwargs)
        pruned.append(_prune_from_another_machine(agent, tmp_path))
        return done

    monkeypatch.setattr(files.PackUploader, "_upload", upload_then_prune_elsewhere)
    result = in_process(agent, "data").run()
    assert result.status == "success" and len(pruned) == 1
    monkeypatch.undo()
    proc = agent.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr  # the new snapshot's pack is still there
    target = tmp_path / "r"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    assert capture(target / str(src).lstrip("/")) == capture(src)
    assert len(pruned[0]["forget"]) == 1 and pruned[0]["objects_newer_than_snapshots"] == 1
    assert pruned[0]["objects_deleted"] == 1  # the forgotten snapshot's own pack


def test_content_of_a_failed_run_is_not_reused_once_a_later_snapshot_left_it_out(
        agent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed run's uploads are reused by the next run, but once a complete snapshot does not
    reference them any prune may delete them (one from another machine cannot tell this node's
    cache): content that comes back later must be uploaded again, not pointed at."""
    src = tmp_path / "src"
    src.mkdir()
    doc = src / "doc.txt"
    agent.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    doc.write_text("first\n" * 100)
    assert agent.run("run", "data").returncode == 0
    doc.write_text("content of the failed run\n" * 100)

    def manifest_refused(*_a, **_k):  # type: ignore[no-untyped-def]
        raise Unreachable("PutObject: InternalError: try again", code="InternalError")

    monkeypatch.setattr(files.FilesJob, "upload_manifest", manifest_refused)
    with pytest.raises(JobFailed):
        in_process(agent, "data").run()  # its pack is stored; no snapshot references it
    monkeypatch.undo()
    time.sleep(1.1)
    doc.write_text("content of the next snapshot\n" * 100)
    assert agent.run("run", "data").returncode == 0
    # the first snapshot's pack and the failed run's
    assert _prune_from_another_machine(agent, tmp_path)["objects_deleted"] == 2
    doc.write_text("content of the failed run\n" * 100)  # the content comes back
    out = agent.json("run", "data")
    assert out["bytes_uploaded"] > 0  # stored again (compressed: fewer bytes than the file's)
    proc = agent.run("check", "data", "--read-data")
    assert proc.returncode == 0, proc.stderr


def _prune_from_another_machine(agent, tmp_path: Path) -> dict:
    """`prune data` with the same bucket and prefix but its own state_dir (and so its own lock)."""
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text(yaml.safe_dump({**agent.data, "state_dir": str(tmp_path / "other-state")}))
    proc = subprocess.run([AGENT, "-c", str(elsewhere), "prune", "data", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
