"""`backup-agent daemon`: placeholder until the scheduler lands (issue 4)."""

from __future__ import annotations

from backup_agent.errors import ConfigError


def run_daemon(config_path: str) -> int:
    raise ConfigError("daemon: the scheduler is not built yet; run jobs with `backup-agent run JOB`")
