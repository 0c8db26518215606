"""backup-agent: system state, file and database backups to S3, on schedules."""

__version__ = "0.1.0"
