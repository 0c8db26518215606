"""Local faults: state_dir full or read-only, a restore target that fills up, files and
directories that vanish or change while the agent reads them, permission denied, and a clock
that jumps back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.faultproxy import Request

from reliability.crash import write_files
from reliability.lab import Lab, capture, one_line_error
from reliability.report import record

NOBODY = 65534


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_state_dir_full_then_read_only_and_a_full_restore_target(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in range(20):  # 8,000 files: a change cache well above 1 MiB
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(400):
            (src / f"d{d:02}" / f"a-rather-long-file-name-{i:05}.txt").write_text(f"{d} {i}\n")
    with tmpfs(tmp_path / "state", "1m") as state:
        lab.data["state_dir"] = str(state)
        lab.job("data", type="files", paths=[str(src)])

        full = lab.run("run", "data")
        assert full.returncode == 1, full.stderr
        line = one_line_error(full)
        assert str(state) in line and ("disk is full" in line or "No space left" in line), line
        assert lab.snapshot_ids("data") == []

        remount(state, "size=64m")  # space freed: the next run completes
        out = lab.json("run", "data")
        assert out["status"] == "success"
        assert lab.check("data") == 1
        lab.assert_restores("data", src, {out["snapshot"]: capture(src)})
        record("local.disk_full", cases=2,
               result="full: exit 1, one line naming state_dir and the full disk, no snapshot; space freed: "
                      "next run exit 0, check --read-data ok, restore identical")

        remount(state, "ro")
        ro = {verb: lab.run(*verb.split()) for verb in ("run data", "prune data")}
        for verb, proc in ro.items():
            assert proc.returncode == 1, f"{verb}: {proc.stderr}"
            assert "Read-only file system" in one_line_error(proc), proc.stderr
        readers = {verb: lab.run(*verb.split()) for verb in ("snapshots data", "status", "check data --read-data")}
        for verb, proc in readers.items():
            assert proc.returncode == 0, f"{verb} with a read-only state_dir: {proc.stderr}"
        target = tmp_path / "restored"
        proc = lab.run("restore", "data", "--target", str(target))
        assert proc.returncode == 0, proc.stderr
        assert capture(target / str(src).lstrip("/")) == capture(src)
        record("local.read_only", cases=len(ro) + len(readers) + 1,
               result="run and prune: exit 1, one line naming the lock file and 'Read-only file system'; "
                      "snapshots, status, check --read-data and restore work (exit 0, restore identical)")

    (tmp_path / "small-target").mkdir()
    outside = set(os.listdir(tmp_path))
    with tmpfs(tmp_path / "small-target", "1m") as small:
        proc = lab.run("restore", "data", "--target", str(small))
        assert proc.returncode == 1, proc.stderr
        assert "No space left on device" in one_line_error(proc)
    assert set(os.listdir(tmp_path)) == outside  # nothing written beside the target
    record("local.restore_full", cases=1,
           result="restore into a 1 MiB tmpfs: exit 1, one line naming the target and 'No space left on device', "
                  "nothing written outside the target")


def test_small_files_and_a_directory_change_after_the_scan_listed_them(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(30)
    src = tmp_path / "src"
    write_files(src / "d", 2000, rng, size=(2048, 2048), per_dir=2000)  # exactly 512 per 1 MiB pack
    write_files(src / "z", 5, rng, prefix="z")
    # One upload at a time, two packs in flight at most: with the first PUT held, the scan stops
    # before the third pack is sealed, at file 1536 of d/ at the latest; d/ and z/ are listed.
    lab.storage(pack_size_mb=1, concurrency=1)
    lab.job("data", type="files", paths=[str(src)])

    def pack_put(r: Request) -> bool:
        return r.method == "PUT" and "/packs/" in r.path

    hold = lab.proxy.hold(pack_put)
    proc = lab.popen("run", "data", "--json", out="run.json")
    assert hold.wait(120), lab.log()
    listed = capture(src)  # directories keep the metadata they were listed with
    d = src / "d" / "f-dir000"
    for i in range(1900, 1910):
        (d / f"f{i:05}.dat").unlink()
    (d / "f01950.dat").write_bytes(b"grew after the listing" * 200)
    same = d / "f01960.dat"
    before = same.stat()
    same.write_bytes(rng.randbytes(2048))  # same size, mtime put back: only the content differs
    os.utime(same, ns=(before.st_atime_ns, before.st_mtime_ns))
    shutil.rmtree(src / "z")  # listed with the top level, gone before it is read
    expected = {**capture(src), "z": listed["z"], "d/f-dir000": listed["d/f-dir000"]}
    hold.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    report = json.loads((lab.tmp / "run.json").read_text())
    stored = sum(1 for v in expected.values() if v[0] == "file")
    assert report["files_new"] == stored, (report, stored)  # the vanished ones are not counted
    sid = lab.snapshot_ids("data")[-1]
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {sid: expected})
    record("local.small_changes", cases=4,
           result="10 files deleted, one grown, one rewritten with its mtime put back, a directory removed, all "
                  "after listing and before reading: run exit 0, check --read-data ok, the snapshot restores "
                  "the content read (deleted ones absent)")


def _multipart_tree(lab: Lab, src: Path, rng: random.Random) -> Path:
    write_files(src / "small", 50, rng)
    big = src / "disk.img"
    big.write_bytes(rng.randbytes(12 << 20))
    lab.storage(multipart_chunk_mb=5)
    lab.job("data", type="files", paths=[str(src)])
    return big


def _create_mpu(r: Request) -> bool:
    return r.method == "POST" and "uploads" in r.query


def test_large_file_deleted_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    big = _multipart_tree(lab, src, random.Random(31))
    hold = lab.proxy.hold(_create_mpu)  # hashed, upload started, its parts not read yet
    proc = lab.popen("run", "data")
    assert hold.wait(120), lab.log()
    big.unlink()
    hold.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {lab.snapshot_ids("data")[-1]: capture(src)})
    record("local.large_vanish", cases=1,
           result="run exit 0 without the file; check --read-data ok; restore identical")


def test_large_file_rewritten_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(32)
    src = tmp_path / "src"
    big = _multipart_tree(lab, src, rng)

    # Rewritten during both attempts: the third read copies it aside while hashing and stores
    # that copy, so the object is exactly what was hashed; the file is in the snapshot.
    holds = [lab.proxy.hold(_create_mpu, nth=n) for n in (1, 2)]
    proc = lab.popen("run", "data", "--json")
    for h in holds:
        assert h.wait(120), lab.log()
        big.write_bytes(rng.randbytes(12 << 20))
        h.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    first = lab.snapshot_ids("data")[-1]
    expected = capture(src)

    # Rewritten once with its size and mtime put back: ctime gives it away, the retry stores it.
    big.write_bytes(rng.randbytes(12 << 20))  # new content, so the next run uploads it
    time.sleep(1.05)
    hold = lab.proxy.hold(_create_mpu)
    proc = lab.popen("run", "data", "--json")
    assert hold.wait(120), lab.log()
    st = big.stat()
    big.write_bytes(rng.randbytes(12 << 20))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    hold.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    second = lab.snapshot_ids("data")[-1]
    assert lab.check("data") == 2
    lab.assert_restores("data", src, {first: expected, second: capture(src)})
    record("local.large_change", cases=2,
           result="rewritten during both upload attempts: stored from a copy taken on the third read, exit 0; "
                  "rewritten with size and mtime put back: detected by ctime, stored on retry, exit 0; "
                  "check --read-data ok, restores identical")


def test_large_file_truncated_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    """copytruncate log rotation: the file shrinks between its parts. The upload stops at the
    short read (no body shorter than its Content-Length waiting for S3's RequestTimeout), is
    aborted, and the file is read again."""
    rng = random.Random(33)
    src = tmp_path / "src"
    big = _multipart_tree(lab, src, rng)
    lab.storage(multipart_chunk_mb=5, concurrency=1)  # parts in order: part 1 is held, 2 and 3 not read yet
    hold = lab.proxy.hold(lambda r: r.method == "PUT" and r.query.get("partNumber") == ["1"])
    proc = lab.popen("run", "data", "--json")
    assert hold.wait(120), lab.log()
    with open(big, "r+b") as fh:
        fh.truncate(6 << 20)  # still a large file: one PUT on the second attempt
    hold.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    aborted = [s for s in lab.proxy.seen if s.method == "DELETE" and "uploadId" in s.query]
    assert len(aborted) == 1, [(s.method, s.path, s.query) for s in lab.proxy.seen]
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {lab.snapshot_ids("data")[-1]: capture(src)})
    record("local.large_truncate", cases=1,
           result="multipart upload aborted at the short read, the file read again and stored in its new size: "
                  "run exit 0 at once (no RequestTimeout), check --read-data ok, restore identical")


def test_large_file_rewritten_between_its_hash_and_its_put(lab: Lab, tmp_path: Path) -> None:
    """A file rewritten in place (same size, mtime put back) after it was hashed: the single PUT
    carries the old SHA-256, S3 refuses the body (BadDigest), the file is hashed and sent again."""
    rng = random.Random(34)
    src = tmp_path / "src"
    write_files(src / "small", 20, rng)
    for name in ("a.img", "b.img"):
        (src / name).write_bytes(rng.randbytes(9 << 20))  # large, one PUT each
    lab.job("data", type="files", paths=[str(src)])
    # Large files go up one at a time: while the first PUT is held, the other is hashed and waits.
    hold = lab.proxy.hold(lambda r: r.method == "PUT" and ".img@" in r.path)
    proc = lab.popen("run", "data", "--json")
    assert hold.wait(120), lab.log()
    assert hold.request is not None
    other = src / ("b.img" if "/a.img@" in hold.request.path else "a.img")
    time.sleep(1)  # hashing 9 MiB takes milliseconds
    st = other.stat()
    other.write_bytes(rng.randbytes(9 << 20))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    hold.release(forward=True)
    assert proc.wait(120) == 0, lab.log()
    puts = [s.status for s in lab.proxy.seen if s.method == "PUT" and f"/{other.name}@" in s.path]
    assert len(puts) == 2 and puts[0] == 400 and puts[1] == 200, puts
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {lab.snapshot_ids("data")[-1]: capture(src)})
    record("local.large_rewrite_put", cases=1,
           result="the PUT refused by S3 (BadDigest), the file hashed and sent again: run exit 0, "
                  "check --read-data ok, restore identical to the rewritten file")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the agent as nobody")
def test_permission_denied_as_nobody(lab: Lab, tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="rel-perm-"))
    try:
        base.chmod(0o755)
        src = base / "src"
        write_files(src / "open", 20, random.Random(33))
        (src / "secret.txt").write_text("root only")
        (src / "secret.txt").chmod(0o000)
        (src / "closed").mkdir(mode=0o700)
        (src / "closed" / "inside.txt").write_text("root only")
        state = base / "state"
        state.mkdir()
        os.chown(state, NOBODY, NOBODY)
        cfg_copy = base / "config.yaml"
        lab.data["state_dir"] = str(state)
        lab.job("data", type="files", paths=[str(src)])
        shutil.copy(lab.path, cfg_copy)

        denied = lab.run("validate", user=NOBODY)  # the config is root's (0600)
        assert denied.returncode == 2 and "Permission denied" in one_line_error(denied), denied.stderr

        cfg_copy.chmod(0o644)
        lab.path = cfg_copy
        partial = lab.run("run", "data", "--json", user=NOBODY)
        assert partial.returncode == 3, partial.stderr
        failed = {f["path"] for f in json.loads(partial.stdout)["failed"]}
        assert failed == {str(src / "secret.txt"), str(src / "closed")}, failed
        expected = {k: v for k, v in capture(src).items() if k not in ("secret.txt", "closed/inside.txt")}
        sid = lab.snapshot_ids("data")[-1]
        lab.assert_restores("data", src, {sid: expected})

        os.chown(state, 0, 0)
        state.chmod(0o755)
        shutil.rmtree(state / "locks")
        locked_out = lab.run("run", "data", user=NOBODY)
        assert locked_out.returncode == 1 and "Permission denied" in one_line_error(locked_out)
        assert lab.snapshot_ids("data") == [sid]

        target = base / "root-only"
        target.mkdir(mode=0o755)
        refused = lab.run("restore", "data", "--target", str(target / "r"), user=NOBODY)
        assert refused.returncode == 1 and "Permission denied" in one_line_error(refused)
        assert list(target.iterdir()) == []
        record("local.permissions", cases=4,
               result="config unreadable: exit 2, one line; unreadable file and directory: exit 3 listing both, "
                      "the rest restores identical; state_dir not writable: exit 1, one line, no snapshot; "
                      "restore target not writable: exit 1, one line, nothing written")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_clock_jumping_back(lab: Lab, tmp_path: Path) -> None:
    from backup_agent import config
    from backup_agent.jobs.files import FilesJob
    from backup_agent.storage.s3_boto import BotoStore

    src = tmp_path / "src"
    write_files(src, 100, random.Random(34))
    lab.job("data", type="files", paths=[str(src)])
    cfg = config.load(str(lab.path))
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, endpoint_url=lab.seaweed.endpoint_url))
    now = datetime.now(UTC)
    states = {}
    made = []
    for step, when in enumerate((now, now - timedelta(days=1), now - timedelta(days=1, seconds=-1), now)):
        (src / f"step-{step}.txt").write_text(f"written before run {step}\n")
        result = FilesJob(cfg, cfg.job("data"), clock=lambda when=when: when, store=BotoStore(cfg.storage)).run()
        assert result.status == "success"
        states[result.snapshot] = capture(src)
        made.append(result.snapshot)
        if step == 3:
            assert result.files_unchanged >= 100, "the run after the clock came back was not incremental"
    listed = [s["id"] for s in lab.json("snapshots", "data")]
    assert listed == made, "snapshots are listed in the order they were made"
    assert lab.check("data") == 4
    lab.assert_restores("data", src, states)
    proc = lab.run("restore", "data", "--target", str(tmp_path / "r"))
    assert proc.returncode == 0 and made[-1] in proc.stdout, proc.stderr
    record("local.clock_back", cases=4,
           result="runs at now, now - 1 day, now - 1 day + 1 s, now: four complete snapshots, listed in the order "
                  "they were made (restore of the latest gives the last run); each restores (by id) identical; "
                  "check --read-data ok; the last run is incremental")
