"""Application-consistent capture: `pre`/`post` commands and fsfreeze around a short critical section.

    pre → freeze → capture → thaw → post

- `post` runs whenever `pre` started: after a `pre` that failed or timed out (it may have stopped
  the application half-way), a failed capture, a hook failure in between, or SIGTERM (it gets
  BACKUP_AGENT_RESULT=success|failed). Without `pre`, it always runs.
- Every mountpoint the agent tried to freeze is thawed in a `finally`, with a hard timeout per
  command. A watchdog thread thaws them if the capture outlives the timeout, and a guardian
  process in its own session does so a little later even if the agent itself is SIGKILLed: a
  frozen filesystem blocks every writer on the node, which is worse than a missed backup.
- SIGTERM and SIGINT raise `Terminated` in the main thread during the section so the cleanup
  runs; a signal arriving during cleanup waits until the cleanup is done.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

from backup_agent.errors import JobFailed

log = logging.getLogger(__name__)


class HookFailed(JobFailed):
    """A hook or fsfreeze command failed, hung, or could not start."""


class PostHookFailed(HookFailed):
    """`post` failed after a successful capture: what was captured is complete and kept."""


class Terminated(BaseException):
    """SIGTERM arrived while the job held hooks or frozen filesystems.

    A BaseException, like KeyboardInterrupt: libraries that retry on `except Exception` (botocore
    does, around the HTTP call) must not swallow it. Callers turn it into JobFailed after cleanup.
    """


class FreezeExpired(JobFailed):
    """The watchdog thawed the filesystems before the capture returned: it is not consistent."""


def run_command(argv: Sequence[str], *, timeout: float, what: str, env: dict[str, str] | None = None) -> None:
    """Run argv (no shell) with a hard timeout; the whole process group dies on timeout or interrupt."""
    shown = shlex.join(argv)
    started = time.monotonic()
    # Output goes to a file, not a pipe: a hook that leaves a background child holding the pipe
    # open must not make us wait for that child.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        except OSError as exc:
            raise HookFailed(f"{what}: cannot start `{shown}`: {exc.strerror or exc}") from None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise HookFailed(f"{what}: `{shown}` did not finish within {timeout:g}s (killed)") from None
        except BaseException:
            _kill(proc)
            raise
        out.seek(0)
        tail = out.read()[-2000:].decode(errors="replace").strip()
    if code != 0:
        last = tail.splitlines()[-1][:200] if tail else "no output"
        raise HookFailed(f"{what}: `{shown}` exited with {_exit_text(code)}: {last}")
    log.info("%s: `%s` ok in %.1fs", what, shown, time.monotonic() - started)
    if tail:
        log.debug("%s output: %s", what, tail)


def _kill(proc: subprocess.Popen[Any]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


GUARDED = (signal.SIGTERM, signal.SIGINT)  # SIGINT: Ctrl-C, and how the daemon aborts a run


class SignalGuard:
    """While active (main thread only), SIGTERM/SIGINT raise Terminated once; later ones are deferred."""

    def __init__(self) -> None:
        self.active = False
        self.received: int | None = None
        self.raised = False
        self._depth = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        # signal.signal only works in the main thread; a caller running jobs in worker threads
        # handles signals itself and waits for the job.
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            self._old = {sig: signal.signal(sig, self._handler) for sig in GUARDED}
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.active:
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self.active = False
        old = self._old.get(self.received or 0)
        if callable(old) and old is not signal.default_int_handler:
            old(self.received, None)  # let whoever installed it know too (e.g. a daemon loop)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum
        if self._depth == 0 and not self.raised:
            self.raised = True
            raise Terminated(f"interrupted by {signal.Signals(signum).name}")
        log.warning("%s received: finishing cleanup first", signal.Signals(signum).name)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A cleanup section: a signal is remembered, and raised only once the cleanup is done."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.received and not self.raised and self._depth == 0:
            self.raised = True
            raise Terminated(f"interrupted by {signal.Signals(self.received).name}")


# The guardian fires this long after the in-process watchdog would have, so normally it never does.
GUARDIAN_GRACE = 10.0


def find_fsfreeze() -> str:
    found = shutil.which("fsfreeze") or next(
        (p for p in ("/usr/sbin/fsfreeze", "/sbin/fsfreeze") if os.access(p, os.X_OK)), None)
    if not found:
        raise HookFailed("freeze: fsfreeze not found on PATH (package util-linux)")
    return found


class Freezer:
    """Freezes mountpoints and guarantees each one it touched gets a thaw attempt, exactly once."""

    def __init__(self, mounts: Sequence[str], *, timeout: float, max_frozen: float, fsfreeze: str) -> None:
        self.mounts = list(mounts)
        self.timeout = timeout
        self.max_frozen = max_frozen
        self.fsfreeze = fsfreeze
        self.lock = threading.Lock()
        self.frozen: list[str] = []  # confirmed frozen
        self.unsure: list[str] = []  # freeze failed or timed out: it may have frozen anyway
        self.expired = False
        self.errors: list[str] = []
        self._watchdog: threading.Timer | None = None
        self._guardian: subprocess.Popen[bytes] | None = None

    def freeze(self) -> None:
        self._start_guardian()
        for mount in self.mounts:
            with self.lock:
                self.unsure.append(mount)
            run_command([self.fsfreeze, "-f", mount], timeout=self.timeout, what=f"freeze {mount}")
            with self.lock:
                self.unsure.remove(mount)
                self.frozen.append(mount)
        self._watchdog = threading.Timer(self.max_frozen, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _expire(self) -> None:
        with self.lock:
            if not self.frozen:
                return
            self.expired = True
        log.error("filesystems frozen for %gs: thawing them now, the capture will not be used", self.max_frozen)
        self.thaw()

    def thaw(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        with self.lock:
            for mount in reversed(self.frozen):
                self._thaw_one(mount, must=True)
            for mount in reversed(self.unsure):
                self._thaw_one(mount, must=False)
            self.frozen.clear()
            self.unsure.clear()
            if self._guardian is not None:
                _kill(self._guardian)
                self._guardian = None

    def _start_guardian(self) -> None:
        """A process that thaws everything after the deadline unless killed first.

        It outlives the agent (own session, so a daemon's killpg of the run misses it too): the
        last line of defence when the agent is SIGKILLed, OOM-killed or wedged while frozen.
        """
        deadline = self.timeout * len(self.mounts) + self.max_frozen + GUARDIAN_GRACE
        script = 'sleep "$1"; f=$2; shift 2; for m in "$@"; do "$f" -u "$m"; done'
        try:
            self._guardian = subprocess.Popen(
                ["sh", "-c", script, "backup-agent-thaw-guardian", f"{deadline:g}", self.fsfreeze, *self.mounts],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            raise HookFailed(f"freeze: cannot start the thaw guardian: {exc.strerror or exc}") from None

    def _thaw_one(self, mount: str, *, must: bool) -> None:
        last: HookFailed | None = None
        for _ in range(2 if must else 1):
            try:
                run_command([self.fsfreeze, "-u", mount], timeout=self.timeout, what=f"thaw {mount}")
                return
            except HookFailed as exc:
                last = exc
        if must and last is not None:
            msg = f"{last}; {mount} may still be frozen: run `fsfreeze -u {mount}`"
            log.error("%s", msg)
            self.errors.append(msg)


@contextmanager
def consistent(*, pre: Sequence[str] | None, post: Sequence[str] | None, freeze: Sequence[str] | None,
               timeout: float, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run the body between the job's hooks; see the module docstring for the guarantees."""
    env = dict(env or {})
    fsfreeze = find_fsfreeze() if freeze else ""
    with SignalGuard() as guard:
        failure: BaseException | None = None
        try:
            if pre:
                run_command(pre, timeout=timeout, what="pre hook", env={**env, "BACKUP_AGENT_HOOK": "pre"})
            if freeze:
                with _frozen(Freezer(freeze, timeout=timeout, max_frozen=timeout, fsfreeze=fsfreeze), guard):
                    yield
            else:
                yield
        except BaseException as exc:
            failure = exc
            raise
        finally:
            if post:
                with guard.deferred():
                    _post(post, timeout, env, failure)


@contextmanager
def _frozen(freezer: Freezer, guard: SignalGuard) -> Iterator[None]:
    try:
        freezer.freeze()
        yield
    finally:
        with guard.deferred():
            freezer.thaw()
    if freezer.expired:
        raise FreezeExpired(f"the capture took longer than {freezer.max_frozen:g}s (hook_timeout) with "
                            "filesystems frozen; they were thawed first, so it was discarded")
    if freezer.errors:
        raise HookFailed("; ".join(freezer.errors))


def _post(post: Sequence[str], timeout: float, env: dict[str, str], failure: BaseException | None) -> None:
    result = "failed" if failure is not None else "success"
    try:
        run_command(post, timeout=timeout, what="post hook",
                    env={**env, "BACKUP_AGENT_HOOK": "post", "BACKUP_AGENT_RESULT": result})
    except HookFailed as exc:
        if failure is None:
            raise PostHookFailed(str(exc)) from None
        log.error("%s", exc)  # the capture's own failure is the one to report
