"""Application-consistent `ebs_snapshot` runs through the real CLI: hooks that fail or hang, fsfreeze
that must always be undone, and SIGTERM between freeze and thaw. `fsfreeze` is a fake on PATH
that records its calls."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_aws import AGENT, CREDS, EbsEnv, ebs_env, shared_moto
from test_hooks import write_fake_fsfreeze


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EbsEnv]:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    write_fake_fsfreeze(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    (tmp_path / "calls.log").touch()
    with ebs_env(shared_moto(), tmp_path) as env:
        yield env


def calls(aws: EbsEnv) -> list[str]:
    return [line.rstrip() for line in (aws.path.parent / "calls.log").read_text().splitlines()]


def hook(aws: EbsEnv, word: str, then: str = "") -> list[str]:
    log = aws.path.parent / "calls.log"
    return ["sh", "-c", f'echo "{word} ${{BACKUP_AGENT_RESULT:-}}" >> {log}; {then}']


def test_freeze_and_hooks_around_the_snapshot(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre"), post=hook(aws, "post"), freeze=["/data"])
    out = aws.json("run", "app")
    assert len(out["ebs_snapshots"]) == 3
    assert calls(aws) == ["pre", "fsfreeze -f /data", "fsfreeze -u /data", "post success"]


def test_failing_pre_hook_takes_no_snapshot(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre", "exit 4"), post=hook(aws, "post"), freeze=["/data"])
    proc = aws.run("run", "app")
    assert proc.returncode == 1
    assert "pre hook" in proc.stderr and "status 4" in proc.stderr and "Traceback" not in proc.stderr
    assert calls(aws) == ["pre"], "no freeze, no post: pre never succeeded"
    assert aws.proxy.actions("CreateSnapshots") == [] and aws.snapshots() == []


def test_hanging_pre_hook_times_out(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre", "sleep 60"), hook_timeout=1)
    t0 = time.monotonic()
    proc = aws.run("run", "app")
    assert proc.returncode == 1 and "did not finish within 1s" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert aws.snapshots() == []


def test_failing_post_hook_keeps_the_complete_snapshot(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post", "exit 1"), freeze=["/data"])
    proc = aws.run("run", "app")
    assert proc.returncode == 1
    assert "was taken (3 EBS snapshots), but then: post hook" in proc.stderr
    assert calls(aws) == ["fsfreeze -f /data", "fsfreeze -u /data", "post success"]
    assert len(aws.snapshots()) == 3


def test_snapshot_call_failing_still_thaws_and_runs_post(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post"), freeze=["/data"])
    aws.proxy.denied.add("CreateSnapshots")
    proc = aws.run("run", "app")
    assert proc.returncode == 1
    assert "UnauthorizedOperation" in proc.stderr and "docs/IAM.md" in proc.stderr
    assert calls(aws) == ["fsfreeze -f /data", "fsfreeze -u /data", "post failed"]
    assert aws.snapshots() == []


def test_capture_slower_than_hook_timeout_is_discarded(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post"), freeze=["/data"], hook_timeout=1)
    aws.proxy.delays["CreateSnapshots"] = 2.5
    proc = aws.run("run", "app")
    assert proc.returncode == 1 and "thawed first, so it was discarded" in proc.stderr
    assert calls(aws) == ["fsfreeze -f /data", "fsfreeze -u /data", "post failed"]
    assert aws.snapshots() == [], "a snapshot taken after the thaw is not kept"


def test_sigterm_between_freeze_and_thaw(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre"), post=hook(aws, "post"), freeze=["/data", "/logs"])
    aws.proxy.delays["CreateSnapshots"] = 5
    proc = subprocess.Popen([AGENT, "-c", str(aws.path), "run", "app"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **CREDS})
    deadline = time.monotonic() + 60
    while "fsfreeze -f /logs" not in calls(aws) or "CreateSnapshots" not in aws.proxy.actions():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert calls(aws) == ["pre", "fsfreeze -f /data", "fsfreeze -f /logs", "fsfreeze -u /logs", "fsfreeze -u /data",
                          "post failed"]
