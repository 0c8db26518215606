"""Retention after a run (`run JOB --prune`, which the daemon uses for every scheduled run of a
job with `retention`), and the record of each job's last prune that status, metrics and the
fleet view read (`state_dir/prune/<job>.json`).

Forgetting snapshots is cheap (one LIST of the manifests, a DELETE per forgotten one) and happens
after every such run, so a job never keeps more snapshots than its retention allows. Deleting the
data that no kept snapshot references reads every kept manifest and lists all of the job's
objects: after a run that part happens at most once per GC_INTERVAL, and an explicit
`backup-agent prune JOB` always does it.

A prune that fails never turns the run's success into a failure: it is recorded and reported on
its own (status, metrics, a webhook event and a healthchecks log entry).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, Locked
from backup_agent.logfmt import redact
from backup_agent.state import atomic_write, prune_path, read_prune, record_snapshot_count

if TYPE_CHECKING:
    from backup_agent.jobs.base import JobRunner
    from backup_agent.notify import Notifier

log = logging.getLogger(__name__)

GC_INTERVAL = timedelta(days=1)
ELSEWHERE = ("pruning happens elsewhere: storage.pruned_by is maintenance "
             "(recipe[backup_agent::maintenance] applies this job's retention)")


def _text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def gc_due(last_gc: Any, now: datetime) -> bool:
    """Whether a prune after a run should also delete unreferenced data. Pure."""
    when = _parse(last_gc) if last_gc else None
    # A time in the future (a clock set back) must not postpone collection forever.
    return when is None or not (now - GC_INTERVAL < when <= now)


def record_prune(cfg: Config, job: str, *, result: str, out: dict[str, Any] | None = None,
                 error: str | None = None, duration_s: float | None = None,
                 note: str | None = None) -> dict[str, Any]:
    """Write the job's last-prune record (`result`: success | failed | aborted | elsewhere) and
    return it."""
    previous = read_prune(cfg.state_dir, job)
    now = _text(datetime.now(UTC))
    out = out or {}
    # None where the job type has nothing to collect (ebs_snapshot) or the prune failed.
    collected = out.get("garbage_collected")
    record = {
        "job": job,
        "last_prune": now,
        "result": result,
        "error": redact(error) if error else None,
        # Unknown (null) after a failure: part of it may have happened.
        "snapshots_forgotten": len(out["forget"]) if "forget" in out else None,
        "snapshots_kept": len(out["keep"]) if "keep" in out else None,
        "objects_deleted": int(out["objects_deleted"]) if "objects_deleted" in out else None,
        "bytes_freed": int(out["bytes_freed"]) if "bytes_freed" in out else None,
        "garbage_collected": collected,
        # Objects Object Lock kept this time; a prune after their lock date deletes them.
        "locked_skipped": int(out["locked_skipped"]) if "locked_skipped" in out else None,
        "note": note or out.get("note"),
        "last_gc": now if collected is True and result == "success" else previous.get("last_gc"),
        "duration_s": None if duration_s is None else round(duration_s, 3),
    }
    try:
        atomic_write(prune_path(cfg.state_dir, job), json.dumps(record, indent=2, sort_keys=True).encode())
    except OSError as exc:
        log.error("cannot write the prune record of job %s: %s", job, exc.strerror or exc)
    if cfg.metrics.get("textfile"):
        from backup_agent.metrics import write_textfile

        write_textfile(cfg.metrics["textfile"], cfg.state_dir, list(cfg.jobs))
    return record


def prune_after_run(cfg: Config, job: Job, runner: JobRunner, notifier: Notifier | None) -> dict[str, Any]:
    """Apply `job`'s retention after one of its runs made a snapshot. Never raises (but for a
    bug in the caller): what happened is returned, recorded and, when it failed, notified."""
    if not job.retention:
        return {"result": "skipped", "note": f"jobs.{job.name}.retention is not set: every snapshot is kept"}
    if cfg.storage.pruned_by == "maintenance":
        # A write-only node: trying would be refused every day, and a refused delete in the
        # bucket's audit trail must stay an alarm, not routine (docs/IAM.md).
        return record_prune(cfg, job.name, result="elsewhere", out={}, error=None, note=ELSEWHERE)
    collect = gc_due(read_prune(cfg.state_dir, job.name).get("last_gc"), datetime.now(UTC))
    t0 = time.monotonic()
    try:
        out = runner.prune(dry_run=False, collect_garbage=collect)
    except Locked as exc:
        # Another run or prune got the job between our run and this prune: the next one prunes.
        log.warning("job %s: prune skipped: %s", job.name, exc)
        return {"result": "skipped", "note": str(exc)}
    except KeyboardInterrupt:
        # The daemon aborting a run at shutdown (SIGINT), or a user's ^C: the backup is complete
        # and recorded; prune deletes manifests before data, so stopping it half-way is safe.
        log.warning("job %s: prune interrupted; the next prune finishes it", job.name)
        return record_prune(cfg, job.name, result="aborted", error="interrupted",
                            duration_s=time.monotonic() - t0)
    except Exception as exc:
        error = str(exc) if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
        log.error("job %s: prune failed (the backup itself succeeded): %s", job.name, redact(error))
        record = record_prune(cfg, job.name, result="failed", error=error, duration_s=time.monotonic() - t0)
        if notifier is not None:
            notifier.prune_failed(record)
            if not notifier.wait():
                log.warning("job %s: notifications still pending at exit; giving up on them", job.name)
        return record
    record_snapshot_count(cfg.state_dir, job.name, len(out["keep"]) + len(out.get("locked_snapshots", [])))
    record = record_prune(cfg, job.name, result="success", out=out, duration_s=time.monotonic() - t0)
    log.info("job %s: pruned: forgot %d snapshot(s), kept %d, deleted %d object(s)%s", job.name,
             record["snapshots_forgotten"], record["snapshots_kept"], record["objects_deleted"],
             " (unreferenced data is collected at most daily)" if record["garbage_collected"] is False else "")
    return record
