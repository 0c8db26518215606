"""One job, two processes: a second run, a prune during a run and a run during a prune, and the
daemon's scheduled runs against manual ones. One job lock (state_dir/locks/JOB.lock) decides:
the later process exits 75 naming the holder, and nothing a snapshot needs is ever deleted."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
from pathlib import Path

import yaml
from support.faultproxy import FaultProxy
from support.seaweedfs import SeaweedFS

from reliability.crash import write_files
from reliability.lab import AGENT, NODE, Lab, capture, one_line_error, wait_for
from reliability.report import record


def manifest_put(job: str = "data"):  # type: ignore[no-untyped-def]
    return lambda r: r.method == "PUT" and f"/{NODE}/{job}/snapshots/" in r.path


def locked_by(proc: subprocess.CompletedProcess[str]) -> int:
    assert proc.returncode == 75, proc.stderr
    m = re.search(r"locked by another run \(pid (\d+)\)", one_line_error(proc))
    assert m, proc.stderr
    return int(m[1])


def test_two_runs_of_one_job(lab: Lab, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, 200, random.Random(40))
    lab.job("data", type="files", paths=[str(src)])
    hold = lab.proxy.hold(manifest_put())
    first = lab.popen("run", "data")
    assert hold.wait(120), lab.log()
    second = lab.run("run", "data", "--json")
    assert locked_by(second) == first.pid
    assert json.loads(second.stdout)["status"] == "failed"
    hold.release(forward=True)
    assert first.wait(120) == 0, lab.log()
    (sid,) = lab.snapshot_ids("data")
    status = json.loads((lab.state_dir / "status" / "data.json").read_text())
    assert status["result"] == "success" and status["last_snapshot"] == sid, status
    assert lab.check("data") == 1
    record("concurrency.two_runs", cases=1,
           result="the second run exits 75 at once naming the first one's pid; the first completes; one snapshot, "
                  "status from the first run, check --read-data ok")


def test_run_and_prune_exclude_each_other(lab: Lab, tmp_path: Path) -> None:
    rng = random.Random(41)
    src = tmp_path / "src"
    write_files(src, 300, rng)
    lab.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})
    states = {}
    out = lab.json("run", "data")
    states[out["snapshot"]] = capture(src)

    # prune while a run has uploaded its data but not its manifest: that data is referenced by
    # nothing yet, so a prune would delete it as garbage; it must wait for the lock instead
    write_files(src / "new", 300, rng, prefix="n")
    hold = lab.proxy.hold(manifest_put())
    run = lab.popen("run", "data")
    assert hold.wait(120), lab.log()
    before = sorted(lab.object_keys())
    prune = lab.run("prune", "data")
    assert locked_by(prune) == run.pid
    assert sorted(lab.object_keys()) == before, "prune deleted objects while a run was going"
    hold.release(forward=True)
    assert run.wait(120) == 0, lab.log()
    sid = lab.snapshot_ids("data")[-1]
    states[sid] = capture(src)
    assert lab.check("data") == 2
    lab.assert_restores("data", src, states)

    # a run while prune is deleting: it waits for the lock too
    hold = lab.proxy.hold(lambda r: r.method == "POST" and "delete" in r.query)
    pruning = lab.popen("prune", "data", log="prune.log")
    assert hold.wait(120), lab.log("prune.log")
    (src / "late.txt").write_text("after the prune\n")
    late = lab.run("run", "data")
    assert locked_by(late) == pruning.pid
    hold.release(forward=True)
    assert pruning.wait(120) == 0, lab.log("prune.log")
    assert lab.snapshot_ids("data") == [sid]
    out = lab.json("run", "data")
    assert lab.check("data") == 2
    lab.assert_restores("data", src, {sid: states[sid], out["snapshot"]: capture(src)})
    record("concurrency.run_prune", cases=2,
           result="prune during a run (data stored, manifest not yet): exit 75 naming the run, no object deleted, "
                  "the run's snapshot checks and restores; a run during prune: exit 75 naming the prune; "
                  "both take state_dir/locks/JOB.lock")


def test_daemon_and_manual_runs(lab: Lab, seaweed: SeaweedFS, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_files(src, 100, random.Random(42))
    lab.job("data", type="files", paths=[str(src)], schedule="every 4 seconds")
    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("wb") as err:
        daemon = subprocess.Popen([AGENT, "-c", str(lab.path), "daemon"], stdout=subprocess.DEVNULL, stderr=err)
    lab.procs.append(daemon)

    def log() -> str:
        return daemon_log.read_text(errors="replace")

    # The manual runs go through a proxy of their own, so each side can be held separately.
    with FaultProxy(seaweed.endpoint_url) as mine:
        manual_cfg = tmp_path / "manual.yaml"
        storage = {**lab.data["storage"], "endpoint_url": mine.url}
        manual_cfg.write_text(yaml.safe_dump({**lab.data, "storage": storage}))
        manual_cfg.chmod(0o600)

        def manual(*args: str) -> list[str]:
            return [AGENT, "-c", str(manual_cfg), *args]

        held = lab.proxy.hold(manifest_put())
        assert held.wait(120), log()
        refused = subprocess.run(manual("run", "data"), capture_output=True, text=True, timeout=120)
        daemon_run = locked_by(refused)
        assert re.search(rf"job data: run started \(pid {daemon_run}\)", log()), log()
        held.release(forward=True)

        # The daemon runs the job every 4 s: start manual runs until one gets the lock (the
        # others exit 75, which is the point of this test too) and is held at its manifest.
        mine_held = mine.hold(manifest_put())
        for _ in range(20):
            with open(tmp_path / "manual.log", "wb") as err:
                run = subprocess.Popen(manual("run", "data"), stdout=subprocess.DEVNULL, stderr=err)
            lab.procs.append(run)
            wait_for(lambda: mine_held.reached.is_set() or run.poll() is not None, 120, "the manual run")  # noqa: B023
            if mine_held.reached.is_set():
                break
            assert run.returncode == 75, (tmp_path / "manual.log").read_text()
        assert mine_held.reached.is_set(), "no manual run got the lock"
        wait_for(lambda: "another run holds the job's lock: skipped" in log(), 60, "a skipped scheduled run")
        mine_held.release(forward=True)
        assert run.wait(120) == 0, (tmp_path / "manual.log").read_text()
        finished = log().count("job data: run finished")
        wait_for(lambda: log().count("job data: run finished") > finished, 60, "the next scheduled run")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0, log()
    assert "Traceback" not in log()
    snaps = lab.snapshot_ids("data")
    assert lab.check("data") == len(snaps) >= 3
    record("concurrency.daemon_manual", cases=2,
           result="a manual run during the daemon's run exits 75 naming the daemon's run; the daemon's run during a "
                  "manual one exits 75 and the daemon logs it as skipped, keeps its schedule and its next run "
                  "succeeds; SIGTERM exit 0; every snapshot checks")
