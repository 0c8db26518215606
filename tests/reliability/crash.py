"""SIGKILL at a chosen point, then the promises of a crash-consistent backup tool.

A `Crashes` object follows one job through a series of kill points: it remembers the tree each
complete snapshot captured, and after every kill checks that the killed run left no snapshot
(or exactly one complete snapshot, when the kill came after S3 stored the manifest), that the
next run exits 0, that `check --read-data` passes, and that every snapshot restores to the tree
it captured.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.faultproxy import Request

from reliability.lab import Lab, Tree, capture
from reliability.report import record


def write_files(root: Path, count: int, rng: random.Random, *, prefix: str = "f", size: tuple[int, int] = (800, 2400),
                per_dir: int = 100) -> int:
    """`count` files of random content in directories of `per_dir`; returns their total size."""
    total = 0
    for i in range(count):
        d = root / f"{prefix}-dir{i // per_dir:03}"
        d.mkdir(parents=True, exist_ok=True)
        n = rng.randint(*size)
        (d / f"{prefix}{i:05}.dat").write_bytes(rng.randbytes(n))
        total += n
    return total


def is_pack_put(r: Request) -> bool:
    return r.method == "PUT" and "/packs/" in r.path


def is_manifest_put(r: Request) -> bool:
    return r.method == "PUT" and "/snapshots/" in r.path


@dataclass
class Crashes:
    lab: Lab
    job: str
    src: Path
    states: dict[str, Tree] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def run_ok(self) -> dict[str, Any]:
        t0 = time.monotonic()
        out = self.lab.json("run", self.job)
        self.timings["next run"] = time.monotonic() - t0
        assert out["status"] == "success", out
        self.states[out["snapshot"]] = capture(self.src)
        return out

    def verify(self, restore: bool = True) -> int:
        """No snapshot is listed that is not complete; all of them check (and restore)."""
        listed = self.lab.snapshot_ids(self.job)
        assert sorted(self.states) == listed, f"listed {listed}, made {sorted(self.states)}"
        assert self.lab.check(self.job) == len(listed)
        return self.lab.assert_restores(self.job, self.src, self.states) if restore else 0

    def kill(self, scenario: str, *, match: Callable[[Request], bool] | None = None, after: bool = False,
             nth: int = 1, verb: tuple[str, ...] = ("run",), stored: bool = False,
             killer: Callable[[Any], None] | None = None, note: str = "") -> dict[str, Any]:
        """Start `backup-agent <verb> JOB`, SIGKILL it at the held request (or via `killer`),
        then verify; `stored`: the kill came after S3 stored the run's manifest."""
        before = set(self.lab.snapshot_ids(self.job))
        tree = capture(self.src)
        hold = self.lab.proxy.hold(match, after=after, nth=nth) if match else None
        t0 = time.monotonic()
        proc = self.lab.popen(*verb, self.job)
        if hold is not None:
            self.lab.kill_at(proc, hold)
        else:
            assert killer is not None
            killer(proc)
        self.timings["killed after"] = time.monotonic() - t0
        assert proc.returncode == -signal.SIGKILL, self.lab.log()
        new = set(self.lab.snapshot_ids(self.job)) - before
        if stored:
            assert len(new) == 1, f"the stored manifest should be a complete snapshot: {new}"
            self.states[new.pop()] = tree
        else:
            assert not new, f"the killed run left snapshot(s) {new}"
        if verb[0] == "prune":  # snapshots it forgot are gone whole: the rest must still verify
            listed = set(self.lab.snapshot_ids(self.job))
            self.states = {k: v for k, v in self.states.items() if k in listed}
        self.verify(restore=False)
        out = self.run_ok()
        restored = self.verify()
        record(scenario, cases=restored,
               result=f"the kill left {'one complete' if stored else 'no'} snapshot and check --read-data ok; "
                      f"next run exit 0; all {restored} snapshot(s) check and restore identical" + note,
               measured=f"killed {self.timings['killed after']:.1f}s after start; next run "
                        f"{self.timings['next run']:.1f}s, uploaded {out['bytes_uploaded']} bytes")
        return out


def kill_during_scan(lab: Lab, src: Path) -> Callable[[Any], None]:
    """A killer for the scan: SIGSTOP the agent as soon as it has something of `src` open, make
    sure no data request was made yet, then SIGKILL it."""

    def killer(proc: Any) -> None:
        start = len(lab.proxy.requests())
        fd_dir = f"/proc/{proc.pid}/fd"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
            except OSError:
                targets = []
            if any(t.startswith(str(src) + "/") for t in targets):
                os.kill(proc.pid, signal.SIGSTOP)
                data = [s for s in lab.proxy.requests()[start:] if s.method in ("PUT", "POST")]
                assert not data, f"the scan point came too late: {[s.request for s in data]}"
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
                return
            time.sleep(0.002)
        raise AssertionError(f"never saw the agent read {src}:\n{lab.log()}")

    return killer
