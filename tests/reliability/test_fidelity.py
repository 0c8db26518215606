"""What a snapshot holds of trees no one would write by hand, and of a file that never stops
growing: compared exactly (type, mode, owner, mtimes, xattrs, ACLs, hard-link groups,
allocated size), not just content."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from support.fstrees import build, trees
from support.treeutil import differences, inventory

from reliability.lab import Lab
from reliability.report import record

TREES = 25


def test_generated_trees_restore_exactly(lab: Lab, tmp_path: Path) -> None:
    lab.storage(pack_size_mb=4, large_file_mb=1)  # sparse data above 1 MiB takes the large-file path
    done: list[int] = []

    @settings(max_examples=TREES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=trees())
    def one(spec: list[Any]) -> None:
        case = tmp_path / uuid.uuid4().hex[:8]
        src = case / "src"
        src.mkdir(parents=True)
        build(src, spec)
        want = inventory(src)
        lab.job("data", type="files", paths=[str(src)])
        out = lab.json("run", "data")
        assert out["status"] == "success" and out["files_failed"] == 0 and out["files_skipped"] == 0, out
        target = case / "restore"
        back = lab.run("restore", "data", "--snapshot", out["snapshot"], "--target", str(target))
        assert back.returncode == 0, back.stderr
        assert differences(want, inventory(target / str(src).lstrip("/"))) == []
        done.append(len(want))

    one()
    assert lab.check("data") == len(done)
    record("hostile.trees", cases=len(done),
           result="every tree: run exit 0, nothing failed or skipped; restore exact in content, type, mode, owner, "
                  "mtimes, xattrs, ACLs, device numbers, hard-link groups and allocated size (holes kept); "
                  "check --read-data ok",
           measured=f"{sum(done)} entries in all")


def test_log_appended_during_every_run(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    log = src / "app.log"
    line = b"y" * 1023 + b"\n"
    log.write_bytes(line * (6 << 10))  # 6 MiB: a large file with large_file_mb 1
    lab.storage(large_file_mb=1, multipart_chunk_mb=5)  # multipart: parts not checked against our hash
    lab.job("data", type="files", paths=[str(src)])
    stop = threading.Event()

    def writer() -> None:
        with open(log, "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(line * 8)
                time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    runs: list[tuple[str, int]] = []
    try:
        for _ in range(3):
            before = log.stat().st_size
            proc = lab.run("run", "data", "--json")
            assert proc.returncode == 0, proc.stderr
            out = json.loads(proc.stdout)
            assert out["changed_while_read"] == [str(log)] and out["files_failed"] == 0, out
            runs.append((out["snapshot"], before))
    finally:
        stop.set()
        t.join()
    whole = log.read_bytes()
    runner = lab.verifier("data")
    sizes = []
    for sid, before in runs:
        target = tmp_path / f"r-{sid}"
        runner.restore(snapshot=sid, at=None, target=str(target), paths=[])
        got = (target / str(src).lstrip("/") / "app.log").read_bytes()
        assert len(got) >= before and len(got) % len(line) == 0 and whole.startswith(got)
        sizes.append(len(got))
    assert lab.check("data") == 3
    record("local.growing_log", cases=3,
           result="appended to every millisecond during 3 runs: each run exit 0 with the file listed in "
                  "changed_while_read; each snapshot holds a prefix of whole lines, at least the size the file "
                  "had when the run began; check --read-data ok",
           measured="stored " + ", ".join(f"{n >> 20} MiB" for n in sizes))
