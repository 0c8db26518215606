"""Running one job and recording what happened: the path shared by `run` and the daemon.

Every run ends in `_finish`: status in state_dir, the metrics textfile, notifications. The
daemon imports this module too (to record a job process it had to abort), so the job modules
and boto3 are imported inside `run_job` only and the long-lived daemon stays small.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from backup_agent.channels import configured
from backup_agent.config import Config, Job
from backup_agent.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, AgentError, Interrupted, Locked
from backup_agent.jobs.registry import JOB_TYPES
from backup_agent.logfmt import redact
from backup_agent.state import JobLock, read_status, write_status

if TYPE_CHECKING:
    from backup_agent.jobs.base import JobRunner, RunResult
    from backup_agent.notify import Notifier

log = logging.getLogger(__name__)


def _now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_job(cfg: Config, job: Job, *, prune: bool = False) -> RunResult:
    """Run `job` now. Status is persisted whatever happens; AgentErrors propagate to the caller.

    With `prune`, a run that made a snapshot then applies the job's retention (prune.py); its
    outcome is `result.extra["prune"]` and never changes the run's own result."""
    from backup_agent.jobs import runner_for

    _stop_on_signals()
    # Probe the lock first so a run that would be refused sends no /start ping; the runner
    # takes the lock for real (a race in between ends as Locked, which is fine).
    t0 = time.monotonic()
    try:
        with JobLock(cfg.state_dir, job.name):
            pass
    except Locked as exc:
        _described(exc, job, t0)
        raise
    record = _new_record(cfg, job)
    notifier = _notifier(cfg)
    if notifier is not None:
        notifier.start(job.name)
    log.info("job %s: starting", job.name)
    runner: JobRunner | None = None
    try:
        runner = runner_for(cfg, job)
        result = runner.run()
    except Locked as exc:
        _described(exc, job, t0)  # another run owns the job and its status
        raise
    except KeyboardInterrupt as exc:
        # The job unwound (its command's process group killed, its upload aborted): say so,
        # unless the daemon stopped it, which records and notifies the abort itself.
        if not os.environ.get(DAEMON_PID_ENV):
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            _finish(cfg, record, t0, notifier, 128 + signum, result="aborted",
                    error=f"aborted by {signal.Signals(signum).name}; no snapshot made")
        raise
    except AgentError as exc:
        _finish(cfg, record, t0, notifier, exc.exit_code, result="failed", error=str(exc))
        _described(exc, job, t0)
        raise
    except Exception as exc:
        _finish(cfg, record, t0, notifier, EXIT_FAILED, result="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    record["last_snapshot"] = result.snapshot
    record["last_success"] = _now_text()
    record["snapshots"] = _count_snapshots(runner, record.get("snapshots"), bool(result.snapshot))
    _finish(cfg, record, t0, notifier, EXIT_PARTIAL if result.status == "partial" else EXIT_OK,
            result=result.status, bytes_uploaded=result.bytes_uploaded, bytes_total=result.bytes_total,
            files_failed=result.files_failed, error=None)
    log.info("job %s: %s, snapshot %s, %d bytes uploaded in %.1fs", job.name, result.status, result.snapshot,
             result.bytes_uploaded, result.duration_s)
    # After `_finish`: the run's success is recorded and notified before anything is deleted.
    # Partial runs prune too: their snapshot is complete but for unreadable files, and a file
    # that stays unreadable would otherwise stop retention for good.
    if prune and result.snapshot:
        from backup_agent.prune import prune_after_run

        result.extra["prune"] = prune_after_run(cfg, job, runner, notifier)
    return result


def _described(exc: AgentError, job: Job, t0: float) -> None:
    """The failure with what `run --json` prints besides its error: how long the run took and
    the job type's own fields (as when nothing ran); what the failure itself knows wins."""
    exc.details = {**JOB_TYPES[job.type].run_fields, "duration_s": round(time.monotonic() - t0, 3), **exc.details}


# Set by the daemon for the runs it starts.
DAEMON_PID_ENV = "BACKUP_AGENT_DAEMON_PID"


def _stop_on_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP stop the run in order: raised as Interrupted in the main thread,
    they unwind the job (its command's process group killed, the upload aborted) and the run is
    recorded as aborted; the process exits 128 + the signal number (130, 143, 129).

    In a run the daemon started, SIGTERM is ignored instead: the daemon decides when a run stops.
    systemd's default KillMode sends SIGTERM to every process of the service at once; the daemon
    then lets runs finish up to stop_timeout and aborts the rest with SIGINT. A handler, unlike
    SIG_IGN, is not inherited by the commands a run starts, so those still stop on SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    daemon = os.environ.get(DAEMON_PID_ENV)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    def ignore(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM ignored: this run belongs to the daemon (pid %s), which stops it; "
                    "send SIGINT to abort it", daemon)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGTERM, ignore if daemon else stop)


def record_failure(cfg: Config, job: Job, *, started: str, duration_s: float, error: str,
                   result: str = "failed", exit_code: int | None = None) -> Notifier | None:
    """Record a run whose process could not record itself (aborted, killed, crashed).

    Used by the daemon, which must not wait for the notifications: it gets the notifier back to
    give it a bounded moment at shutdown. `started` is when it launched the run (RFC 3339 UTC).
    """
    record = _new_record(cfg, job)
    record["last_start"] = started
    notifier = _notifier(cfg)
    _finish(cfg, record, time.monotonic() - duration_s, notifier, exit_code, wait=False,
            result=result, error=error)
    return notifier


def _new_record(cfg: Config, job: Job) -> dict[str, Any]:
    previous = read_status(cfg.state_dir, job.name)
    return {
        "job": job.name,
        "type": job.type,
        "schedule": job.schedule.text if job.schedule else None,
        "last_start": _now_text(),
        "last_success": previous.get("last_success"),
        "last_snapshot": previous.get("last_snapshot"),
        "snapshots": previous.get("snapshots"),
        "consecutive_failures": previous.get("consecutive_failures", 0),
    }


def _notifier(cfg: Config) -> Notifier | None:
    if not configured(cfg.notify):
        return None  # requests is only imported when there is something to send
    from backup_agent.notify import Notifier

    return Notifier(cfg.notify, node=cfg.node, environment=cfg.environment)


def _count_snapshots(runner: JobRunner | None, previous: Any, made_one: bool) -> Any:
    """How many snapshots the job has now, for the metrics; a listing problem is not a failure.

    Counted once, then kept up to date locally (prune records its own count): an unchanged
    rerun must not pay a LIST of the bucket."""
    if isinstance(previous, int):
        return previous + 1 if made_one else previous
    try:
        return len(runner.snapshots()) if runner is not None else previous
    except Exception as exc:
        log.warning("job: cannot count snapshots for the metrics: %s", exc)
        return previous


def _finish(cfg: Config, record: dict[str, Any], t0: float, notifier: Notifier | None,
            exit_code: int | None, *, wait: bool = True, **fields: Any) -> None:
    record.update(fields)
    if record.get("error"):  # status, metrics and notifications show it: secrets masked like in logs
        record["error"] = redact(str(record["error"]))
    record["last_end"] = _now_text()
    record["duration_s"] = round(time.monotonic() - t0, 3)
    record["exit_code"] = exit_code
    if fields["result"] in ("failed", "aborted"):
        record["consecutive_failures"] = int(record.get("consecutive_failures") or 0) + 1
    else:
        record["consecutive_failures"] = 0
    try:
        write_status(cfg.state_dir, record["job"], record)
    except OSError as exc:
        log.error("cannot write status for job %s: %s", record["job"], exc)
    if cfg.metrics.get("textfile"):
        from backup_agent.metrics import write_textfile

        write_textfile(cfg.metrics["textfile"], cfg.state_dir, list(cfg.jobs))
    if notifier is not None:
        notifier.finish(record, exit_code)
        if not wait:
            return
        # Bounded: a hanging endpoint delays this process's exit by at most notify.timeout + 5 s.
        if not notifier.wait():
            log.warning("job %s: notifications still pending at exit; giving up on them", record["job"])
