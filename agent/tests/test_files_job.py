"""The files job against a real SeaweedFS: what a user sees from run, snapshots, restore."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.treeutil import capture

AGENT = str(Path(sys.executable).parent / "backup-agent")


def make_tree(root: Path) -> None:
    (root / "dir with spaces" / "ünïcødé").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "dir with spaces" / "ünïcødé" / "naïve café.txt").write_text("crème brûlée\n")
    (root / "line\nbreak").write_text("a newline in the name\n")
    (root / "empty").write_bytes(b"")
    (root / "small.bin").write_bytes(os.urandom(5000))
    (root / "same-content.bin").write_bytes((root / "small.bin").read_bytes())
    (root / "big.bin").write_bytes(os.urandom(20 << 20))  # above the multipart threshold
    (root / "link-to-small").symlink_to("small.bin")
    (root / "dangling").symlink_to("/nonexistent/target")
    os.link(root / "small.bin", root / "hardlink.bin")
    deep = root
    for i in range(60):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("deep\n")
    (root / "small.bin").chmod(0o640)
    os.utime(root / "empty", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def test_backup_restore_roundtrip_every_snapshot(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    agent.data["storage"]["multipart_chunk_mb"] = 8  # so big.bin goes up as a multipart upload
    agent.job("data", type="files", paths=[str(src)])
    states, ids = [], []
    for step in range(3):
        out = agent.json("run", "data")
        assert out["status"] == "success" and out["files_failed"] == 0
        ids.append(out["snapshot"])
        states.append(capture(src))
        # change the tree between snapshots: edit, add, delete
        (src / "small.bin").write_bytes(os.urandom(3000 + step))
        (src / f"new-{step}.txt").write_text(f"step {step}\n")
        if step == 0:
            (src / "dir with spaces" / "ünïcødé" / "naïve café.txt").unlink()
        time.sleep(1.1)  # snapshot ids have second resolution
    listed = agent.json("snapshots", "data")
    assert [s["id"] for s in listed] == ids
    for sid, state in zip(ids, states, strict=True):
        target = tmp_path / f"restore-{sid}"
        proc = agent.run("restore", "data", "--snapshot", sid, "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert capture(target / str(src).lstrip("/")) == state


def test_unchanged_rerun_uploads_nothing_and_changes_are_detected(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    agent.job("data", type="files", paths=[str(src)])
    first = agent.json("run", "data")
    assert first["bytes_uploaded"] >= 20 << 20
    second = agent.json("run", "data")
    assert second["bytes_uploaded"] == 0
    assert second["files_new"] == second["files_changed"] == 0
    assert second["files_unchanged"] == first["files_new"]
    (src / "small.bin").write_bytes(b"changed")
    third = agent.json("run", "data")
    # small.bin and its hard link changed; their shared new content is uploaded once (as one
    # piece: 5 bytes of header, stored as it is: too short to compress)
    assert third["files_changed"] == 2 and third["bytes_uploaded"] == len(b"changed") + 5


def test_lost_state_costs_a_rescan_not_a_reupload(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    agent.job("data", type="files", paths=[str(src)])
    agent.json("run", "data")
    shutil.rmtree(agent.data["state_dir"])
    again = agent.json("run", "data")
    assert again["bytes_uploaded"] == 0
    assert again["files_new"] > 0  # everything was re-hashed
    target = tmp_path / "r"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_last_snapshot_deleted_from_the_bucket_means_a_full_rescan(agent, tmp_path: Path) -> None:
    """Someone removed the snapshot the local cache describes, and the data with it: the next run
    must upload the content again, not point at objects that are gone."""
    src = tmp_path / "src"
    make_tree(src)
    agent.job("data", type="files", paths=[str(src)])
    first = agent.json("run", "data")
    keys = agent.object_keys()
    agent.s3.delete_objects(Bucket=agent.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    proc = agent.run("run", "data", "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert f"last snapshot {first['snapshot']} is gone from the bucket: rescanning from scratch" in proc.stderr
    assert again["bytes_uploaded"] == first["bytes_uploaded"]
    assert agent.run("check", "data", "--read-data").returncode == 0
    target = tmp_path / "r"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_restore_single_path_and_at_time(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    agent.job("data", type="files", paths=[str(src)])
    first = agent.json("run", "data")
    time.sleep(1.1)
    (src / "small.bin").write_bytes(b"second version")
    agent.json("run", "data")
    at = agent.json("snapshots", "data")[0]["time"]
    target = tmp_path / "one"
    proc = agent.run("restore", "data", "--at", at, "--target", str(target), "--path", str(src / "small.bin"))
    assert proc.returncode == 0, proc.stderr
    restored = target / str(src).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == ["small.bin"]
    assert (restored / "small.bin").read_bytes() != b"second version"
    assert first["snapshot"] in proc.stdout


def test_one_large_file_is_fetched_with_dump_not_aws_s3_cp(agent, tmp_path: Path) -> None:
    """Format 3 gives up readable keys for big files (chunked, compressed, maybe sealed): the
    documented way to fetch one file without a restore is `dump`."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "database.img").write_bytes(os.urandom(9 << 20))
    agent.job("data", type="files", paths=[str(src)])
    agent.json("run", "data")
    assert not [k for k in agent.object_keys() if "/files/" in k or "/blobs/" in k]
    proc = subprocess.run([AGENT, "-c", str(agent.path), "dump", "data", str(src / "database.img")],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (src / "database.img").read_bytes()


def test_identical_large_files_are_stored_once(agent, tmp_path: Path) -> None:
    """Two large files are hashed side by side while one uploads; a twin must still find the
    other's content instead of uploading it again."""
    src = tmp_path / "src"
    src.mkdir()
    content = os.urandom(9 << 20)
    for name in ("a.img", "b.img", "c.img"):
        (src / name).write_bytes(content)
    agent.job("data", type="files", paths=[str(src)])
    out = agent.json("run", "data")
    # Once, in chunks of incompressible bytes: 5 bytes of header each (about 150 of them).
    assert len(content) <= out["bytes_uploaded"] < len(content) + 2000, out
    target = tmp_path / "r"
    assert agent.run("restore", "data", "--target", str(target)).returncode == 0
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_excludes_and_one_file_system(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "x").write_text("x")
    (src / "keep.txt").write_text("k")
    (src / "skip.tmp").write_text("t")
    (src / "sub").mkdir()
    (src / "sub" / "also.tmp").write_text("t")
    agent.job("data", type="files", paths=[str(src)], exclude=["*.tmp", str(src / "cache")])
    agent.json("run", "data")
    target = tmp_path / "r"
    agent.run("restore", "data", "--target", str(target))
    got = sorted(capture(target / str(src).lstrip("/")))
    assert got == ["keep.txt", "sub"]


def test_missing_path_is_partial_exit_3(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    agent.job("data", type="files", paths=[str(src), str(tmp_path / "does-not-exist")])
    proc = agent.run("run", "data", "--json")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "partial" and out["files_failed"] == 1
    assert "does-not-exist" in proc.stderr
    assert agent.json("snapshots", "data")  # the snapshot of what could be read exists


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the agent as another user")
def test_permission_denied_file_is_listed_and_run_exits_3(agent, tmp_path: Path) -> None:
    # root reads everything, so run the agent as `nobody` over a tree with one unreadable file;
    # pytest's own tmp dirs are private to root, so everything lives in a world-readable dir.
    import subprocess
    import tempfile

    from conftest import AGENT

    base = Path(tempfile.mkdtemp(prefix="backup-agent-perm-"))
    try:
        base.chmod(0o755)
        src = base / "src"
        src.mkdir()
        (src / "ok.txt").write_text("ok")
        (src / "secret.txt").write_text("no")
        (src / "secret.txt").chmod(0o000)
        state = base / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        agent.data["state_dir"] = str(state)
        agent.data["jobs"] = {"data": {"type": "files", "paths": [str(src)]}}
        config = base / "config.yaml"
        config.write_text(agent.path.read_text())
        agent.path = config
        agent.write()
        config.chmod(0o644)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", AGENT, "-c",
                               str(config), "run", "data", "--json"], capture_output=True, text=True)
        assert proc.returncode == 3, proc.stderr
        out = json.loads(proc.stdout)
        assert [f["path"] for f in out["failed"]] == [str(src / "secret.txt")]
        assert "Permission denied" in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_second_concurrent_run_exits_75(agent, tmp_path: Path) -> None:
    from backup_agent.state import JobLock

    src = tmp_path / "src"
    src.mkdir()
    agent.job("data", type="files", paths=[str(src)])
    with JobLock(Path(agent.data["state_dir"]), "data"):
        proc = agent.run("run", "data")
    assert proc.returncode == 75
    assert "locked by another run" in proc.stderr
    assert agent.run("run", "data").returncode == 0  # the lock is gone with its holder


def test_unknown_job_and_bad_config_exit_2(agent, tmp_path: Path) -> None:
    proc = agent.run("run", "nope")
    assert proc.returncode == 2 and "jobs.nope: no such job" in proc.stderr
    agent.data["jobs"] = {"x": {"type": "files", "paths": ["/tmp"], "retention": {"keep_daily": "many"}}}
    agent.write()
    proc = agent.run("validate")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "jobs.x.retention.keep_daily: must be an integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_run_json_still_has_every_field(agent, tmp_path: Path) -> None:
    """Scripts read `run --json` the same way whatever happened: every contract field, zeros and
    null where nothing happened, plus the one-line error."""
    agent.job("gone", type="files", paths=[str(tmp_path / "src")])
    agent.write(storage={**agent.data["storage"], "bucket": "no-such-bucket-here"})
    proc = agent.run("run", "gone", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and doc["job"] == "gone" and doc["snapshot"] is None and doc["error"]
    for key in ("files_new", "files_changed", "files_unchanged", "files_failed", "bytes_uploaded"):
        assert doc[key] == 0, key
    assert isinstance(doc["duration_s"], float) and doc["duration_s"] >= 0  # how long the failed try took
