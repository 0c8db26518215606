"""Running one job and recording what happened: the path shared by `run` and the daemon."""

from __future__ import annotations

import logging
import time
from typing import Any

from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, Locked
from backup_agent.jobs import runner_for
from backup_agent.jobs.base import RunResult, rfc3339, utcnow
from backup_agent.state import read_status, write_status

log = logging.getLogger(__name__)


def run_job(cfg: Config, job: Job) -> RunResult:
    """Run `job` now. Status is persisted whatever happens; AgentErrors propagate to the caller."""
    previous = read_status(cfg.state_dir, job.name)
    started = utcnow()
    t0 = time.monotonic()
    record: dict[str, Any] = {
        "job": job.name,
        "type": job.type,
        "schedule": job.schedule.text if job.schedule else None,
        "last_start": rfc3339(started),
        "last_success": previous.get("last_success"),
        "last_snapshot": previous.get("last_snapshot"),
        "consecutive_failures": previous.get("consecutive_failures", 0),
    }
    log.info("job %s: starting", job.name)
    try:
        result = runner_for(cfg, job).run()
    except Locked:
        raise  # another run owns the job and its status
    except AgentError as exc:
        _finish(cfg, record, t0, result="failed", error=str(exc))
        raise
    except Exception as exc:
        _finish(cfg, record, t0, result="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    record["last_snapshot"] = result.snapshot
    record["last_success"] = rfc3339(utcnow())
    _finish(cfg, record, t0, result=result.status, bytes_uploaded=result.bytes_uploaded,
            bytes_total=result.bytes_total, files_failed=result.files_failed, error=None)
    log.info("job %s: %s, snapshot %s, %d bytes uploaded in %.1fs", job.name, result.status, result.snapshot,
             result.bytes_uploaded, result.duration_s)
    return result


def _finish(cfg: Config, record: dict[str, Any], t0: float, **fields: Any) -> None:
    record.update(fields)
    record["last_end"] = rfc3339(utcnow())
    record["duration_s"] = round(time.monotonic() - t0, 3)
    if fields["result"] == "failed":
        record["consecutive_failures"] = int(record.get("consecutive_failures") or 0) + 1
    else:
        record["consecutive_failures"] = 0
    try:
        write_status(cfg.state_dir, record["job"], record)
    except OSError as exc:
        log.error("cannot write status for job %s: %s", record["job"], exc)
