"""Running a command job's program: as another user, with a clean environment, in its own process
group, its stderr rate-limited into the log, and a deadline after which the whole group is
stopped."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_agent.errors import ConfigError, JobFailed

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20  # a 1 MiB pipe (the unprivileged maximum) means fewer, larger reads
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
STDERR_TAIL = 5
STDERR_BURST = 20  # stderr lines logged at once; then one per STDERR_REFILL seconds
STDERR_REFILL = 5.0
STDERR_CHUNK = 64 << 10
LINE_MAX = 2000  # characters of one stderr line kept; the rest of the line is skipped unread
# Credentials the agent itself may hold; a command run as another user must not inherit them.
AGENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str


def resolve_user(name: str | None, where: str) -> RunAs | None:
    if not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{where}.user: no such user '{name}' on this node") from None
    if pw.pw_uid == os.geteuid():
        return None  # already that user: nothing to switch
    if os.geteuid() != 0:
        raise ConfigError(f"{where}.user: running the command as '{name}' needs the agent to run as root")
    groups = os.getgrouplist(name, pw.pw_gid)
    return RunAs(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def child_env(base: dict[str, str], job_env: dict[str, str], extra: dict[str, str],
              run_as: RunAs | None) -> dict[str, str]:
    env = dict(base)
    if run_as is not None:
        for key in AGENT_SECRETS:
            env.pop(key, None)
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    # The preset's settings win over inherited ones (a stray PGHOST must not redirect a dump);
    # the job's own env wins over both, as the most explicit.
    return {**env, **extra, **job_env}


class StderrLog:
    """A command's stderr into the log, bounded in memory and in log volume.

    Read in chunks, never by line: one 100 MB line without a newline is cut at LINE_MAX and the
    rest skipped. A burst of STDERR_BURST lines is logged at once, then one line per
    STDERR_REFILL seconds (a dump warning now and then in a long run still shows); the rest is
    counted and, at the end, summarised with the last STDERR_TAIL lines.
    """

    def __init__(self, job: str, label: str, redact: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.label, self.redact = job, label, redact
        self.clock = clock
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.unlogged: deque[str] = deque(maxlen=STDERR_TAIL)  # the last lines the limit held back
        self.dropped = 0
        self.tokens = float(STDERR_BURST)
        self.refilled = clock()
        self.partial = bytearray()
        self.cut = False  # the current line is longer than LINE_MAX: the rest is skipped

    def feed(self, chunk: bytes) -> None:
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            if not self.cut:
                room = LINE_MAX - len(self.partial)
                self.partial += piece[:room]
                self.cut = len(piece) > room
            if i < len(lines) - 1:  # a newline ended this piece
                self._line(bytes(self.partial))
                self.partial.clear()
                self.cut = False

    def close(self) -> None:
        if self.partial:
            self._line(bytes(self.partial))
            self.partial.clear()
        if self.dropped:
            log.warning("job %s: %s: %d more stderr line(s) not logged (rate limit); the last: %s", self.job,
                        self.label, self.dropped, " | ".join(self.unlogged))
            self.dropped = 0

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if self.cut:
            line += " [line cut]"
        if self.redact:
            line = line.replace(self.redact, "***")
        self.tail.append(line)
        now = self.clock()
        self.tokens = min(float(STDERR_BURST), self.tokens + (now - self.refilled) / STDERR_REFILL)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            log.warning("job %s: %s: %s", self.job, self.label, line)
        else:
            self.dropped += 1
            self.unlogged.append(line)


class Child:
    """A command in its own process group, its stderr sent to the log, and a deadline.

    The command's end is its group's end: once the program itself exits, members of its process
    group still running (a background child holding stdout open, say) are killed, so a job can
    never wait on a process it did not ask for.
    """

    def __init__(self, argv: list[str], env: dict[str, str], run_as: RunAs | None, *, job: str,
                 redact: str | None = None, stdin: int | None = subprocess.DEVNULL,
                 stdout: int | None = subprocess.PIPE, timeout: float | None = None) -> None:
        self.label = os.path.basename(argv[0]) if argv else "command"
        self.job = job
        self.stderr = StderrLog(job, self.label, redact or None)
        self.timed_out = False
        self.leftovers = False
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=run_as.groups,
                          cwd=run_as.home if os.path.isdir(run_as.home) else "/")
        try:
            # A new session: a timeout kills the whole pipeline (sh -c 'a | b'), not just its head,
            # and a Ctrl-C at the terminal reaches the agent, which then cleans up in order.
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env,
                                         start_new_session=True, **kwargs)
        except OSError as exc:
            raise JobFailed(f"job {job}: cannot start {argv[0]}: {exc.strerror or exc}") from None
        self._stderr = threading.Thread(target=self._read_stderr, name=f"{self.label}-stderr", daemon=True)
        self._stderr.start()
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()
        if stdout == subprocess.PIPE and self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    @property
    def tail(self) -> deque[str]:
        return self.stderr.tail

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        try:
            while chunk := os.read(fd, STDERR_CHUNK):
                self.stderr.feed(chunk)
        except OSError:
            pass
        self.stderr.close()

    def _on_timeout(self) -> None:
        self.timed_out = True
        log.warning("job %s: %s still running at the timeout: stopping it", self.job, self.label)
        self.kill()

    def exited(self) -> bool:
        """True once the program itself has exited; it stays unreaped (its pid keeps naming the
        group, so a later killpg cannot reach an unrelated process that reused the number)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0

    def kill_leftovers(self) -> None:
        """The program exited (unreaped): kill what is left of its process group."""
        others = _group_members(self.proc.pid) - {self.proc.pid}
        if others:
            self.leftovers = True
            log.warning("job %s: %s exited, but %d process(es) it started still run (holding its output "
                        "open?): killing them", self.job, self.label, len(others))
        self._signal(signal.SIGKILL)

    def kill(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a grace period."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        # Members of the group that outlive the leader still get the KILL.
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
            self.kill_leftovers()
        code = self.proc.wait()
        if self._timer is not None:
            self._timer.cancel()
        # stderr ends when the last holder dies; one that escaped the group must not hold us.
        self._stderr.join(5)
        return code

    def failure(self, code: int, timeout: float | None) -> str:
        """One line: why the command failed, with the end of its stderr."""
        if self.timed_out:
            why = f"{self.label} timed out after {timeout:g}s"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = f"{self.label} was killed by {name}"
        else:
            why = f"{self.label} exited with status {code}"
        said = " | ".join(self.tail)
        return f"{why}: {said}" if said else why


def _group_members(pgid: int) -> set[int]:
    """Processes of a process group, from /proc (a zombie leader still counts for killpg)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.add(int(name))
    return found
