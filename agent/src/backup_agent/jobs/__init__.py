"""One module per job type, all with the same verbs: run, snapshots, restore, prune, check."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backup_agent.config import Config, Job
    from backup_agent.jobs.base import JobRunner


def runner_for(cfg: Config, job: Job) -> JobRunner:
    if job.type == "files":
        from backup_agent.jobs.files import FilesJob

        return FilesJob(cfg, job)
    if job.type == "command":
        from backup_agent.jobs.command import CommandJob

        return CommandJob(cfg, job)
    if job.type == "ebs_snapshot":
        from backup_agent.jobs.ebs import EbsSnapshotJob

        return EbsSnapshotJob(cfg, job)
    raise ValueError(job.type)
