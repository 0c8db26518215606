"""pre/post hooks and fsfreeze: order, timeouts, failures, the watchdog and SIGTERM.

A fake `fsfreeze` on PATH records its calls (and can be told to hang or fail), so no real
filesystem is ever frozen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_agent import hooks
from backup_agent.hooks import FreezeExpired, HookFailed, PostHookFailed, Terminated, consistent, run_command

FAKE_FSFREEZE = """#!/bin/sh
# Records "fsfreeze ARGS"; FAKE_FSFREEZE_HANG_ON / FAKE_FSFREEZE_FAIL_ON match "-f /mnt" style args.
echo "fsfreeze $*" >> "$FAKE_LOG"
[ "$*" = "$FAKE_FSFREEZE_HANG_ON" ] && exec sleep 60
[ "$*" = "$FAKE_FSFREEZE_FAIL_ON" ] && { echo "fsfreeze: $2: Operation not supported" >&2; exit 1; }
exit 0
"""


def write_fake_fsfreeze(bindir: Path) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / "fsfreeze"
    script.write_text(FAKE_FSFREEZE)
    script.chmod(0o755)


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    write_fake_fsfreeze(tmp_path / "bin")
    path = tmp_path / "calls.log"
    path.touch()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(path))
    yield path


def calls(log: Path) -> list[str]:
    return [line.rstrip() for line in log.read_text().splitlines()]


def rec(log: Path, word: str) -> list[str]:
    """A hook command that appends `word` (and what the agent told it) to the call log."""
    return ["sh", "-c", f'echo "{word} $BACKUP_AGENT_HOOK ${{BACKUP_AGENT_RESULT:-}}" >> {log}']


def test_order_pre_freeze_body_thaw_post(log: Path) -> None:
    with consistent(pre=rec(log, "pre"), post=rec(log, "post"), freeze=["/data", "/logs"], timeout=5):
        log.open("a").write("body\n")
    assert calls(log) == ["pre pre", "fsfreeze -f /data", "fsfreeze -f /logs", "body",
                          "fsfreeze -u /logs", "fsfreeze -u /data", "post post success"]


def test_failed_body_still_thaws_and_runs_post(log: Path) -> None:
    with pytest.raises(RuntimeError), consistent(pre=rec(log, "pre"), post=rec(log, "post"), freeze=["/data"],
                                                 timeout=5):
        raise RuntimeError("CreateSnapshots failed")
    assert calls(log)[-2:] == ["fsfreeze -u /data", "post post failed"]


def test_failing_pre_runs_only_post(log: Path) -> None:
    with pytest.raises(HookFailed, match=r"pre hook: .* exited with status 3: nope"), consistent(
            pre=["sh", "-c", "echo nope; exit 3"], post=rec(log, "post"), freeze=["/data"], timeout=5):
        pytest.fail("body must not run")
    # No freeze, no body; post runs, told the run failed (pre may have stopped the application).
    assert calls(log) == ["post post failed"]


def test_hanging_pre_is_killed_and_post_runs(log: Path) -> None:
    with pytest.raises(HookFailed, match=r"did not finish within 0\.5s"), consistent(
            pre=["sleep", "30"], post=rec(log, "post"), freeze=None, timeout=0.5):
        pytest.fail("body must not run")
    assert calls(log) == ["post post failed"]


def test_failing_post_after_success_is_reported(log: Path) -> None:
    with pytest.raises(PostHookFailed, match="post hook"), consistent(
            pre=None, post=["sh", "-c", "exit 1"], freeze=None, timeout=5):
        pass


def test_failing_post_does_not_hide_the_capture_error(log: Path) -> None:
    with pytest.raises(RuntimeError, match="the real error"), consistent(
            pre=None, post=["sh", "-c", "exit 1"], freeze=None, timeout=5):
        raise RuntimeError("the real error")


def test_hanging_hook_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    t0 = time.monotonic()
    with pytest.raises(HookFailed, match=r"did not finish within 0.5s \(killed\)"):
        run_command(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], timeout=0.5, what="pre hook")
    assert time.monotonic() - t0 < 5
    status = Path(f"/proc/{int(pidfile.read_text())}/status")
    time.sleep(0.1)
    # Gone, or a zombie waiting for an init that does not reap (as in some containers).
    assert not status.exists() or "State:\tZ" in status.read_text()


def test_missing_command_is_one_line() -> None:
    with pytest.raises(HookFailed, match="cannot start `/nonexistent/hook`"):
        run_command(["/nonexistent/hook"], timeout=1, what="pre hook")


def test_freeze_failure_thaws_what_was_frozen(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FSFREEZE_FAIL_ON", "-f /logs")
    with pytest.raises(HookFailed, match="freeze /logs"), consistent(
            pre=None, post=rec(log, "post"), freeze=["/data", "/logs"], timeout=5):
        pytest.fail("no capture with a filesystem that did not freeze")
    # /logs is thawed too: a freeze that failed halfway may still have taken effect.
    assert calls(log) == ["fsfreeze -f /data", "fsfreeze -f /logs", "fsfreeze -u /data", "fsfreeze -u /logs",
                          "post post failed"]


def test_watchdog_thaws_a_capture_that_takes_too_long(log: Path) -> None:
    with pytest.raises(FreezeExpired, match="thawed"), consistent(pre=None, post=None, freeze=["/data"],
                                                                  timeout=0.5):
        time.sleep(1.5)
        assert calls(log)[-1] == "fsfreeze -u /data", "thawed while the capture was still running"
    assert calls(log).count("fsfreeze -u /data") == 1


def test_hanging_thaw_is_killed_retried_and_reported(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FSFREEZE_HANG_ON", "-u /data")
    with pytest.raises(HookFailed, match=r"may still be frozen: run `fsfreeze -u /data`"), consistent(
            pre=None, post=rec(log, "post"), freeze=["/data"], timeout=0.5):
        pass
    assert calls(log) == ["fsfreeze -f /data", "fsfreeze -u /data", "fsfreeze -u /data", "post post failed"]


def test_sigterm_between_freeze_and_thaw(log: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"), consistent(pre=rec(log, "pre"), post=rec(log, "post"),
                                                                freeze=["/data"], timeout=5):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        pytest.fail("SIGTERM did not interrupt the capture")
    assert calls(log) == ["pre pre", "fsfreeze -f /data", "fsfreeze -u /data", "post post failed"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_cleanup_waits_for_the_cleanup(log: Path) -> None:
    post = ["sh", "-c", f'kill -TERM {os.getpid()}; sleep 0.3; echo "post done" >> {log}']
    with pytest.raises(Terminated), consistent(pre=None, post=post, freeze=["/data"], timeout=5):
        pass
    assert calls(log) == ["fsfreeze -f /data", "fsfreeze -u /data", "post done"]


def test_sigterm_is_passed_on_to_the_previous_handler(log: Path) -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(Terminated), consistent(pre=None, post=None, freeze=["/data"], timeout=5):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen == [signal.SIGTERM]


def test_fsfreeze_missing_is_reported_before_any_hook(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks.shutil, "which", lambda name: None)
    monkeypatch.setattr(hooks.os, "access", lambda path, mode: False)
    with pytest.raises(HookFailed, match="fsfreeze not found"), consistent(
            pre=rec(log, "pre"), post=None, freeze=["/data"], timeout=5):
        pass
    assert calls(log) == []


def test_sigint_is_guarded_like_sigterm(log: Path) -> None:
    # Whatever this process started with: SIG_IGN when its shell ran it in the background.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated, match="SIGINT"), consistent(pre=None, post=rec(log, "post"), freeze=["/data"],
                                                               timeout=5):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert calls(log) == ["fsfreeze -f /data", "fsfreeze -u /data", "post post failed"]
    assert signal.getsignal(signal.SIGINT) is before


GUARDED_RUN = """
import sys, time
from backup_agent import hooks
hooks.GUARDIAN_GRACE = 0.2
with hooks.consistent(pre=None, post=None, freeze=["/data"], timeout=0.3):
    print("frozen", flush=True)
    time.sleep(60)
"""


def test_guardian_thaws_after_the_agent_is_killed(log: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", GUARDED_RUN], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "frozen"
    proc.kill()  # SIGKILL: no finally, no watchdog thread
    proc.wait()
    deadline = time.monotonic() + 10
    while "fsfreeze -u /data" not in calls(log):
        assert time.monotonic() < deadline, "nobody thawed /data"
        time.sleep(0.05)
    assert calls(log) == ["fsfreeze -f /data", "fsfreeze -u /data"]
