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
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.faultproxy import Request
from support.waiting import wait_for

from reliability.crash import is_pack_put, write_files
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
    # 2 KiB or more: read on the encoder threads like d/'s files, not by the scan thread the
    # moment it finds them (a file below READ_INLINE is).
    write_files(src / "z", 5, rng, prefix="z", size=(2048, 2400))
    # One upload at a time, two packs in flight at most: with the first PUT held, the reads stop
    # before the third pack is sealed, at file 1536 of d/ at the latest; the scan runs ahead and
    # has listed d/ and z/.
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
    # The scan may have listed z/'s subdirectory before it was removed (it runs ahead of the reads):
    # then the snapshot holds it as listed, empty; never a file of z/.
    under_z = [e["path"] for e in lab.json("ls", "data", "--snapshot", sid, str(src / "z"))["entries"]]
    assert set(under_z) <= {str(src / "z"), str(src / "z" / "z-dir000")}, under_z
    if str(src / "z" / "z-dir000") in under_z:
        expected["z/z-dir000"] = listed["z/z-dir000"]
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {sid: expected})
    record("local.small_changes", cases=4,
           result="10 files deleted, one grown, one rewritten with its mtime put back, a directory removed, all "
                  "after listing and before reading: run exit 0, check --read-data ok, the snapshot restores "
                  "the content read (deleted ones absent)")


BIG = 24 << 20  # above CHUNKS_AHEAD (16 MiB) + two 1 MiB packs: its read stalls midway (see _big_tree)


def _big_tree(lab: Lab, src: Path, rng: random.Random, size: int = BIG) -> Path:
    """50 small files and one big file, chunked into 1 MiB packs of its own, one upload at a
    time. With the first pack PUT held, the second waits for the one upload thread and a third
    pack waits for a slot: the chunks cut meanwhile wait too, and once CHUNKS_AHEAD bytes wait
    the read stops at about 16 MiB + 3 packs, before the end of the 24 MiB file: the fault lands in
    the middle of its read."""
    write_files(src / "small", 50, rng)
    big = src / "disk.img"
    big.write_bytes(rng.randbytes(size))
    lab.storage(pack_size_mb=1, concurrency=1)
    lab.job("data", type="files", paths=[str(src)])
    return big


def _reading(proc: subprocess.Popen[bytes], path: Path) -> bool:
    """Does the agent have `path` open (it is chunking it)?"""
    fd_dir = f"/proc/{proc.pid}/fd"
    with contextlib.suppress(OSError):
        return any(os.readlink(os.path.join(fd_dir, fd)) == str(path) for fd in os.listdir(fd_dir))
    return False


def _held_while_read(lab: Lab, big: Path) -> tuple[subprocess.Popen[bytes], Any]:
    """Start a run and hold the first pack PUT; returns once the agent is stalled in `big`'s read."""
    hold = lab.proxy.hold(is_pack_put)
    proc = lab.popen("run", "data", "--json", out="run.json")
    assert hold.wait(120), lab.log()
    time.sleep(0.5)  # the chunker fills its read-ahead and waits
    assert _reading(proc, big), f"the agent is not reading {big} while its pack is held:\n{lab.log()}"
    return proc, hold


def _report(lab: Lab, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.wait(120) == 0, lab.log()
    out: dict[str, Any] = json.loads((lab.tmp / "run.json").read_text())
    assert out["status"] == "success", out
    return out


def test_large_file_deleted_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    big = _big_tree(lab, src, random.Random(31))
    proc, hold = _held_while_read(lab, big)
    big.unlink()  # the open descriptor still reads the old bytes; the unlink changes the ctime
    hold.release(forward=True)
    out = _report(lab, proc)
    assert out["failed"] == [] and out["changed_while_read"] == [], out
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {lab.snapshot_ids("data")[-1]: capture(src)})  # without disk.img
    record("local.large_vanish", cases=1,
           result="deleted while it is chunked (its pack PUT held, its read stalled before its end): run exit 0, "
                  "the file not in the snapshot (noticed at the end of the read, gone at the second), "
                  "nothing reported failed; check --read-data ok; restore identical to the tree without it")


def test_large_file_rewritten_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(32)
    src = tmp_path / "src"
    big = _big_tree(lab, src, rng)

    # Rewritten in place once, size and mtime put back, while its read is stalled midway: the
    # ctime gives it away, the second read stores the new content whole.
    proc, hold = _held_while_read(lab, big)
    st = big.stat()
    with open(big, "r+b") as fh:
        fh.write(rng.randbytes(BIG))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    hold.release(forward=True)
    out = _report(lab, proc)
    assert out["changed_while_read"] == [] and out["files_new"] == 51, out
    first = lab.snapshot_ids("data")[-1]
    expected = capture(src)

    # Rewritten all the time, block by block, mtime put back after each block: both reads see it
    # change. The run keeps what its second read saw, says so, and that is what restores: every
    # byte comes from one of the versions written at that place (no shifted or foreign bytes).
    versions = [big.read_bytes(), rng.randbytes(BIG), rng.randbytes(BIG)]
    mtime = big.stat().st_mtime_ns
    stop = threading.Event()

    def rewrite() -> None:
        with open(big, "r+b", buffering=0) as fh:
            while not stop.is_set():
                for v in versions[1:]:
                    for off in range(0, BIG, 1 << 20):
                        os.pwrite(fh.fileno(), v[off : off + (1 << 20)], off)
                        os.utime(big, ns=(mtime, mtime))

    writer = threading.Thread(target=rewrite, daemon=True)
    time.sleep(1.05)  # a new snapshot id
    writer.start()
    try:
        proc = lab.popen("run", "data", "--json", out="run.json")
        out = _report(lab, proc)
    finally:
        stop.set()
        writer.join(30)
    assert out["changed_while_read"] == [str(big)], out
    assert any(w.startswith(f"{big}: changed while read") for w in out["warnings"]), out
    second = lab.snapshot_ids("data")[-1]
    assert lab.check("data") == 2
    target = tmp_path / "restored"
    proc2 = lab.run("restore", "data", "--snapshot", second, "--target", str(target))
    assert proc2.returncode == 0, proc2.stderr
    got = np.frombuffer((target / str(big).lstrip("/")).read_bytes(), dtype=np.uint8)
    assert got.size == BIG
    vs = [np.frombuffer(v, dtype=np.uint8) for v in versions]
    foreign = ~((got == vs[0]) | (got == vs[1]) | (got == vs[2]))
    assert not foreign.any(), f"{int(foreign.sum())} restored bytes were never written at their place"
    lab.assert_restores("data", src, {first: expected})
    record("local.large_change", cases=2,
           result="rewritten in place once, size and mtime put back, while its read is stalled before its end: "
                  "the ctime gives it away, read again, the new content stored, exit 0, no warning, restore identical; "
                  "rewritten all the time: exit 0, reported in changed_while_read and a warning, kept as the "
                  "second read saw it (every restored byte was written at its place); check --read-data ok")


def test_large_file_truncated_during_its_upload(lab: Lab, tmp_path: Path) -> None:
    """copytruncate log rotation while the file is chunked: the read ends at the new end, the
    change is seen and the file read again in its new size."""
    rng = random.Random(33)
    src = tmp_path / "src"
    big = _big_tree(lab, src, rng)
    proc, hold = _held_while_read(lab, big)
    shutil.copy(big, tmp_path / "disk.img.1")  # the rotated copy, outside the backed-up tree
    with open(big, "r+b") as fh:
        fh.truncate(6 << 20)  # below where the stalled read stands
    hold.release(forward=True)
    out = _report(lab, proc)
    assert out["changed_while_read"] == [] and out["files_new"] == 51, out
    assert lab.check("data") == 1
    lab.assert_restores("data", src, {lab.snapshot_ids("data")[-1]: capture(src)})
    record("local.large_truncate", cases=1,
           result="truncated to 6 MiB while its read is stalled further in: the read ends at the new end, the "
                  "file read again and stored in its new size: run exit 0 at once, no warning, "
                  "check --read-data ok, restore identical")


def test_large_file_rewritten_while_its_packs_are_held(lab: Lab, tmp_path: Path) -> None:
    """The bytes chunked are the bytes stored: a file rewritten in place (same size, mtime put
    back) after its read, while its packs wait to go up, changes nothing in this snapshot; the
    next run stores the new content."""
    rng = random.Random(34)
    src = tmp_path / "src"
    write_files(src / "small", 20, rng)
    big = src / "a.img"
    big.write_bytes(rng.randbytes(9 << 20))
    lab.job("data", type="files", paths=[str(src)])  # 16 MiB packs: its one pack goes up after the scan
    hold = lab.proxy.hold(is_pack_put)
    proc = lab.popen("run", "data", "--json", out="run.json")
    assert hold.wait(120), lab.log()
    wait_for(lambda: not _reading(proc, big), 30, "the end of the big file's read")
    as_read = capture(src)
    st = big.stat()
    with open(big, "r+b") as fh:
        fh.write(rng.randbytes(9 << 20))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    hold.release(forward=True)
    out = _report(lab, proc)
    assert out["changed_while_read"] == [], out
    first = lab.snapshot_ids("data")[-1]
    time.sleep(1.05)
    again = lab.json("run", "data")
    assert again["status"] == "success" and again["files_changed"] == 1, again
    assert lab.check("data") == 2
    lab.assert_restores("data", src, {first: as_read, again["snapshot"]: capture(src)})
    record("local.large_rewrite_put", cases=2,
           result="rewritten in place, size and mtime put back, after its read while its pack PUT is held: "
                  "run exit 0, the snapshot restores the content read (not the new one); the next run notices "
                  "the ctime and stores the new content; check --read-data ok, both restore identical")


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
