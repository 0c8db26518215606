"""The one place that picks a Store implementation for a configuration.

S3 and S3-compatible endpoints get CrtStore (AWS's C runtime: signing, pooled and checked
connections, retries, multipart and credentials in C; docs/PERFORMANCE.md), except where the
environment asks for a proxy, which awscrt's S3 client cannot use: BotoStore then. A database
destination (`storage.type: postgresql`) gets PostgresStore.
"""

from __future__ import annotations

import os

from backup_agent.config import Storage
from backup_agent.errors import ConfigError
from backup_agent.storage.store import Store

PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def open_store(storage: Storage, *, concurrency: int | None = None,
               object_lock: tuple[str, int] | None = None) -> Store:
    """The Store for `storage`. `object_lock` defaults to the config's `storage.object_lock`."""
    lock = object_lock if object_lock is not None else storage.object_lock
    if storage.type == "s3":
        from backup_agent.storage import endpoints

        storage = endpoints.resolve(storage)  # a storage cluster's gateways: the first that answers
    if storage.type == "postgresql":
        # Imported here: psycopg is an optional dependency (backup-agent[postgresql]).
        try:
            from backup_agent.storage.postgres import from_config
        except ImportError as exc:
            raise ConfigError(f"storage.type: postgresql needs psycopg, which is not installed ({exc}); "
                              "install backup-agent[postgresql]") from None

        return from_config(storage)
    if storage.type != "s3":
        raise ValueError(f"storage.type {storage.type}: no store for it in this agent")
    if any(os.environ.get(name) for name in PROXY_ENV):
        from backup_agent.storage.s3_boto import BotoStore

        return BotoStore(storage, concurrency=concurrency, object_lock=lock)
    from backup_agent.storage.s3_crt import CrtStore

    return CrtStore.from_storage(storage, concurrency=concurrency, object_lock=lock)
