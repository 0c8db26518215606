"""`backup-agent bucket setup`: versioning (the safety net), Object Lock when storage.object_lock
is set, public access block, default encryption and lifecycle rules derived from the config.
Idempotent; `--dry-run` only reads.

Lifecycle rules we own carry the id prefix `backup-agent-` and this node's storage prefix; rules
with other ids (the user's, or other nodes' sharing the bucket) are kept as they are.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent.config import Config
from backup_agent.errors import JobFailed
from backup_agent.jobs.registry import JOB_TYPES, OWNED_DIRS
from backup_agent.storage import layout
from backup_agent.storage.classes import is_archived
from backup_agent.storage.s3 import describe, error_code, is_not_found, make_client

log = logging.getLogger(__name__)
RULE_PREFIX = "backup-agent-"
UNSUPPORTED = ("NotImplemented", "NotImplementedError", "MethodNotAllowed", "501")
# Transition rules cover the folders each job type keeps its data in (jobs/registry.py), never
# snapshots/ (manifests).
_JOB_RULE = re.compile("[^/]+/(" + "|".join(re.escape(d.rstrip("/")) for d in OWNED_DIRS) + ")")


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
    for job in sorted(cfg.jobs.values(), key=lambda j: j.name):
        days = job.options.get("transition_days")
        if not days:
            continue
        root = layout.job_root(st.prefix, job.name)
        for sub in JOB_TYPES[job.type].data_dirs:
            rules.append({
                "ID": f"{RULE_PREFIX}{st.prefix}/{job.name}/{sub.rstrip('/')}",
                "Filter": {"Prefix": root + sub},
                "Status": "Enabled",
                "Transitions": [{"Days": days, "StorageClass": job.options["transition_class"]}],
            })
    return rules


def is_ours(rule_id: str, prefix: str) -> bool:
    """Rules this node's config owns. Other nodes writing to the same bucket under another prefix
    own theirs: replacing every `backup-agent-` rule would make a fleet undo each other."""
    if rule_id == f"{RULE_PREFIX}{prefix}-housekeeping":
        return True
    head = f"{RULE_PREFIX}{prefix}/"
    return rule_id.startswith(head) and bool(_JOB_RULE.fullmatch(rule_id[len(head):]))


def describe_rule(rule: dict[str, Any]) -> str:
    parts = []
    where = _rule_prefix(rule)
    for t in rule.get("Transitions") or []:
        parts.append(f"move {where or 'everything'} to {t.get('StorageClass')} after {t.get('Days')} days")
    if "AbortIncompleteMultipartUpload" in rule:
        parts.append(f"abort incomplete uploads after "
                     f"{rule['AbortIncompleteMultipartUpload'].get('DaysAfterInitiation')} days")
    if "NoncurrentVersionExpiration" in rule:
        parts.append(f"expire noncurrent versions after "
                     f"{rule['NoncurrentVersionExpiration'].get('NoncurrentDays')} days")
    if "Expiration" in rule:
        parts.append(f"expire {where or 'everything'} ({rule['Expiration']})")
    status = "" if rule.get("Status", "Enabled") == "Enabled" else f" ({rule.get('Status')})"
    return ("; ".join(parts) or "other actions") + status


def lifecycle_diff(current: list[dict[str, Any]], ours: list[dict[str, Any]], prefix: str) -> list[dict[str, str]]:
    """What applying `ours` changes among the rules this node owns (add / update / remove)."""
    have = {str(r.get("ID", "")): r for r in current if is_ours(str(r.get("ID", "")), prefix)}
    want = {r["ID"]: r for r in ours}
    diff = []
    for rid, rule in want.items():
        if rid not in have:
            diff.append({"rule": rid, "change": "add", "what": describe_rule(rule)})
        elif not _same_rule(have[rid], rule):
            diff.append({"rule": rid, "change": "update", "what": describe_rule(rule),
                         "was": describe_rule(have[rid])})
    diff += [{"rule": rid, "change": "remove", "what": describe_rule(r)} for rid, r in have.items() if rid not in want]
    return diff


def manifest_warnings(current: list[dict[str, Any]], cfg: Config) -> list[str]:
    """Rules we do not own that would archive manifests: listing, check, prune and restore
    planning would then need a Glacier retrieval first (restic#4583)."""
    out = []
    for rule in current:
        rid = str(rule.get("ID", ""))
        if is_ours(rid, cfg.storage.prefix) or rule.get("Status") != "Enabled" or _has_tag_filter(rule):
            continue
        cold = [t.get("StorageClass") for t in rule.get("Transitions") or [] if is_archived(t.get("StorageClass"))]
        if not cold:
            continue
        where = _rule_prefix(rule)
        for name in sorted(cfg.jobs):
            manifests = layout.job_root(cfg.storage.prefix, name) + "snapshots/"
            if manifests.startswith(where) or where.startswith(manifests):
                out.append(f"rule {rid or '(no id)'} moves s3://{cfg.storage.bucket}/{manifests} to {cold[0]}: "
                           "manifests must stay instantly readable; narrow its prefix to the data")
    return out


def _rule_prefix(rule: dict[str, Any]) -> str:
    f = rule.get("Filter") or {}
    return str(f.get("Prefix") or (f.get("And") or {}).get("Prefix") or rule.get("Prefix") or "")


def _has_tag_filter(rule: dict[str, Any]) -> bool:
    # Our objects carry no tags, so a rule that needs one never touches them.
    f = rule.get("Filter") or {}
    return "Tag" in f or bool((f.get("And") or {}).get("Tags"))


def merge_rules(current: list[dict[str, Any]], ours: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Keep every rule we did not create; replace ours with what the config says now."""
    kept = [r for r in current if not is_ours(str(r.get("ID", "")), prefix)]
    return kept + ours


def setup_bucket(cfg: Config, *, dry_run: bool) -> dict[str, Any]:
    return _BucketSetup(cfg, dry_run=dry_run).run()


class _BucketSetup:
    """The steps of setup_bucket, in order; each one checks first and changes only what differs."""

    def __init__(self, cfg: Config, *, dry_run: bool) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.s3 = make_client(cfg.storage)
        self.bucket = cfg.storage.bucket
        self.steps: list[dict[str, Any]] = []

    def run(self) -> dict[str, Any]:
        self.step("bucket exists", self._bucket_exists, self._create)
        if self.dry_run and self.steps[-1]["result"] == "would change":
            return {"bucket": self.bucket, "dry_run": True,
                    "steps": [*self.steps, {"step": "rest", "result": "after creation"}]}
        self._versioning()
        if self.cfg.storage.object_lock:
            _object_lock_step(self.s3, self.bucket, self.steps, dry_run=self.dry_run)
        self._public_access_block()
        self._encryption()
        self._lifecycle()
        return {"bucket": self.bucket, "dry_run": self.dry_run, "steps": self.steps}

    def step(self, name: str, check: Any, apply: Any) -> None:
        steps = self.steps
        try:
            if check():
                steps.append({"step": name, "result": "already set"})
                return
            if self.dry_run:
                steps.append({"step": name, "result": "would change"})
                return
            apply()
            steps.append({"step": name, "result": "changed"})
        except (ClientError, BotoCoreError) as exc:
            if error_code(exc) in UNSUPPORTED:
                steps.append({"step": name, "result": f"not supported by this endpoint ({error_code(exc)})"})
            else:
                raise JobFailed(f"bucket setup: {name}: {describe(exc)}") from None

    def _bucket_exists(self) -> bool:
        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise

    def _create(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.cfg.storage.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.storage.region}
        if self.cfg.storage.object_lock:
            args["ObjectLockEnabledForBucket"] = True  # also turns versioning on
        self.s3.create_bucket(**args)

    def _versioning(self) -> None:
        s3, bucket = self.s3, self.bucket
        self.step("versioning", lambda: s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled",
                  lambda: s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}))

    def _public_access_block(self) -> None:
        s3, bucket = self.s3, self.bucket
        pab = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
               "RestrictPublicBuckets": True}

        def pab_set() -> bool:
            try:
                return bool(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == pab)
            except ClientError as exc:
                if error_code(exc) == "NoSuchPublicAccessBlockConfiguration":
                    return False
                raise

        self.step("public access block", pab_set,
                  lambda: s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=pab))

    def _encryption(self) -> None:
        s3, bucket = self.s3, self.bucket
        algo = self.cfg.storage.sse or "AES256"
        default_rule: dict[str, Any] = {"SSEAlgorithm": algo}
        if algo == "aws:kms" and self.cfg.storage.kms_key_id:
            default_rule["KMSMasterKeyID"] = self.cfg.storage.kms_key_id

        def enc_set() -> bool:
            try:
                rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
            except ClientError as exc:
                if error_code(exc) == "ServerSideEncryptionConfigurationNotFoundError":
                    return False
                raise
            return any(r.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm") == algo for r in rules)

        self.step("default encryption", enc_set, lambda: s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": default_rule}]}))

    def _current_rules(self) -> list[dict[str, Any]]:
        try:
            return list(self.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", []))
        except ClientError as exc:
            if error_code(exc) == "NoSuchLifecycleConfiguration":
                return []
            raise

    def _lifecycle(self) -> None:
        ours = desired_rules(self.cfg)
        prefix = self.cfg.storage.prefix
        seen: dict[str, Any] = {}

        def lifecycle_set() -> bool:
            seen["current"] = self._current_rules()
            seen["diff"] = lifecycle_diff(seen["current"], ours, prefix)
            return not seen["diff"]

        self.step("lifecycle rules", lifecycle_set, lambda: self.s3.put_bucket_lifecycle_configuration(
            Bucket=self.bucket, LifecycleConfiguration={"Rules": merge_rules(seen["current"], ours, prefix)}))
        if "current" in seen:
            self._describe_lifecycle(seen["current"], seen["diff"], prefix)

    def _describe_lifecycle(self, current: list[dict[str, Any]], diff: list[dict[str, str]], prefix: str) -> None:
        """Appends the rule-by-rule diff, the rules kept as not ours and the warnings to the lifecycle step."""
        last = self.steps[-1]
        marks = {"add": "+", "update": "~", "remove": "-"}
        lines = [f"  {marks[d['change']]} {d['rule']}: {d['what']}" for d in diff]
        kept = [str(r.get("ID", "(no id)")) for r in current if not is_ours(str(r.get("ID", "")), prefix)]
        lines += [f"  = {rid}: kept (not ours)" for rid in kept]
        warnings = manifest_warnings(current, self.cfg)
        lines += [f"  warning: {w}" for w in warnings]
        last.update(diff=diff, kept=kept, warnings=warnings)
        if lines:
            last["result"] += "\n" + "\n".join(lines)


def _object_lock_step(s3: Any, bucket: str, steps: list[dict[str, Any]], *, dry_run: bool) -> None:
    """Verify Object Lock (GetObjectLockConfiguration), or enable it on an existing versioned
    bucket (S3 allows that since 2023; some servers, moto among them, only on an empty bucket).
    No default retention is set: the agent dates every object itself (storage.object_lock)."""
    name = "object lock"
    try:
        conf = s3.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration") or {}
        enabled = conf.get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        if error_code(exc) not in ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"):
            raise JobFailed(f"bucket setup: {name}: {describe(exc)}") from None
        enabled = False
    if enabled:
        steps.append({"step": name, "result": "already set"})
        return
    if dry_run:
        steps.append({"step": name, "result": "would change"})
        return
    try:
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})
    except (ClientError, BotoCoreError) as exc:
        raise JobFailed(f"bucket setup: {name}: bucket {bucket} cannot have Object Lock ({describe(exc)}): enable it "
                        "with `aws s3api put-object-lock-configuration` where the server allows it, or set "
                        "storage.bucket to a new bucket and run `bucket setup` again (it creates it with the lock)"
                        ) from None
    steps.append({"step": name, "result": "changed"})


def _same_rule(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if have is None:
        return False
    return all(have.get(k) == v for k, v in want.items())
