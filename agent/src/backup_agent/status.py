"""`backup-agent status`: the last run of every configured job, from state_dir."""

from __future__ import annotations

from typing import Any

from backup_agent.config import Config
from backup_agent.state import read_status


def job_statuses(cfg: Config) -> list[dict[str, Any]]:
    out = []
    for name, job in sorted(cfg.jobs.items()):
        st = read_status(cfg.state_dir, name)
        out.append({
            "job": name,
            "type": job.type,
            "schedule": job.schedule.text if job.schedule else None,
            "next_run": st.get("next_run"),
            "last_start": st.get("last_start"),
            "last_end": st.get("last_end"),
            "result": st.get("result", "never run"),
            "snapshot": st.get("last_snapshot"),
            "last_success": st.get("last_success"),
            "bytes": st.get("bytes_uploaded"),
            "duration_s": st.get("duration_s"),
            "consecutive_failures": st.get("consecutive_failures", 0),
            "error": st.get("error"),
        })
    return out


def render_status(cfg: Config) -> dict[str, Any]:
    return {"node": cfg.node, "environment": cfg.environment, "jobs": job_statuses(cfg)}
