"""`backup-agent prune --all-nodes`: retention for a whole environment, run by the maintenance
identity (recipe[backup_agent::maintenance]) so that nodes never need a delete right: the
S3 job roots in the bucket, and EBS snapshot sets by their tags in `maintenance.ebs_regions`.

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
    ebs = [r for region in cfg.maintenance.get("ebs_regions") or [] for r in prune_ebs_region(cfg, region,
                                                                                              dry_run=dry_run)]
    failed = sum(1 for r in [*results, *ebs] if r["result"] == "failed")
    return {"dry_run": dry_run, "roots": results, "ebs": ebs, "failed": failed}


def prune_ebs_region(cfg: Config, region: str, *, dry_run: bool) -> list[dict[str, Any]]:
    """EBS retention for the fleet in one region: snapshot sets grouped by their node and job
    tags (and limited to this config's environment tag when it has one), each pruned with the
    maintenance retention of its job. The nodes themselves hold no ec2:DeleteSnapshot."""
    from backup_agent.ec2 import AwsError
    from backup_agent.ec2 import describe as describe_aws
    from backup_agent.ec2 import make_client as ec2_client
    from backup_agent.jobs import ebs_sets as sets_mod
    from backup_agent.jobs.ebs_prune import describe_snapshots, prune_region

    ec2 = ec2_client(cfg, region)
    filters: list[dict[str, Any]] = [{"Name": "tag-key", "Values": [sets_mod.TAG_JOB]}]
    if cfg.environment:
        filters.append({"Name": f"tag:{sets_mod.TAG_ENVIRONMENT}", "Values": [cfg.environment]})
    only = set(cfg.maintenance.get("nodes") or [])
    try:
        found = describe_snapshots(ec2, filters)
    except AwsError as exc:
        return [{"region": region, "result": "failed", "error": f"cannot list snapshots: {describe_aws(exc)}"}]
    by_job: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for snap in found:
        tags = sets_mod.tags_of(snap)
        # Copies (copy_to_regions) carry the same tags: each region's sets are pruned on their own.
        node, job = tags.get(sets_mod.TAG_NODE, ""), tags.get(sets_mod.TAG_JOB, "")
        if node and (not only or node in only):
            by_job.setdefault((node, job), []).append(snap)
    out = []
    for (node, job), snaps in sorted(by_job.items()):
        entry: dict[str, Any] = {"region": region, "node": node, "job": job}
        policy = retention_for(cfg, job)
        if not policy:
            entry.update(result="skipped", note=f"no maintenance retention for job {job}: every snapshot is kept")
        else:
            try:
                res = prune_region(ec2, sets_mod.group(snaps), policy, dry_run=dry_run, report_foreign=False)
                entry.update(result="success", forgot=len(res["forget"]), kept=len(res["keep"]),
                             ebs_snapshots_deleted=res["ebs_snapshots_deleted"], in_use=res["in_use"])
            except AwsError as exc:
                entry.update(result="failed", error=describe_aws(exc))
        out.append(entry)
    return out
