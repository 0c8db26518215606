"""`backup-agent bucket setup`: versioning (the safety net), public access block, default
encryption and lifecycle rules derived from the config. Idempotent; `--dry-run` only reads.

Lifecycle rules we own carry the id prefix `backup-agent-`; rules with other ids are the user's
and are kept as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent.config import Config
from backup_agent.errors import JobFailed
from backup_agent.storage.s3 import describe, error_code, is_not_found, make_client

log = logging.getLogger(__name__)
RULE_PREFIX = "backup-agent-"
UNSUPPORTED = ("NotImplemented", "NotImplementedError", "MethodNotAllowed", "501")


def desired_rules(cfg: Config) -> list[dict[str, Any]]:
    """Lifecycle rules the config implies, one set per job plus bucket-wide housekeeping."""
    st = cfg.storage
    rules: list[dict[str, Any]] = [
        {
            "ID": f"{RULE_PREFIX}{st.prefix}-housekeeping",
            "Filter": {"Prefix": st.prefix.rstrip("/") + "/"},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": st.abort_multipart_days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": st.noncurrent_version_days},
        }
    ]
    return rules


def merge_rules(current: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep every rule we did not create; replace ours with what the config says now."""
    kept = [r for r in current if not str(r.get("ID", "")).startswith(RULE_PREFIX)]
    return kept + ours


def setup_bucket(cfg: Config, *, dry_run: bool) -> dict[str, Any]:
    s3 = make_client(cfg.storage)
    bucket = cfg.storage.bucket
    steps: list[dict[str, str]] = []

    def step(name: str, check: Any, apply: Any) -> None:
        try:
            if check():
                steps.append({"step": name, "result": "already set"})
                return
            if dry_run:
                steps.append({"step": name, "result": "would change"})
                return
            apply()
            steps.append({"step": name, "result": "changed"})
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) in UNSUPPORTED:
                steps.append({"step": name, "result": f"not supported by this endpoint ({error_code(exc)})"})
            else:
                raise JobFailed(f"bucket setup: {name}: {describe(exc)}") from None

    def bucket_exists() -> bool:
        try:
            s3.head_bucket(Bucket=bucket)
            return True
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise

    def create() -> None:
        args: dict[str, Any] = {"Bucket": bucket}
        if cfg.storage.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": cfg.storage.region}
        s3.create_bucket(**args)

    step("bucket exists", bucket_exists, create)
    if dry_run and steps[-1]["result"] == "would change":
        return {"bucket": bucket, "dry_run": True, "steps": [*steps, {"step": "rest", "result": "after creation"}]}

    step("versioning", lambda: s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled",
         lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}))

    pab = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
           "RestrictPublicBuckets": True}

    def pab_set() -> bool:
        try:
            return bool(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == pab)
        except ClientError as exc:
            if error_code(exc) == "NoSuchPublicAccessBlockConfiguration":
                return False
            raise

    step("public access block", pab_set,
         lambda: s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=pab))

    algo = cfg.storage.sse or "AES256"
    default_rule: dict[str, Any] = {"SSEAlgorithm": algo}
    if algo == "aws:kms" and cfg.storage.kms_key_id:
        default_rule["KMSMasterKeyID"] = cfg.storage.kms_key_id

    def enc_set() -> bool:
        try:
            rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        except ClientError as exc:
            if error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
                return False
            raise
        return any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == algo for r in rules)

    step("default encryption", enc_set, lambda: s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": default_rule}]}))

    ours = desired_rules(cfg)

    def current_rules() -> list[dict[str, Any]]:
        try:
            return list(s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", []))
        except ClientError as exc:
            if error_code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise

    def lifecycle_set() -> bool:
        cur = {r.get("ID"): r for r in current_rules() if str(r.get("ID", "")).startswith(RULE_PREFIX)}
        return all(_same_rule(cur.get(r["ID"]), r) for r in ours) and len(cur) == len(ours)

    step("lifecycle rules", lifecycle_set, lambda: s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": merge_rules(current_rules(), ours)}))
    return {"bucket": bucket, "dry_run": dry_run, "steps": steps}


def _same_rule(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if have is None:
        return False
    return all(have.get(k) == v for k, v in want.items())
