"""`backup-agent status`: per job its schedule, next run and last run, from state_dir.

Two writers feed it: every run records its outcome in `status/<job>.json` (execute.py), and the
daemon keeps `daemon.json` (its pid, each job's next run and what is running now). Keeping the
daemon's part in its own file means the two never overwrite each other's fields.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_agent.config import Config
from backup_agent.state import read_cost, read_drill, read_prune, read_status

DAEMON_STATE = "daemon.json"


def daemon_state_path(state_dir: Path) -> Path:
    return state_dir / DAEMON_STATE


def read_daemon_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(daemon_state_path(state_dir).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _daemon_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A recycled pid belongs to some other program.
    return b"backup_agent" in cmdline or b"backup-agent" in cmdline


def job_statuses(cfg: Config, daemon: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per job: its last run, and (while a daemon runs) its next run and the run going now."""
    if daemon is None:
        daemon = read_daemon_state(cfg.state_dir)
    # A stopped daemon's plans are history (kept for its catch-up), not a promise.
    planned = (daemon.get("jobs") or {}) if _daemon_alive(daemon.get("pid")) else {}
    out = []
    for name, job in sorted(cfg.jobs.items()):
        st = read_status(cfg.state_dir, name)
        pr = read_prune(cfg.state_dir, name)
        cost = read_cost(cfg.state_dir, name)
        plan = planned.get(name) or {}
        out.append({
            "job": name,
            "type": job.type,
            "schedule": job.schedule.text if job.schedule else None,
            "next_run": plan.get("next_run") if job.schedule else None,
            "running_since": plan.get("running_since"),
            "last_start": st.get("last_start"),
            "last_end": st.get("last_end"),
            "result": st.get("result", "never run"),
            "exit_code": st.get("exit_code"),
            "snapshot": st.get("last_snapshot"),
            "last_success": st.get("last_success"),
            "bytes": st.get("bytes_uploaded"),
            "duration_s": st.get("duration_s"),
            "consecutive_failures": st.get("consecutive_failures", 0),
            "snapshots": st.get("snapshots"),
            "error": st.get("error"),
            # The last prune (`prune`, `run --prune`, or the daemon after a scheduled run).
            "last_prune": pr.get("last_prune"),
            "prune_result": pr.get("result"),
            "prune_error": pr.get("error"),
            "prune_snapshots_forgotten": pr.get("snapshots_forgotten"),
            "prune_objects_deleted": pr.get("objects_deleted"),
            "prune_bytes_freed": pr.get("bytes_freed"),
            "last_gc": pr.get("last_gc"),
            # Objects Object Lock kept at the last prune; "elsewhere": a write-only node.
            "prune_locked_skipped": pr.get("locked_skipped"),
            "prune_note": pr.get("note"),
            # schedule: continuous (while a daemon runs): age of the oldest change not yet in a snapshot
            "rpo_s": _rpo(plan) if job.schedule and job.schedule.kind == "continuous" and plan else None,
            "unprotected_since": plan.get("unprotected_since"),
            **drill_fields(read_drill(cfg.state_dir, name)),
            # The last `cost` (or report): what the job's data costs a month, by the price table.
            "stored_bytes": cost.get("bytes"),
            "stored_objects": cost.get("objects"),
            "monthly_usd": cost.get("monthly_usd"),
            "last_cost": cost.get("last_cost"),
        })
    return out


def _rpo(plan: dict[str, Any]) -> float:
    """Age of the oldest change of a continuous job no snapshot holds yet; 0 when none."""
    since = plan.get("unprotected_since")
    if not since:
        return 0.0
    try:
        t = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, round((datetime.now(UTC) - t).total_seconds(), 1))


def drill_fields(d: dict[str, Any]) -> dict[str, Any]:
    """The last restore drill (`drill JOB`, or the daemon on the job's drill schedule)."""
    return {
        "last_drill": d.get("last_drill"),
        "drill_result": d.get("result"),
        "drill_failed": d.get("result") == "failed",
        "last_drill_success": d.get("last_drill_success"),
        "drill_files_checked": d.get("files_checked"),
        "drill_bytes_checked": d.get("bytes_checked"),
        "drill_throughput_bytes_per_s": d.get("throughput_bytes_per_s"),
        "drill_rto_estimate_s": d.get("rto_estimate_s"),
        "drill_error": d.get("error"),
    }


def render_status(cfg: Config) -> dict[str, Any]:
    daemon = read_daemon_state(cfg.state_dir)
    alive = _daemon_alive(daemon.get("pid"))
    return {
        "node": cfg.node,
        "environment": cfg.environment,
        "daemon": {"running": alive, "pid": daemon.get("pid") if alive else None},
        "jobs": job_statuses(cfg, daemon),
    }


# --- the text table --------------------------------------------------------------------------

COLUMNS = ("JOB", "SCHEDULE", "NEXT RUN", "LAST START", "LAST END", "RESULT", "SNAPSHOT", "BYTES",
           "DURATION", "FAILURES", "LAST PRUNE", "PRUNE")


def _time(text: Any) -> str:
    if not text:
        return "-"
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return str(text)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _duration(s: Any) -> str:
    if not isinstance(s, int | float):
        return "-"
    s = float(s)
    if s < 60:
        return f"{s:.1f}s"
    minutes, sec = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


def _row(j: dict[str, Any]) -> tuple[str, ...]:
    result = str(j["result"])
    if j.get("running_since"):
        result = "running"
    return (
        j["job"],
        j["schedule"] or "(manual)",
        _time(j["next_run"]),
        _time(j["running_since"] or j["last_start"]),
        _time(j["last_end"]),
        result,
        j["snapshot"] or "-",
        _bytes(j["bytes"]),
        _duration(j["duration_s"]),
        str(j["consecutive_failures"] or 0),
        _time(j.get("last_prune")),
        str(j.get("prune_result") or "-"),
    )


def format_table(doc: dict[str, Any]) -> str:
    """The status document as a fixed-width table for people (times in UTC), errors below it."""
    env = f" ({doc['environment']})" if doc.get("environment") else ""
    daemon = doc.get("daemon") or {}
    state = f"daemon running, pid {daemon['pid']}" if daemon.get("running") else "daemon not running"
    lines = [f"node {doc['node']}{env}, {state}; times in UTC"]
    if not doc["jobs"]:
        return "\n".join([*lines, "no jobs configured"])
    rows = [COLUMNS, *(_row(j) for j in doc["jobs"])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for r in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    errors = [j for j in doc["jobs"] if j.get("error") and j["result"] not in ("success", "never run")]
    for j in errors:
        lines.append(f"{j['job']}: {j['error']}")
    for j in doc["jobs"]:
        if j.get("prune_error") and j.get("prune_result") != "success":
            lines.append(f"{j['job']}: prune {j['prune_result']}: {j['prune_error']}")
        elif j.get("prune_note") and j.get("prune_result") == "elsewhere":
            lines.append(f"{j['job']}: {j['prune_note']}")
        if j.get("drill_failed"):
            lines.append(f"{j['job']}: restore drill failed: {j.get('drill_error')}")
    return "\n".join(lines)
