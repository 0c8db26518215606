"""Immutable backups (issue #24) against moto in server mode with signature checking: IAM users
carry exactly the policies of docs/IAM.md (parsed from it), the bucket has Object Lock, and the
real `backup-agent` runs with each identity's keys.

moto enforces what matters here: a DELETE of a version under retention is refused (also inside
DeleteObjects), IAM policies are evaluated per action and resource ARN once `reset-auth` is on.
Locks are made short with the test-only BACKUP_AGENT_TEST_LOCK_SECONDS (immutability.py): S3
counts a bucket's default retention in days, but an object's retain-until date may be any
future instant, and only that date is shortened; the headers, the refusal and prune's
handling are the production path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from botocore.exceptions import ClientError
from fake_aws import MotoServer

AGENT = str(Path(sys.executable).parent / "backup-agent")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "IAM.md"
NODE = "web1"
pytestmark = pytest.mark.timeout(300)


def documented_policy(name: str, **values: str) -> str:
    """The JSON block after `<!-- policy: NAME -->` in docs/IAM.md, placeholders filled."""
    m = re.search(rf"<!-- policy: {re.escape(name)} -->\s*```json\n(.*?)```", DOCS.read_text(), re.S)
    assert m, f"docs/IAM.md has no policy {name}"
    text = m.group(1)
    for key, value in values.items():
        text = text.replace(key, value)
    json.loads(text)
    return text


@dataclass
class Identity:
    key: str
    secret: str

    def s3(self, url: str) -> Any:
        return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)


@dataclass
class Env:
    url: str
    bucket: str
    admin: Identity
    node: Identity
    maint: Identity
    tmp: Path

    def config(self, who: str, file: str = "", **extra: Any) -> Path:
        ident = {"node": self.node, "maintenance": self.maint, "admin": self.admin}[who]
        data: dict[str, Any] = {
            "node": NODE if who == "node" else f"{who}-host",
            "state_dir": str(self.tmp / f"state-{who}"),
            "storage": {"bucket": self.bucket, "endpoint_url": self.url, "region": "us-east-1",
                        "access_key_id": ident.key, "secret_access_key": ident.secret,
                        "object_lock": {"mode": "COMPLIANCE", "days": 1}},
            "jobs": {},
        }
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k].update(v)
            else:
                data[k] = v
        path = self.tmp / f"{file or who}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path


def agent(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([AGENT, "-c", str(config), *args], capture_output=True, text=True, timeout=240,
                          env={**clean, "AWS_EC2_METADATA_DISABLED": "true", **(env or {})})


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Env]:
    # Its own server: reset-auth turns signature checking on for the whole process.
    with MotoServer() as moto:
        iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        bucket = f"locked-{uuid.uuid4().hex[:12]}"
        ids = {}
        policies = {
            "admin": '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}',
            "node": documented_policy("node-s3", BUCKET=bucket, NODE_PREFIX=NODE),
            "maintenance": documented_policy("maintenance-s3", BUCKET=bucket),
        }
        for user, doc in policies.items():
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=f"{user}-policy", PolicyDocument=doc)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            ids[user] = Identity(key["AccessKeyId"], key["SecretAccessKey"])
        requests.post(moto.url + "/moto-api/reset-auth", data="0", headers={"Content-Type": "text/plain"},
                      timeout=10).raise_for_status()
        env = Env(moto.url, bucket, ids["admin"], ids["node"], ids["maintenance"], tmp_path)
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.txt").write_text("alpha\n")
        (src / "big.bin").write_bytes(os.urandom(300_000))
        yield env


def files_job(env: Env, **extra: Any) -> Path:
    job = {"type": "files", "paths": [str(env.tmp / "src")], **extra}
    return env.config("node", storage={"pruned_by": "maintenance"}, jobs={"home": job})


def setup_bucket(env: Env) -> None:
    proc = agent(env.config("maintenance"), "bucket", "setup")
    assert proc.returncode == 0, proc.stderr
    assert "object lock" in proc.stdout


def all_versions(env: Env, prefix: str) -> list[dict[str, Any]]:
    resp = env.admin.s3(env.url).list_object_versions(Bucket=env.bucket, Prefix=prefix)
    return list(resp.get("Versions", []))


def test_signature_checking_is_on(locked: Env) -> None:
    bad = Identity(locked.node.key, "not-the-secret").s3(locked.url)
    with pytest.raises(ClientError) as err:
        bad.list_objects_v2(Bucket="whatever")
    assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")


def test_write_only_node_backs_up_restores_checks_and_cannot_delete(locked: Env) -> None:
    env = locked
    setup_bucket(env)
    cfg = files_job(env, retention={"keep_last": 1})
    for _ in range(2):
        proc = agent(cfg, "run", "home", "--prune", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["prune"]["result"] == "elsewhere"
    # Every object written carries the lock, dated a day from its write.
    s3 = env.admin.s3(env.url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=env.bucket, Prefix=f"{NODE}/")["Contents"]]
    assert any("/snapshots/" in k for k in keys) and any("/packs/" in k or "/files/" in k for k in keys)
    for key in keys:
        head = s3.head_object(Bucket=env.bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(hours=23)
    # Restore and check work with the node's keys.
    target = env.tmp / "restored"
    proc = agent(cfg, "restore", "home", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target / str(env.tmp / "src" / "a.txt").lstrip("/")).read_text() == "alpha\n"
    proc = agent(cfg, "check", "home", "--read-data")
    assert proc.returncode == 0, proc.stderr
    # A command job's streamed dump (multipart upload) is locked and restores the same way.
    dump_cfg = env.config("node", "node-dump", storage={"pruned_by": "maintenance"},
                          jobs={"dump": {"type": "command", "command": ["printf", "dump-bytes"]}})
    proc = agent(dump_cfg, "run", "dump")
    assert proc.returncode == 0, proc.stderr
    assert agent(dump_cfg, "restore", "dump", "--target", "-").stdout == "dump-bytes"
    [dump_key] = [o["Key"] for o in s3.list_objects_v2(Bucket=env.bucket, Prefix=f"{NODE}/dump/dumps/")["Contents"]]
    assert s3.head_object(Bucket=env.bucket, Key=dump_key)["ObjectLockMode"] == "COMPLIANCE"
    keys += [o["Key"] for o in s3.list_objects_v2(Bucket=env.bucket, Prefix=f"{NODE}/dump/")["Contents"]]
    # Status and metrics say pruning happens elsewhere, not that it failed.
    status = json.loads(agent(cfg, "status", "--json").stdout)["jobs"][0]
    assert status["prune_result"] == "elsewhere" and "elsewhere" in status["prune_note"]
    assert "pruning happens elsewhere" in agent(cfg, "status").stdout
    # Every delete path is refused by the server for the node's identity.
    node = env.node.s3(env.url)
    victim = next(k for k in keys if "/snapshots/" in k)
    version = all_versions(env, victim)[0]["VersionId"]
    refused = [
        lambda: node.delete_object(Bucket=env.bucket, Key=victim),
        lambda: node.delete_object(Bucket=env.bucket, Key=victim, VersionId=version),
        lambda: node.put_bucket_lifecycle_configuration(Bucket=env.bucket, LifecycleConfiguration={"Rules": [
            {"ID": "wipe", "Filter": {"Prefix": ""}, "Status": "Enabled", "Expiration": {"Days": 1}}]}),
        lambda: node.put_bucket_policy(Bucket=env.bucket, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
                                                    "Resource": f"arn:aws:s3:::{env.bucket}"}]})),
        lambda: node.put_bucket_versioning(Bucket=env.bucket, VersioningConfiguration={"Status": "Suspended"}),
    ]
    for attempt in refused:
        with pytest.raises(ClientError) as err:
            attempt()
        assert err.value.response["Error"]["Code"] == "AccessDenied"
    batch = node.delete_objects(Bucket=env.bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    assert not batch.get("Deleted") and len(batch["Errors"]) == len(keys)
    # An explicit prune with the node's keys is refused too, and says what to do.
    proc = agent(env.config("node", jobs={"home": {"type": "files", "paths": [str(env.tmp / "src")],
                                                  "retention": {"keep_last": 1}}}), "prune", "home")
    assert proc.returncode == 1
    assert "pruned_by: maintenance" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=env.bucket, Prefix=f"{NODE}/")["Contents"]) \
        == sorted(keys)
    # An overwrite makes a new version; the locked original stays readable by its id.
    node.put_object(Bucket=env.bucket, Key=victim, Body=b"garbage", ChecksumAlgorithm="SHA256",
                    ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(days=1))
    assert len(all_versions(env, victim)) == 2
    assert s3.get_object(Bucket=env.bucket, Key=victim, VersionId=version)["Body"].read()[:2] == b"\x1f\x8b"


def test_locked_versions_survive_maintenance_prune_until_their_date(locked: Env) -> None:
    env = locked
    setup_bucket(env)
    lock_s = 25
    short = {"BACKUP_AGENT_TEST_LOCK_SECONDS": str(lock_s)}
    cfg = files_job(env)
    for i in range(3):
        (env.tmp / "src" / "a.txt").write_text(f"version {i}\n")
        proc = agent(cfg, "run", "home", env=short)
        assert proc.returncode == 0, proc.stderr
    written = time.monotonic()
    before = {v["Key"]: v["VersionId"] for v in all_versions(env, f"{NODE}/home/")}
    maint = env.config("maintenance", maintenance={"retention": {"keep_last": 1}})

    proc = agent(maint, "prune", "--all-nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    [root] = out["roots"]
    assert root["prefix"] == NODE and root["job"] == "home"
    assert root["forgot"] == 2 and root["locked_skipped"] >= 2
    # Nothing locked went: every version is still there, every snapshot still listed.
    assert {v["Key"]: v["VersionId"] for v in all_versions(env, f"{NODE}/home/")} == before
    assert len(json.loads(agent(cfg, "snapshots", "home", "--json").stdout)) == 3
    # Not even the maintenance identity deletes a locked version directly.
    manifest = next(k for k in before if "/snapshots/" in k)
    with pytest.raises(ClientError) as err:
        env.maint.s3(env.url).delete_object(Bucket=env.bucket, Key=manifest, VersionId=before[manifest])
    assert err.value.response["Error"]["Code"] == "AccessDenied"

    time.sleep(max(0.0, written + lock_s + 2 - time.monotonic()))
    proc = agent(maint, "prune", "--all-nodes", "--json")
    assert proc.returncode == 0, proc.stderr
    [root] = json.loads(proc.stdout)["roots"]
    assert root["forgot"] == 2 and root["locked_skipped"] == 0 and root["objects_deleted"] >= 1
    snaps = json.loads(agent(cfg, "snapshots", "home", "--json").stdout)
    assert len(snaps) == 1
    after = all_versions(env, f"{NODE}/home/")
    # The forgotten manifests are gone for good (no version left behind a delete marker).
    assert len([v for v in after if "/snapshots/" in v["Key"]]) == 1
    target = env.tmp / "latest"
    proc = agent(cfg, "restore", "home", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target / str(env.tmp / "src" / "a.txt").lstrip("/")).read_text() == "version 2\n"


def test_bucket_setup_creates_a_locked_bucket_and_says_what_to_do_without(locked: Env) -> None:
    env = locked
    setup_bucket(env)
    conf = env.admin.s3(env.url).get_object_lock_configuration(Bucket=env.bucket)
    assert conf["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    again = agent(env.config("maintenance"), "bucket", "setup")
    assert "object lock: already set" in again.stdout
    # An existing bucket with data and without Object Lock: moto, unlike AWS since 2023, cannot
    # enable it then. One line says what to do.
    s3 = env.admin.s3(env.url)
    s3.create_bucket(Bucket="plain-" + env.bucket)
    s3.put_bucket_versioning(Bucket="plain-" + env.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="plain-" + env.bucket, Key="x", Body=b"x")
    cfg = env.config("admin", storage={"bucket": "plain-" + env.bucket})
    proc = agent(cfg, "bucket", "setup")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot have Object Lock" in lines[0] and "new bucket" in lines[0]


def test_maintenance_applies_ebs_retention_by_tags_for_the_fleet(tmp_path: Path) -> None:
    from fake_aws import CREDS, shared_moto

    moto = shared_moto()
    ec2 = moto.client()
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket = f"fleet-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    env_name = f"env{uuid.uuid4().hex[:6]}"
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    made: dict[str, list[str]] = {}
    for node, runs in (("web1", 3), ("web2", 1)):
        for day in range(runs):
            created = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ")
            tags = {"backup-agent:job": "vols", "backup-agent:node": node, "backup-agent:created": created,
                    "backup-agent:snapshot": f"set-{node}-{day}",
                    "backup-agent:volumes": "1", "backup-agent:environment": env_name}
            snap = ec2.create_snapshot(VolumeId=vol, TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
            made.setdefault(node, []).append(snap["SnapshotId"])
    other = ec2.create_snapshot(VolumeId=vol)["SnapshotId"]  # not the agent's: never touched
    path = tmp_path / "maintenance.yaml"
    path.write_text(yaml.safe_dump({
        "node": "maintenance-host", "environment": env_name, "state_dir": str(tmp_path / "state"),
        "storage": {"bucket": bucket, "endpoint_url": moto.url, "region": "us-east-1"},
        "aws": {"ec2_endpoint_url": moto.url},
        "maintenance": {"retention": {"keep_last": 1}, "ebs_regions": ["us-east-1"]}, "jobs": {}}))
    proc = agent(path, "prune", "--all-nodes", "--json", env={k: v for k, v in CREDS.items()})
    assert proc.returncode == 0, proc.stderr
    ebs = {r["node"]: r for r in json.loads(proc.stdout)["ebs"]}
    assert sorted(ebs["web1"]["ebs_snapshots_deleted"]) == sorted(made["web1"][:2])
    assert ebs["web2"]["ebs_snapshots_deleted"] == []
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert {made["web1"][2], made["web2"][0], other} <= left
    assert not set(made["web1"][:2]) & left
