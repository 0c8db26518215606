"""`backup-agent cost`: bytes and objects by storage class from one LIST (moto in server mode,
which keeps GLACIER and DEEP_ARCHIVE classes as AWS does), priced by a table naming its region
and date, overridable in the config; metrics and status carry the result."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config as BotoConfig
from fake_aws import CREDS, shared_moto

from backup_agent.cost import class_cost, restore_cost

AGENT = str(Path(sys.executable).parent / "backup-agent")
TABLE = json.loads((Path(__file__).parents[1] / "src/backup_agent/data/prices-us-east-1.json").read_text())
GiB = 1 << 30


@pytest.fixture
def moto_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any], Any, str]:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    url = shared_moto().url
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing", config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = f"c-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    data = {"node": "n1", "state_dir": str(tmp_path / "state"),
            "storage": {"bucket": bucket, "endpoint_url": url, "access_key_id": "testing",
                        "secret_access_key": "testing", "prefix": "backups"},
            "metrics": {"textfile": str(tmp_path / "backup.prom")},
            "jobs": {"etc": {"type": "files", "paths": ["/etc"]}, "other": {"type": "files", "paths": ["/srv"]}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data, s3, bucket


def _agent(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "-c", str(path), *args], capture_output=True, text=True, timeout=120)


def test_cost_counts_classes_and_prices_them(moto_bucket, tmp_path: Path) -> None:
    path, _data, s3, bucket = moto_bucket
    root = "backups/etc/"
    s3.put_object(Bucket=bucket, Key=root + "snapshots/20261201T020000Z.json.gz", Body=b"m" * 1000)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"{root}packs/p{i}", Body=b"x" * 200_000, StorageClass="GLACIER")
    s3.put_object(Bucket=bucket, Key=root + "packs/d0", Body=b"y" * 50_000, StorageClass="DEEP_ARCHIVE")
    s3.put_object(Bucket=bucket, Key="backups/other/packs/q", Body=b"z" * 10, StorageClass="STANDARD_IA")

    proc = _agent(path, "cost", "etc", "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert row["job"] == "etc"
    assert row["classes"]["GLACIER"]["objects"] == 3 and row["classes"]["GLACIER"]["bytes"] == 600_000
    assert row["classes"]["DEEP_ARCHIVE"] == {**row["classes"]["DEEP_ARCHIVE"], "bytes": 50_000, "objects": 1}
    assert row["classes"]["STANDARD"]["objects"] == 1
    assert "STANDARD_IA" not in row["classes"]  # another job's object
    assert row["prices"] == {"region": "us-east-1", "date": TABLE["date"]}
    expected = sum(c["monthly_usd"] for c in row["classes"].values())
    assert row["monthly_usd"] == pytest.approx(expected, abs=1e-6) and row["monthly_usd"] > 0
    # DEEP_ARCHIVE has no Expedited retrieval; Bulk is the cheapest way back
    assert row["full_restore"]["Expedited"]["usd"] is None
    assert row["full_restore"]["Bulk"]["usd"] < row["full_restore"]["Standard"]["usd"]
    assert "48 hours" in row["full_restore"]["Bulk"]["delay"]

    text = _agent(path, "cost").stdout
    assert "us-east-1" in text and TABLE["date"] in text and "GLACIER" in text and "other" in text

    prom = (tmp_path / "backup.prom").read_text()
    assert 'backup_agent_monthly_cost_usd{job="etc"}' in prom
    assert 'backup_agent_stored_bytes{job="etc"} 651000' in prom
    status = json.loads(_agent(path, "status", "--json").stdout)
    etc = next(j for j in status["jobs"] if j["job"] == "etc")
    assert etc["stored_bytes"] == 651_000 and etc["monthly_usd"] == row["monthly_usd"]


def test_prices_are_overridable_in_the_config(moto_bucket) -> None:
    path, data, s3, bucket = moto_bucket
    s3.put_object(Bucket=bucket, Key="backups/etc/packs/a", Body=b"x" * (GiB // 1024))  # 1 MiB
    data["cost"] = {"prices": {"region": "eu-west-1", "date": "2026-11-01",
                               "classes": {"STANDARD": {"storage_gb_month": 1024.0}}}}
    path.write_text(yaml.safe_dump(data))
    [row] = json.loads(_agent(path, "cost", "etc", "--json").stdout)
    assert row["prices"] == {"region": "eu-west-1", "date": "2026-11-01"}
    assert row["monthly_usd"] == pytest.approx(1.0)  # 1 MiB at 1024 USD per GiB
    data["cost"] = {"prices": {"classes": {"STANDARD": {"storage_gb_month": "cheap"}}}}
    path.write_text(yaml.safe_dump(data))
    proc = _agent(path, "cost", "--json")
    assert proc.returncode == 2 and "cost.prices" in proc.stderr and "Traceback" not in proc.stderr


def test_small_objects_in_cold_classes_pay_their_overheads() -> None:
    # A million objects of 1 KiB: GLACIER bills 40 KiB each, STANDARD_IA 128 KiB each.
    n = 1_000_000
    sizes = [1024] * n
    glacier = class_cost("GLACIER", sizes, TABLE)
    ia = class_cost("STANDARD_IA", sizes, TABLE)
    std = class_cost("STANDARD", sizes, TABLE)
    assert std["monthly_usd"] == pytest.approx(n * 1024 / GiB * 0.023, rel=1e-3)
    assert glacier["monthly_usd"] == pytest.approx(n * ((1024 + 32768) * 0.0036 + 8192 * 0.023) / GiB, rel=1e-3)
    assert ia["monthly_usd"] == pytest.approx(n * 131072 / GiB * 0.0125, rel=1e-3)
    assert glacier["monthly_usd"] > std["monthly_usd"]  # cold is not always cheaper
    big = class_cost("DEEP_ARCHIVE", [GiB], TABLE)
    assert big["standard_monthly_usd"] / big["monthly_usd"] > 20
    tiers = restore_cost({"GLACIER": [GiB] * 10}, TABLE)
    assert tiers["Expedited"]["usd"] == pytest.approx(10 * 0.03 + 10 / 1000 * 10.0, rel=1e-3)
    assert tiers["Expedited"]["delay"] == "1-5 minutes"


def test_ebs_job_cost_is_estimated_from_its_volumes(aws) -> None:
    aws.job("vols", type="ebs_snapshot", volumes="all")
    proc = subprocess.run([AGENT, "-c", str(aws.path), "run", "vols"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(subprocess.run([AGENT, "-c", str(aws.path), "cost", "--json"], capture_output=True,
                                      text=True, timeout=120).stdout)
    ebs = row["classes"]["EBS_SNAPSHOT"]
    assert ebs["objects"] >= 1 and ebs["bytes"] > 0
    assert row["monthly_usd"] == pytest.approx(ebs["bytes"] / GiB * 0.05, rel=1e-3)
