"""`backup-agent prune --all-nodes`: retention for a whole environment, run by the maintenance
identity (recipe[backup_agent::maintenance]) so that nodes never need a delete right.

The job roots are found in the bucket (`<under>/<node>/<job>/snapshots/`), not in any node's
config or state: a node that is gone, or lies, changes nothing here. The retention comes from
this config's `maintenance` section only. A node could write a retention file into its prefix,
but a compromised node would then choose how much of its own history this identity deletes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, ConfigError, JobFailed
from backup_agent.storage.s3 import describe, make_client

log = logging.getLogger(__name__)


def _children(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The '/'-terminated prefixes directly below `prefix` (one LIST per 1,000)."""
    out: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            out += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    except (ClientError, BotoCoreError) as exc:
        raise JobFailed(f"prune --all-nodes: cannot list s3://{bucket}/{prefix}: {describe(exc)}") from None
    return out


def discover(cfg: Config) -> list[tuple[str, str]]:
    """(node prefix, job) of every job root holding snapshots under `maintenance.under`."""
    s3 = make_client(cfg.storage)
    under = str(cfg.maintenance.get("under") or "").strip("/")
    top = f"{under}/" if under else ""
    only = set(cfg.maintenance.get("nodes") or [])
    roots = []
    for node_dir in _children(s3, cfg.storage.bucket, top):
        node = node_dir[len(top):].rstrip("/")
        if only and node not in only:
            continue
        for job_dir in _children(s3, cfg.storage.bucket, node_dir):
            if f"{job_dir}snapshots/" in _children(s3, cfg.storage.bucket, job_dir):
                roots.append((node_dir.rstrip("/"), job_dir[len(node_dir):].rstrip("/")))
    return roots


def retention_for(cfg: Config, job: str) -> dict[str, int]:
    per_job = (cfg.maintenance.get("jobs") or {}).get(job)
    return dict(per_job if per_job is not None else cfg.maintenance.get("retention") or {})


def prune_all_nodes(cfg: Config, *, dry_run: bool) -> dict[str, Any]:
    """Apply the maintenance retention to every job root found. One root failing does not stop
    the others; the result lists each root's outcome."""
    if not cfg.maintenance:
        raise ConfigError(f"{cfg.path}: maintenance: required for prune --all-nodes "
                          "(at least maintenance.retention)")
    from backup_agent.jobs.base import S3Job

    results = []
    for prefix, name in discover(cfg):
        policy = retention_for(cfg, name)
        entry: dict[str, Any] = {"prefix": prefix, "job": name}
        if not policy:
            entry.update(result="skipped", note=f"no maintenance retention for job {name}: every snapshot is kept")
            results.append(entry)
            continue
        storage = dataclasses.replace(cfg.storage, prefix=prefix)
        job = Job(name=name, type="files", schedule=None, retention=policy, splay=None, catch_up=False,
                  timeout=None, options={})
        runner = S3Job(dataclasses.replace(cfg, storage=storage), job)
        try:
            # No local job lock: the node's runs happen elsewhere. Data newer than the newest
            # snapshot (a run still uploading) is never collected (S3Job._prune).
            out = runner._prune(dry_run=dry_run)
        except AgentError as exc:
            log.error("prune %s/%s failed: %s", prefix, name, exc)
            entry.update(result="failed", error=str(exc))
            results.append(entry)
            continue
        entry.update(result="success", forgot=len(out["forget"]), kept=len(out["keep"]),
                     objects_deleted=out.get("objects_deleted", 0), bytes_freed=out.get("bytes_freed", 0),
                     locked_skipped=out.get("locked_skipped", 0))
        results.append(entry)
    failed = sum(1 for r in results if r["result"] == "failed")
    return {"dry_run": dry_run, "roots": results, "failed": failed}
