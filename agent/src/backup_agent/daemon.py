"""`backup-agent daemon`: run every job on its schedule until SIGTERM/SIGINT; SIGHUP reloads.

Each run is a child process (`backup-agent run JOB`) in its own session, so:
- aborting a run at shutdown is clean (a snapshot only becomes visible when its manifest is
  uploaded, and the run's own cleanup still happens: it gets SIGINT first, SIGKILL only later);
- the daemon itself never imports boto3 and stays small;
- the child gets the config the daemon validated on its stdin, never on argv (secrets) and
  never re-read from disk (a bad edit followed by SIGHUP must not reach the next run).

The main loop sleeps until the next run is due or a signal arrives (set_wakeup_fd), so an idle
daemon costs nothing but a wake-up a minute.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import schedule

from backup_agent import config as config_mod
from backup_agent.config import Config, Job
from backup_agent.errors import EXIT_OK, EXIT_PARTIAL, EXIT_TEMPFAIL, ConfigError, Locked
from backup_agent.execute import DAEMON_PID_ENV, record_failure
from backup_agent.live import DEFAULT_MIN_INTERVAL, DEFAULT_SETTLE, LiveJob
from backup_agent.logfmt import secret_values, setup_logging
from backup_agent.scheduler import PlannedJob, add_job, admit, can_start, make_plan
from backup_agent.schedules import CONTINUOUS, parse_schedule
from backup_agent.state import atomic_write, read_status
from backup_agent.status import daemon_state_path, read_daemon_state

log = logging.getLogger("backup_agent.daemon")

# After SIGINT a run gets this long to clean up before SIGKILL.
ABORT_GRACE = 10.0
# A job's `timeout` is enforced by the job itself where it can (command jobs stop their
# command); the daemon stops the whole run only if it is still going this much later.
TIMEOUT_GRACE = 60.0
# At exit, notifications still in flight (about aborted runs) get this long in total.
NOTIFY_GRACE = 5.0
# Scheduler keys of drills: the job's name and this, never a job name (names have no ':').
DRILL_SUFFIX = ":drill"
# Longest sleep while idle: bounds the effect of clock jumps and suspend/resume.
IDLE_WAKE = 60.0
# While runs are going, wake up this often to enforce timeouts and kill deadlines.
BUSY_WAKE = 1.0


def load_snapshot(path: str) -> tuple[Config, str]:
    """The config and the exact text it was validated from (what the runs will get)."""
    return config_mod.load_with_text(path)


def single_instance(state_dir: Path) -> int:
    """Hold `state_dir/daemon.lock` for the daemon's lifetime: two daemons would both start
    every run. The kernel drops the lock with the process, so a crash leaves nothing stale."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Locked(f"another daemon (pid {holder}) is running with state_dir {state_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op anywhere else."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify: %s", exc)


def _rfc3339(t: datetime) -> str:
    """Naive local (the `schedule` library's) or aware time → RFC 3339 UTC, whole seconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(text: Any) -> datetime | None:
    """RFC 3339 from state_dir → naive local time, the library's frame."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.astimezone().replace(tzinfo=None) if t.tzinfo else t


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Run:
    """A job process the daemon started."""

    job: Job
    cfg: Config
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    started_text: str = field(default_factory=lambda: _rfc3339(datetime.now(UTC)))
    abort_reason: str | None = None
    kill_at: float | None = None


class Daemon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.cfg, self.text = load_snapshot(path)
        self.verbose = logging.getLogger().level == logging.DEBUG
        self.scheduler = schedule.Scheduler()
        self.planned: dict[str, PlannedJob] = {}
        # schedule: continuous jobs, run on changes (live.py) rather than by the library
        self.live: dict[str, tuple[tuple[Any, ...], LiveJob]] = {}
        # Restore drills on their own schedules (`drill.schedule`): job name → its planned drill,
        # and the drills going now (never two of one job at once).
        self.planned_drills: dict[str, PlannedJob] = {}
        self.drills: dict[str, subprocess.Popen[bytes]] = {}
        self.runs: dict[str, Run] = {}
        self.queue: deque[str] = deque()
        self.stop_signals = 0
        self.reload_requested = False
        self.stop_deadline: float | None = None
        self.pending_notifications: list[Any] = []
        self.started_text = _rfc3339(datetime.now(UTC))
        self._written: dict[str, Any] | None = None
        self._state_error: str | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # --- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set flags: the main loop acts on them (handlers may run at any bytecode).
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_signals += 1
        elif signum == signal.SIGHUP:
            self.reload_requested = True

    def _install_signals(self) -> None:
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # SIGCHLD only wakes the loop (through the wakeup fd) so a finished run is reaped at once.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()

    def _sleep(self, seconds: float) -> None:
        # A change under a continuous job's paths wakes the loop too.
        fds = [self._wake_r.fileno(), *(lj.fileno() for _key, lj in self.live.values())]
        select.select(fds, [], [], max(0.01, seconds))
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(512):
                pass

    # --- the loop ------------------------------------------------------------------------------

    def serve(self) -> int:
        lock = single_instance(self.cfg.state_dir)
        self._install_signals()
        try:
            self._plan(self.cfg)
            log.info("daemon started (pid %d): %d job(s) scheduled, max_parallel_jobs=%d, config %s",
                     os.getpid(), len(self.planned), self.cfg.max_parallel_jobs, self.path)
            self._write_metrics(self.cfg)
            sd_notify("READY=1")
            while True:
                if self.reload_requested and not self.stop_signals:
                    self.reload_requested = False
                    self._reload()
                self._reap()
                self._reap_drills(stopping=bool(self.stop_signals))
                if self.stop_signals:
                    if self._stopping():
                        break
                else:
                    self._live_tick()
                    self.scheduler.run_pending()
                    self._start_queued()
                self._write_state()
                self._sleep(self._wait_time())
            self._write_state()
            for _key, lj in self.live.values():
                lj.close()
            deadline = time.monotonic() + NOTIFY_GRACE
            for n in self.pending_notifications:
                n.wait(max(0.0, deadline - time.monotonic()))
            log.info("daemon stopped")
            return EXIT_OK
        finally:
            self._restore_signals()
            os.close(lock)

    def _wait_time(self) -> float:
        idle = self.scheduler.idle_seconds
        wait = IDLE_WAKE if idle is None else min(max(idle, 0.0), IDLE_WAKE)
        now = time.monotonic()
        for _key, lj in self.live.values():
            due = lj.pace.due_at()
            if due is not None and lj.name not in self.runs:
                wait = min(wait, max(0.0, due - now))
        # A finished run wakes the loop through SIGCHLD; timeouts and kill deadlines need a tick.
        return min(wait, BUSY_WAKE) if self.runs or self.drills or self.stop_signals else wait

    # --- planning ------------------------------------------------------------------------------

    def _plan(self, cfg: Config) -> dict[str, list[str]]:
        """Bring the library's jobs in line with `cfg`; untouched plans keep their next run."""
        daemon_state = read_daemon_state(cfg.state_dir).get("jobs") or {}
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        self._plan_live(cfg, changes)
        wanted = {name: job for name, job in cfg.jobs.items()
                  if job.schedule is not None and job.schedule.kind != CONTINUOUS}
        for name in list(self.planned):
            if name not in wanted:
                self.scheduler.cancel_job(self.planned.pop(name))
                changes["removed"].append(name)
                if name in self.queue:
                    self.queue.remove(name)
        for name, job in sorted(wanted.items()):
            assert job.schedule is not None
            splay = job.splay if job.splay is not None else cfg.splay
            plan = make_plan(cfg.node, name, job.schedule, splay, job.catch_up)
            old = self.planned.get(name)
            if old is not None and old.plan == plan:
                continue
            if old is not None:
                self.scheduler.cancel_job(old)
            changes["changed" if old is not None else "added"].append(name)
            planned = (daemon_state.get(name) or {}).get("next_run")
            pj = add_job(self.scheduler, plan, self._due, now=datetime.now,
                         last_start=_local(read_status(cfg.state_dir, name).get("last_start")),
                         planned=_local(planned))
            self.planned[name] = pj
            assert pj.next_run is not None
            if pj.catching_up:
                log.info("job %s: the run planned for %s was missed while the daemon was down; "
                         "catching up at %s", name, planned, _rfc3339(pj.next_run), extra={"job": name})
            log.info("job %s: schedule '%s', splay offset %ds, next run %s", name, job.schedule.text,
                     plan.offset, _rfc3339(pj.next_run), extra={"job": name})
        for name, job in cfg.jobs.items():
            if job.schedule is None:
                log.info("job %s has no schedule: it runs only with `backup-agent run %s`", name, name)
        self._plan_drills(cfg)
        return changes

    def _plan_live(self, cfg: Config, changes: dict[str, list[str]]) -> None:
        wanted = {name: job for name, job in cfg.jobs.items()
                  if job.schedule is not None and job.schedule.kind == CONTINUOUS}
        for name in list(self.live):
            if name not in wanted:
                self.live.pop(name)[1].close()
                changes["removed"].append(name)
        for name, job in sorted(wanted.items()):
            o = job.options
            settle = float(o["settle"]) if o.get("settle") is not None else DEFAULT_SETTLE
            min_interval = float(o["min_interval"]) if o.get("min_interval") is not None else DEFAULT_MIN_INTERVAL
            key = (tuple(o["paths"]), tuple(o.get("exclude") or ()), settle, min_interval)
            old = self.live.get(name)
            if old is not None and old[0] == key:
                continue
            if old is not None:
                old[1].close()
            try:
                lj = LiveJob(name, list(o["paths"]), list(o.get("exclude") or ()), settle, min_interval)
            except OSError as exc:
                log.error("job %s: cannot watch its paths for changes: %s", name, exc, extra={"job": name})
                continue
            self.live[name] = (key, lj)
            changes["changed" if old is not None else "added"].append(name)
            log.info("job %s: continuous: watching %d directories; a snapshot %gs after a change, at most one "
                     "every %gs", name, len(lj.watch.wds), settle, min_interval, extra={"job": name})
            if lj.watch.full:
                log.warning("job %s: fs.inotify.max_user_watches reached: changes in some directories are seen "
                            "only at the next snapshot", name, extra={"job": name})

    def _live_tick(self) -> None:
        """Read the watches of continuous jobs and queue those that are due."""
        now = time.monotonic()
        fresh = False
        for name, (_key, lj) in self.live.items():
            fresh = lj.poll(now) or fresh
            due = lj.pace.due_at()
            if due is not None and due <= now and name not in self.runs and name not in self.queue:
                self.queue.append(name)
        if fresh:  # the RPO gauge starts counting
            self._write_metrics(self.cfg)

    def _plan_drills(self, cfg: Config) -> None:
        """Drills keep no catch-up: a missed one simply happens at its next slot."""
        for pj in self.planned_drills.values():
            self.scheduler.cancel_job(pj)
        self.planned_drills = {}
        for name, job in sorted(cfg.jobs.items()):
            text = (job.options.get("drill") or {}).get("schedule")
            if not text:
                continue
            splay = job.splay if job.splay is not None else cfg.splay
            # Its own splay offset (the key differs from the job's), so a drill does not start
            # with the backup it would read.
            plan = make_plan(cfg.node, f"{name}{DRILL_SUFFIX}", parse_schedule(text), splay, False)
            pj = add_job(self.scheduler, plan, self._drill_due, now=datetime.now, last_start=None, planned=None)
            self.planned_drills[name] = pj
            assert pj.next_run is not None
            log.info("job %s: restore drill schedule '%s', next drill %s", name, text, _rfc3339(pj.next_run),
                     extra={"job": name})

    def _drill_due(self, key: str) -> None:
        name = key.removesuffix(DRILL_SUFFIX)
        job = self.cfg.jobs.get(name)
        if job is None or self.stop_signals:
            return
        if name in self.drills:
            log.warning("job %s: the previous drill is still going: skipping this one", name, extra={"job": name})
            return
        argv = [sys.executable, "-m", "backup_agent", "-c", "/dev/stdin", "drill", name]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            log.error("job %s: cannot start a drill: %s", name, exc, extra={"job": name})
            return
        self.drills[name] = proc
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(self.text.encode())
            proc.stdin.close()
        log.info("job %s: restore drill started (pid %d)", name, proc.pid, extra={"job": name, "pid": proc.pid})

    def _reap_drills(self, stopping: bool) -> None:
        for name, proc in list(self.drills.items()):
            if stopping and proc.poll() is None:
                # SIGINT unwinds the drill, which removes its restored sample on the way out.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGINT)
            code = proc.poll()
            if code is None:
                continue
            del self.drills[name]
            # The drill records its own result (status, metrics); a failure is logged here too.
            (log.info if code == EXIT_OK else log.error)("job %s: restore drill %s", name,
                                                         "passed" if code == EXIT_OK else _describe_exit(code),
                                                         extra={"job": name, "exit_code": code})

    def _reload(self) -> None:
        sd_notify("RELOADING=1")
        try:
            cfg, text = load_snapshot(self.path)
        except Exception as exc:  # whatever a new config does, the daemon keeps the one it has
            why = str(exc) if isinstance(exc, ConfigError) else f"internal error: {type(exc).__name__}: {exc}"
            log.error("reload rejected, the previous config keeps running: %s", why.replace("\n", " "),
                      exc_info=not isinstance(exc, ConfigError) and self.verbose)
            sd_notify("READY=1")
            return
        setup_logging("DEBUG" if self.verbose else cfg.log_level, cfg.log_format, secret_values(cfg))
        self.cfg, self.text = cfg, text
        changes = self._plan(cfg)
        summary = ", ".join(f"{k}: {' '.join(v)}" for k, v in changes.items() if v) or "no schedule changes"
        log.info("config reloaded: %d job(s) scheduled (%s)", len(self.planned), summary)
        sd_notify("READY=1")

    # --- starting runs -------------------------------------------------------------------------

    def _due(self, name: str) -> None:
        """Called by the library when `name` is due: queue it, or skip this tick (no overlap)."""
        decision = admit(name, self.runs, self.queue)
        pj = self.planned.get(name)
        if pj is not None and pj.catching_up:
            pj.catching_up = False
            log.info("job %s: catch-up run", name, extra={"job": name})
        if decision == "queue":
            self.queue.append(name)
        elif decision == "running":
            run = self.runs[name]
            log.warning("job %s: the previous run (pid %d, started %s) is still going: skipping this run",
                        name, run.proc.pid, run.started_text, extra={"job": name})
        else:
            log.warning("job %s: still waiting for a free slot (max_parallel_jobs=%d): skipping this run",
                        name, self.cfg.max_parallel_jobs, extra={"job": name})

    def _start_queued(self) -> None:
        while self.queue and can_start(self.runs, self.cfg.max_parallel_jobs):
            name = self.queue.popleft()
            if name in self.cfg.jobs:
                self._start(self.cfg.jobs[name])

    def _start(self, job: Job) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env[DAEMON_PID_ENV] = str(os.getpid())
        argv = [sys.executable, "-m", "backup_agent", "-c", "/dev/stdin", "run", job.name]
        if job.retention:
            # Retention is applied on schedule: the run prunes after its snapshot (never turning
            # its success into a failure); deleting unreferenced data happens at most daily.
            argv.append("--prune")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            log.error("job %s: cannot start a run: %s", job.name, exc, extra={"job": job.name})
            return
        run = Run(job, self.cfg, proc)
        self.runs[job.name] = run
        if job.name in self.live:
            self.live[job.name][1].pace.started(time.monotonic())
        assert proc.stdin is not None
        try:
            proc.stdin.write(self.text.encode())
            proc.stdin.close()
        except OSError as exc:  # it died before reading its config; the reap records that
            log.debug("job %s: writing the config to the run failed: %s", job.name, exc)
        log.info("job %s: run started (pid %d)", job.name, proc.pid, extra={"job": job.name, "pid": proc.pid})

    # --- watching runs -------------------------------------------------------------------------

    def _reap(self) -> None:
        now = time.monotonic()
        for name, run in list(self.runs.items()):
            code = run.proc.poll()
            if code is None:
                if run.kill_at is not None and now >= run.kill_at:
                    log.warning("job %s: run (pid %d) ignored SIGINT for %gs: killing it", name, run.proc.pid,
                                ABORT_GRACE, extra={"job": name})
                    self._signal(run, signal.SIGKILL)
                    run.kill_at = now + ABORT_GRACE
                elif run.abort_reason is None and run.job.timeout and \
                        now - run.started > run.job.timeout + TIMEOUT_GRACE:
                    self._abort(run, f"still running {run.job.timeout + TIMEOUT_GRACE:g}s after it started "
                                     f"(timeout {run.job.timeout:g}s)")
                continue
            del self.runs[name]
            self._finished(run, code)

    def _signal(self, run: Run, sig: int) -> None:
        # The run leads its own session: this reaches the helpers it started too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)

    def _abort(self, run: Run, reason: str) -> None:
        log.warning("job %s: aborting the run (pid %d): %s", run.job.name, run.proc.pid, reason,
                    extra={"job": run.job.name})
        run.abort_reason = reason
        run.kill_at = time.monotonic() + ABORT_GRACE
        # SIGINT, not SIGTERM: it raises KeyboardInterrupt in the run, whose cleanup (stop the
        # dump command, release the lock) then happens; nothing it uploaded is visible without
        # its manifest.
        self._signal(run, signal.SIGINT)

    def _finished(self, run: Run, code: int) -> None:
        name = run.job.name
        took = time.monotonic() - run.started
        extra = {"job": name, "exit_code": code}
        recorded = str(read_status(run.cfg.state_dir, name).get("last_start") or "") >= run.started_text
        if name in self.live:
            self.live[name][1].pace.finished(code in (EXIT_OK, EXIT_PARTIAL))
        if code in (EXIT_OK, EXIT_PARTIAL):  # even if an abort came too late to stop it
            log.info("job %s: run finished in %.1fs (%s)", name, took, "success" if code == EXIT_OK else "partial",
                     extra=extra)
        elif run.abort_reason is not None:
            log.warning("job %s: run aborted after %.1fs (%s)", name, took, _describe_exit(code), extra=extra)
            self._record(run, took, "aborted", f"aborted: {run.abort_reason}")
        elif code == EXIT_TEMPFAIL:
            log.warning("job %s: another run holds the job's lock: skipped", name, extra=extra)
        else:
            log.error("job %s: run failed after %.1fs (%s)", name, took, _describe_exit(code), extra=extra)
            if not recorded:
                self._record(run, took, "failed", f"the run {_describe_exit(code)} before recording its result")
        self._write_metrics(self.cfg)

    def _record(self, run: Run, took: float, result: str, error: str) -> None:
        notifier = record_failure(run.cfg, run.job, started=run.started_text, duration_s=took, error=error,
                                  result=result)
        if notifier is not None:
            self.pending_notifications = [n for n in self.pending_notifications if not n.wait(0)] + [notifier]

    def _write_metrics(self, cfg: Config) -> None:
        if cfg.metrics.get("textfile"):
            from backup_agent.metrics import write_textfile

            now = time.monotonic()
            write_textfile(cfg.metrics["textfile"], cfg.state_dir, list(cfg.jobs),
                           live={name: lj.state(now) for name, (_key, lj) in self.live.items()})

    # --- stopping ------------------------------------------------------------------------------

    def _stopping(self) -> bool:
        """One step of a graceful stop; True once nothing is running any more."""
        now = time.monotonic()
        if self.stop_deadline is None:
            self.stop_deadline = now + self.cfg.stop_timeout
            self.queue.clear()
            sd_notify("STOPPING=1")
            if self.runs:
                log.info("stopping: no new runs; waiting up to %gs for %s to finish", self.cfg.stop_timeout,
                         ", ".join(sorted(self.runs)))
            else:
                log.info("stopping")
        if self.stop_signals > 1:
            why = "the daemon is stopping (second signal)"
        elif now >= self.stop_deadline:
            why = f"the daemon is stopping and stop_timeout ({self.cfg.stop_timeout:g}s) has passed"
        else:
            return not self.runs and not self.drills
        for run in self.runs.values():
            if run.abort_reason is None:
                self._abort(run, why)
        for proc in self.drills.values():  # a drill has nothing to lose: stopped hard at the deadline
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return not self.runs

    # --- state for `status` and for the next start ---------------------------------------------

    def _write_state(self) -> None:
        jobs: dict[str, Any] = {}
        for name, pj in sorted(self.planned.items()):
            run = self.runs.get(name)
            jobs[name] = {
                "schedule": pj.plan.schedule.text,
                "next_run": _rfc3339(pj.next_run) if pj.next_run is not None else None,
                "running_since": run.started_text if run else None,
            }
        now, wall = time.monotonic(), datetime.now(UTC)
        for name, (_key, lj) in sorted(self.live.items()):
            st = lj.state(now)
            run = self.runs.get(name)
            wait, since = st["next_run_in_s"], st["unprotected_since_unix"]
            jobs[name] = {
                "schedule": CONTINUOUS,
                "next_run": (None if run or not isinstance(wait, float)
                             else _rfc3339(wall + timedelta(seconds=wait))),
                "running_since": run.started_text if run else None,
                # status computes the RPO from this when asked: a fresh figure, and no rewrite per tick
                "unprotected_since": (None if not isinstance(since, float)
                                      else _rfc3339(datetime.fromtimestamp(since, UTC))),
                "watched_dirs": st["watched_dirs"],
            }
        for name, run in self.runs.items():  # unscheduled now (reload) but still running
            jobs.setdefault(name, {"schedule": None, "next_run": None, "running_since": run.started_text})
        doc = {"pid": os.getpid(), "started": self.started_text, "config": self.path, "jobs": jobs}
        if doc == self._written:
            return
        try:
            text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
            atomic_write(daemon_state_path(self.cfg.state_dir), text.encode(), mode=0o644)
            self._written, self._state_error = doc, None
        except OSError as exc:
            error = f"cannot write {daemon_state_path(self.cfg.state_dir)}: {exc.strerror or exc}"
            if error != self._state_error:  # once, not at every tick of the loop
                log.error("%s", error)
            self._state_error = error


def run_daemon(config_path: str) -> int:
    return Daemon(config_path).serve()
