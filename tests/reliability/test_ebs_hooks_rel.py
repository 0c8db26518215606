"""EBS hooks keep their promise (issue 26): `post` and thaw run whenever `pre` started, a failed
`post` after a complete capture is partial and keeps the snapshots, freeze paths are mount points
other than /, copy regions are region names. moto in server mode and a local IMDSv2 (the agent
tests' fake_aws bench), the real CLI, a recording fake `fsfreeze` (no real filesystem frozen)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reliability.report import record

AGENT_TESTS = Path(__file__).resolve().parents[2] / "agent" / "tests"


def _bench() -> tuple[Any, Any]:
    # The EBS bench lives with the agent's tests; the reliability suite reuses it as it is.
    if str(AGENT_TESTS) not in sys.path:
        sys.path.insert(0, str(AGENT_TESTS))
    return importlib.import_module("fake_aws"), importlib.import_module("test_hooks")


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_aws, test_hooks = _bench()
    for k, v in fake_aws.CREDS.items():
        monkeypatch.setenv(k, v)
    test_hooks.write_fake_fsfreeze(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    with fake_aws.ebs_env(fake_aws.shared_moto(), tmp_path) as env:
        yield env


def test_ebs_hooks_always_undo_what_they_did(aws: Any, tmp_path: Path) -> None:
    calls_log = tmp_path / "calls.log"

    def calls() -> list[str]:
        text = calls_log.read_text() if calls_log.exists() else ""
        calls_log.write_text("")
        return [line.rstrip() for line in text.splitlines()]

    def hook(word: str, then: str = "") -> list[str]:
        return ["sh", "-c", f'echo "{word} ${{BACKUP_AGENT_RESULT:-}}" >> {calls_log}; {then}']

    took = {}
    # pre fails, then pre hangs past hook_timeout: post runs each time, nothing frozen or kept.
    aws.job("app", volumes="all", pre=hook("pre", "exit 4"), post=hook("post"), freeze=["/dev/shm"])
    proc = aws.run("run", "app")
    assert proc.returncode == 1 and calls() == ["pre", "post failed"] and aws.snapshots() == []
    aws.job("app", volumes="all", pre=hook("pre", "sleep 60"), post=hook("post"), hook_timeout=1)
    t0 = time.monotonic()
    proc = aws.run("run", "app")
    took["hanging pre"] = time.monotonic() - t0
    assert proc.returncode == 1 and calls() == ["pre", "post failed"] and aws.snapshots() == []

    # post fails after a complete capture: exit 3, the snapshots kept, listed, status partial.
    aws.job("app", volumes="all", pre=hook("pre"), post=hook("post", "exit 1"), freeze=["/dev/shm"])
    proc = aws.run("run", "app", "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 3 and out["status"] == "partial" and len(out["ebs_snapshots"]) == 3, proc.stderr
    assert calls() == ["pre", "fsfreeze -f /dev/shm", "fsfreeze -u /dev/shm", "post success"]
    listed = json.loads(aws.run("snapshots", "app", "--json").stdout)
    assert [s["id"] for s in listed] == [out["snapshot"]] and len(aws.snapshots()) == 3

    # SIGTERM between freeze and thaw: thawed, post told, nothing kept, exit 143.
    aws.job("app", volumes="all", pre=hook("pre"), post=hook("post"), freeze=["/dev/shm", "/proc"])
    aws.proxy.delays["CreateSnapshots"] = 5
    before = len(aws.proxy.actions("CreateSnapshots"))
    run = subprocess.Popen([str(Path(sys.executable).parent / "backup-agent"),
                            "-c", str(aws.path), "run", "app"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 60
    while len(aws.proxy.actions("CreateSnapshots")) == before or "fsfreeze -f /proc" not in calls_log.read_text():
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    t0 = time.monotonic()
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    took["SIGTERM to exit"] = time.monotonic() - t0
    assert run.returncode == 143, err
    assert calls() == ["pre", "fsfreeze -f /dev/shm", "fsfreeze -f /proc", "fsfreeze -u /proc",
                       "fsfreeze -u /dev/shm", "post failed"]
    aws.proxy.delays.clear()
    # The interrupted CreateSnapshots still reached EC2 (the proxy held it 5 s): its snapshots were
    # found by the later looks and deleted; only the partial run's set remains.
    assert len(aws.snapshots()) == 3 and [s["id"] for s in json.loads(aws.run("snapshots", "app", "--json").stdout)] \
        == [out["snapshot"]]

    # Freeze paths and regions: one line, exit 2, nothing run.
    for freeze, message in ((["/."], "refusing to freeze /"), (["/dev/shm/../.."], "must not contain '..'"),
                            (["/usr/share"], "is not a mount point")):
        aws.job("app", volumes="all", pre=hook("pre"), freeze=freeze)
        proc = aws.run("run", "app")
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert calls() == []
    aws.job("app", volumes="all", copy_to_regions=["eu-west1"])
    proc = aws.run("validate")
    assert proc.returncode == 2 and "copy_to_regions[0]: must be a region name" in proc.stderr
    record("dumps.ebs_hooks", cases=6,
           result="pre failing and pre hanging past hook_timeout: exit 1, post runs with BACKUP_AGENT_RESULT=failed, "
                  "no snapshot; post failing after a complete capture: exit 3, status partial, the set kept and "
                  "listed; SIGTERM between freeze and thaw with CreateSnapshots in flight: exit 143, thawed in "
                  "reverse order, post runs, the snapshots the interrupted call still made deleted; freeze /., a "
                  "path resolving to / and a non-mount point: exit 2 with one line; an invalid copy region: exit 2 "
                  "with one line",
           measured=", ".join(f"{k} {v:.1f}s" for k, v in took.items()))
