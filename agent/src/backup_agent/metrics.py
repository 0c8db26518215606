"""node_exporter textfile metrics (`metrics.textfile`), rewritten from state_dir after every run.

The file is rebuilt from all jobs' status records rather than patched, so concurrent writers
(two jobs ending together, the daemon after a reap) can only ever publish a whole, consistent
file; the temp + rename makes sure node_exporter never scrapes half of one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from backup_agent.state import atomic_write, read_cost, read_drill, read_prune, read_status

log = logging.getLogger(__name__)

# The CLI's exit codes, so an alert reads like a failed cron job: != 0 is bad.
STATUS_VALUES = {"success": 0, "failed": 1, "aborted": 1, "partial": 3}

# name, type, help
METRICS: tuple[tuple[str, str, str], ...] = (
    ("backup_agent_last_success_timestamp_seconds", "gauge",
     "Unix time the job last completed successfully (partial runs count)."),
    ("backup_agent_last_run_timestamp_seconds", "gauge", "Unix time the job's last run ended."),
    ("backup_agent_last_run_duration_seconds", "gauge", "Duration of the job's last run."),
    ("backup_agent_last_run_bytes", "gauge", "Bytes uploaded by the job's last run."),
    ("backup_agent_last_run_status", "gauge",
     "Outcome of the job's last run as an exit code: 0 success, 1 failed or aborted, 3 partial."),
    ("backup_agent_consecutive_failures", "gauge", "Failed runs of the job since its last success."),
    ("backup_agent_snapshots", "gauge", "Snapshots of the job in storage after its last successful run."),
    ("backup_agent_last_prune_timestamp_seconds", "gauge", "Unix time the job's retention was last applied."),
    ("backup_agent_last_prune_success", "gauge",
     "1 if the job's last prune succeeded, 0 if it failed; absent when pruning happens elsewhere."),
    ("backup_agent_prune_elsewhere", "gauge",
     "1 when this node never deletes (storage.pruned_by: maintenance): retention is applied elsewhere."),
    ("backup_agent_last_prune_locked_skipped", "gauge",
     "Objects the job's last prune kept because their Object Lock has not passed yet."),
    ("backup_agent_last_prune_snapshots_removed", "gauge", "Snapshots the job's last prune removed."),
    ("backup_agent_last_prune_bytes_freed", "gauge", "Bytes of unreferenced data the job's last prune deleted."),
    ("backup_agent_rpo_seconds", "gauge",
     "schedule: continuous: age of the oldest change no snapshot holds yet when the file was written (0: none)."),
    ("backup_agent_unprotected_change_timestamp_seconds", "gauge",
     "schedule: continuous: Unix time of the oldest change no snapshot holds yet (0: none); RPO = time() - it."),
    ("backup_agent_last_gc_timestamp_seconds", "gauge",
     "Unix time unreferenced data of the job was last deleted (at most daily after runs)."),
    ("backup_agent_last_drill_timestamp_seconds", "gauge", "Unix time the job's last restore drill ended."),
    ("backup_agent_last_drill_success_timestamp_seconds", "gauge",
     "Unix time of the job's last restore drill that verified every sampled byte."),
    ("backup_agent_last_drill_status", "gauge", "Outcome of the job's last restore drill: 0 ok, 1 failed."),
    ("backup_agent_drill_throughput_bytes_per_second", "gauge",
     "Restore throughput the job's last restore drill measured."),
    ("backup_agent_drill_rto_estimate_seconds", "gauge",
     "Seconds a full restore of the job's latest snapshot would take at the last drill's throughput."),
    ("backup_agent_stored_bytes", "gauge", "Bytes the job stores, at its last `cost` or report."),
    ("backup_agent_stored_objects", "gauge", "Objects the job stores, at its last `cost` or report."),
    ("backup_agent_monthly_cost_usd", "gauge", "Estimated monthly storage cost of the job in USD (price table)."),
)


def _timestamp(text: Any) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _values(st: Mapping[str, Any]) -> dict[str, float | None]:
    def number(key: str) -> float | None:
        v = st.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    status = STATUS_VALUES.get(str(st.get("result")))
    return {
        "backup_agent_last_success_timestamp_seconds": _timestamp(st.get("last_success")),
        "backup_agent_last_run_timestamp_seconds": _timestamp(st.get("last_end")),
        "backup_agent_last_run_duration_seconds": number("duration_s"),
        "backup_agent_last_run_bytes": number("bytes_uploaded"),
        "backup_agent_last_run_status": None if status is None else float(status),
        "backup_agent_consecutive_failures": number("consecutive_failures"),
        "backup_agent_snapshots": number("snapshots"),
        "backup_agent_last_prune_timestamp_seconds": _timestamp(st.get("last_prune")),
        "backup_agent_last_prune_success": (None if st.get("prune_result") in (None, "", "elsewhere")
                                            else float(st["prune_result"] == "success")),
        "backup_agent_prune_elsewhere": 1.0 if st.get("prune_result") == "elsewhere" else None,
        "backup_agent_last_prune_locked_skipped": number("prune_locked_skipped"),
        "backup_agent_last_prune_snapshots_removed": number("prune_snapshots_forgotten"),
        "backup_agent_last_prune_bytes_freed": number("prune_bytes_freed"),
        "backup_agent_last_gc_timestamp_seconds": _timestamp(st.get("last_gc")),
        "backup_agent_rpo_seconds": number("rpo_s"),
        "backup_agent_unprotected_change_timestamp_seconds": (
            None if "rpo_s" not in st else number("unprotected_since_unix") or 0.0),
        "backup_agent_last_drill_timestamp_seconds": _timestamp(st.get("last_drill")),
        "backup_agent_last_drill_success_timestamp_seconds": _timestamp(st.get("last_drill_success")),
        "backup_agent_last_drill_status": (None if not st.get("drill_result")
                                           else float(st["drill_result"] != "ok")),
        "backup_agent_drill_throughput_bytes_per_second": number("drill_throughput_bytes_per_s"),
        "backup_agent_drill_rto_estimate_seconds": number("drill_rto_estimate_s"),
        "backup_agent_stored_bytes": number("stored_bytes"),
        "backup_agent_stored_objects": number("stored_objects"),
        "backup_agent_monthly_cost_usd": number("monthly_usd"),
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(statuses: Mapping[str, Mapping[str, Any]]) -> str:
    """Prometheus text exposition format for jobs → their status records (with the last prune's
    fields under the names `status --json` gives them). Pure."""
    values = {job: _values(st) for job, st in sorted(statuses.items()) if st}
    lines: list[str] = []
    for name, kind, help_text in METRICS:
        samples = [(job, v[name]) for job, v in values.items() if v[name] is not None]
        if not samples:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f'{name}{{job="{_label(job)}"}} {_number(v)}' for job, v in samples if v is not None]
    return "\n".join(lines) + "\n" if lines else ""


def _with_prune(status: dict[str, Any], prune: dict[str, Any]) -> dict[str, Any]:
    if not prune:
        return status
    return {**status, "last_prune": prune.get("last_prune"), "prune_result": prune.get("result"),
            "prune_snapshots_forgotten": prune.get("snapshots_forgotten"),
            "prune_bytes_freed": prune.get("bytes_freed"), "last_gc": prune.get("last_gc"),
            "prune_locked_skipped": prune.get("locked_skipped")}


def _with_drill_and_cost(status: dict[str, Any], state_dir: Path, job: str) -> dict[str, Any]:
    from backup_agent.status import drill_fields

    drill, cost = read_drill(state_dir, job), read_cost(state_dir, job)
    extra = drill_fields(drill) if drill else {}
    if cost:
        extra.update(stored_bytes=cost.get("bytes"), stored_objects=cost.get("objects"),
                     monthly_usd=cost.get("monthly_usd"))
    return {**status, **extra} if extra else status


def write_textfile(path: str | Path, state_dir: Path, jobs: list[str],
                   live: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Rewrite the textfile from the status of `jobs` (and, for continuous jobs, the daemon's
    `live` view: rpo_s, unprotected_since_unix). Never raises: metrics must not fail a backup."""
    live = live or {}
    try:
        text = render({job: {**_with_drill_and_cost(_with_prune(read_status(state_dir, job),
                                                                read_prune(state_dir, job)), state_dir, job),
                             **(live.get(job) or {})} for job in jobs})
        # node_exporter usually runs as its own user: the file must be world-readable.
        atomic_write(Path(path), text.encode(), mode=0o644)
    except OSError as exc:
        log.error("metrics: cannot write %s: %s", path, exc.strerror or exc)
