"""The one place that picks a Store implementation for a configuration."""

from __future__ import annotations

from backup_agent.config import Storage
from backup_agent.storage.store import Store


def open_store(storage: Storage, *, concurrency: int | None = None,
               object_lock: tuple[str, int] | None = None) -> Store:
    """The Store for `storage` (S3 and S3-compatible endpoints today)."""
    kind = getattr(storage, "type", "s3")
    if kind != "s3":
        raise ValueError(f"storage.type {kind}: no store for it in this agent")
    # Imported here: boto3's import is the slow part of a start.
    from backup_agent.storage.s3_boto import BotoStore

    return BotoStore(storage, concurrency=concurrency, object_lock=object_lock)
