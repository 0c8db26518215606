"""Application-consistent `ebs_snapshot` runs through the real CLI: hooks that fail or hang, fsfreeze
that must always be undone, and SIGTERM between freeze and thaw. `fsfreeze` is a fake on PATH
that records its calls."""

from __future__ import annotations

import json
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
    aws.job("app", volumes="all", pre=hook(aws, "pre"), post=hook(aws, "post"), freeze=["/dev/shm"])
    out = aws.json("run", "app")
    assert len(out["ebs_snapshots"]) == 3
    assert calls(aws) == ["pre", "fsfreeze -f /dev/shm", "fsfreeze -u /dev/shm", "post success"]


def test_failing_pre_hook_takes_no_snapshot_and_still_runs_post(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre", "exit 4"), post=hook(aws, "post"), freeze=["/dev/shm"])
    proc = aws.run("run", "app")
    assert proc.returncode == 1
    assert "pre hook" in proc.stderr and "status 4" in proc.stderr and "Traceback" not in proc.stderr
    # pre may have stopped the application before failing: post starts it again; no freeze.
    assert calls(aws) == ["pre", "post failed"]
    assert aws.proxy.actions("CreateSnapshots") == [] and aws.snapshots() == []


def test_hanging_pre_hook_times_out(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre", "sleep 60"), post=hook(aws, "post"), hook_timeout=1)
    t0 = time.monotonic()
    proc = aws.run("run", "app")
    assert proc.returncode == 1 and "did not finish within 1s" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert aws.snapshots() == []
    assert calls(aws) == ["pre", "post failed"]


def test_failing_post_hook_keeps_the_complete_snapshot_as_partial(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post", "exit 1"), freeze=["/dev/shm"])
    proc = aws.run("run", "app", "--json")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "partial" and out["post_hook_failed"] is True and len(out["ebs_snapshots"]) == 3
    assert any("taken (3 EBS snapshots) and kept, but then: post hook" in w for w in out["warnings"])
    assert calls(aws) == ["fsfreeze -f /dev/shm", "fsfreeze -u /dev/shm", "post success"]
    assert len(aws.snapshots()) == 3
    status = json.loads((aws.path.parent / "state" / "status" / "app.json").read_text())
    assert status["result"] == "partial" and status["exit_code"] == 3


def test_snapshot_call_failing_still_thaws_and_runs_post(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post"), freeze=["/dev/shm"])
    aws.proxy.denied.add("CreateSnapshots")
    proc = aws.run("run", "app")
    assert proc.returncode == 1
    assert "UnauthorizedOperation" in proc.stderr and "docs/IAM.md" in proc.stderr
    assert calls(aws) == ["fsfreeze -f /dev/shm", "fsfreeze -u /dev/shm", "post failed"]
    assert aws.snapshots() == []


def test_capture_slower_than_hook_timeout_is_discarded(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", post=hook(aws, "post"), freeze=["/dev/shm"], hook_timeout=1)
    aws.proxy.delays["CreateSnapshots"] = 2.5
    proc = aws.run("run", "app")
    assert proc.returncode == 1 and "thawed first, so it was discarded" in proc.stderr
    assert calls(aws) == ["fsfreeze -f /dev/shm", "fsfreeze -u /dev/shm", "post failed"]
    assert aws.snapshots() == [], "a snapshot taken after the thaw is not kept"


def test_sigterm_between_freeze_and_thaw(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre"), post=hook(aws, "post"), freeze=["/dev/shm", "/proc"])
    aws.proxy.delays["CreateSnapshots"] = 5
    proc = subprocess.Popen([AGENT, "-c", str(aws.path), "run", "app"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **CREDS})
    deadline = time.monotonic() + 60
    while "fsfreeze -f /proc" not in calls(aws) or "CreateSnapshots" not in aws.proxy.actions():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM: the run was aborted
    assert "SIGTERM" in err and "Traceback" not in err
    assert calls(aws) == ["pre", "fsfreeze -f /dev/shm", "fsfreeze -f /proc", "fsfreeze -u /proc",
                          "fsfreeze -u /dev/shm", "post failed"]


@pytest.mark.parametrize(("freeze", "message"), [
    (["/."], "freeze[0]: refusing to freeze / ('/'"),  # normalised when the config loads
    (["/dev/shm", "/dev/shm/../.."], "freeze[1]: '/dev/shm/../..' must not contain '..'"),
    (["/usr/share"], "freeze[0]: /usr/share is not a mount point"),
])
def test_freeze_paths_must_be_mount_points_other_than_root(aws: EbsEnv, freeze: list[str], message: str) -> None:
    aws.job("app", volumes="all", pre=hook(aws, "pre"), freeze=freeze)
    proc = aws.run("run", "app")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert calls(aws) == [] and aws.snapshots() == []


def test_invalid_copy_region_is_a_config_error(aws: EbsEnv) -> None:
    aws.job("app", volumes="all", copy_to_regions=["eu-west-1", "eu-west1"])
    proc = aws.run("validate")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("jobs.app.copy_to_regions[1]: must be a region name like us-east-1, "
                                        "not 'eu-west1'"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
