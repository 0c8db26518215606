"""One module per job type, all with the same verbs: run, snapshots, restore, prune, check.
The types are listed once, in jobs/registry.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backup_agent.config import Config, Job
    from backup_agent.jobs.base import JobRunner


def runner_for(cfg: Config, job: Job) -> JobRunner:
    from backup_agent.jobs.registry import runner_for as registered

    return registered(cfg, job)
