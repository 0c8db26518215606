"""Immutable backups (docs/IAM.md): the Object Lock retention every write carries, what a refused
delete means for prune, and the notes `validate` prints about lock and retention together.

The write side lives here as two small functions so both S3 clients call the same thing; the
storage interface's implementations (storage/store.py) take `object_lock` and do the same.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from backup_agent.errors import JobFailed

if TYPE_CHECKING:
    from backup_agent.config import Config

# Tests only: a lock of this many seconds instead of `days` days. S3 (and moto) accept any future
# retain-until date on an object; only a bucket's *default* retention is counted in whole days. The
# code path is the one production takes, only the date is nearer, so a test can see a lock expire.
TEST_SECONDS_ENV = "BACKUP_AGENT_TEST_LOCK_SECONDS"

# S3's answers to a DELETE of a version under retention or legal hold. AccessDenied is also what
# a write-only identity gets: `Message` tells the two apart (S3 says "... object is WORM protected"
# / moto "Access Denied because object protected by object lock.").
_LOCKED_CODES = frozenset({"ObjectLocked", "InvalidRequest"})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                           "UnauthorizedOperation", "ExpiredToken", "InvalidToken"})


class DeleteDenied(JobFailed):
    """The credentials may not delete (a write-only node): retention belongs to the maintenance
    identity, not to this node."""


def retain_until(days: int, now: datetime | None = None) -> datetime:
    """The retention date of an object written now: no earlier than `days` from the write."""
    now = now or datetime.now(UTC)
    seconds = os.environ.get(TEST_SECONDS_ENV)
    delta = timedelta(seconds=int(seconds)) if seconds else timedelta(days=days)
    # Whole seconds, rounded up: the header has no fraction and must not come out a moment short.
    return (now + delta + timedelta(seconds=1)).replace(microsecond=0)


def lock_params(object_lock: tuple[str, int] | None) -> dict[str, Any]:
    """boto3 parameters for PutObject / CreateMultipartUpload; computed per request."""
    if not object_lock:
        return {}
    mode, days = object_lock
    return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": retain_until(days)}


def lock_headers(object_lock: tuple[str, int] | None) -> dict[str, str]:
    """The same as HTTP headers (the direct client)."""
    if not object_lock:
        return {}
    mode, days = object_lock
    return {"x-amz-object-lock-mode": mode,
            "x-amz-object-lock-retain-until-date": retain_until(days).strftime("%Y-%m-%dT%H:%M:%SZ")}


def classify_delete_failure(code: str, message: str = "") -> str:
    """'locked' (retention or legal hold: skip, a later prune deletes it), 'denied' (these
    credentials may not delete: a write-only node) or 'failed'. Maps onto storage.store's
    Locked / Denied errors."""
    text = message.lower()
    if code in _LOCKED_CODES or "object lock" in text or "worm" in text or "retention" in text \
            or "legal hold" in text:
        return "locked"
    if code in _DENIED_CODES:
        return "denied"
    return "failed"


def retention_days(policy: dict[str, int]) -> int | None:
    """About how many days back a retention policy keeps snapshots by calendar rules; None when
    it has none (keep_last alone depends on how often the job runs)."""
    spans = {"keep_hourly": 1 / 24, "keep_daily": 1, "keep_weekly": 7, "keep_monthly": 31, "keep_yearly": 366}
    days = [n * span for rule, span in spans.items() if (n := policy.get(rule, 0))]
    return int(max(days)) if days else None


def validate_notes(cfg: Config) -> list[str]:
    """Lines `validate` prints after ok: settings that work but do not do what one may expect."""
    notes = []
    lock = cfg.storage.object_lock
    if lock:
        for name in sorted(cfg.jobs):
            job = cfg.jobs[name]
            if job.type == "ebs_snapshot" or not job.retention:
                continue
            span = retention_days(job.retention)
            if span is not None and lock[1] > span:
                notes.append(f"note: jobs.{name}: storage.object_lock.days ({lock[1]}) exceeds its retention "
                             f"(about {span} days): forgotten snapshots stay stored, counted as locked, "
                             "until their lock passes")
    if cfg.storage.pruned_by == "maintenance":
        notes.append("note: storage.pruned_by is maintenance: this node never deletes; retention is applied by "
                     "recipe[backup_agent::maintenance] (`backup-agent prune --all-nodes`)")
    return notes
