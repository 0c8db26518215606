"""Restore drills against a real SeaweedFS: a good snapshot passes, a corrupted object fails the
drill naming the file, and nothing is left behind or written outside the drill's directory."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from backup_agent import config
from backup_agent.drill import choose, read_drill
from backup_agent.jobs.files import FilesJob
from backup_agent.storage.manifest import Entry


def _tree(root: Path, n: int = 12) -> dict[str, bytes]:
    root.mkdir()
    content = {}
    for i in range(n):
        data = os.urandom(1000 + 997 * i)
        (root / f"f{i:02d}.bin").write_bytes(data)
        content[f"f{i:02d}.bin"] = data
    return content


def _everything(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_drill_of_a_good_snapshot_verifies_the_sample_and_leaves_nothing(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    agent.job("data", type="files", paths=[str(src)], drill={"sample_files": 5})
    assert agent.run("run", "data").returncode == 0
    state = Path(agent.data["state_dir"])
    before = _everything(tmp_path)
    proc = agent.run("drill", "data", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"job", "snapshot", "status", "files_checked", "bytes_checked", "duration_s"} <= set(out)
    assert out["status"] == "ok" and out["job"] == "data"
    assert out["files_checked"] == 5
    # the first and the last file are always in the sample
    assert out["sampled"][0].endswith("f00.bin") and out["sampled"][-1].endswith("f11.bin")
    assert out["bytes_checked"] > 0 and out["throughput_bytes_per_s"] > 0
    assert out["rto_estimate_s"] is not None and out["snapshot_bytes"] >= out["bytes_checked"]
    # the drill's private place is gone, and nothing new appeared outside state_dir
    assert list((state / "drill-tmp").iterdir()) == []
    assert (state / "drill-tmp").stat().st_mode & 0o777 == 0o700
    after = {p for p in _everything(tmp_path) if not p.startswith("state")}
    assert after == {p for p in before if not p.startswith("state")}
    record = read_drill(state, "data")
    assert record["result"] == "ok" and record["last_drill_success"]
    status = agent.json("status")
    job = next(j for j in status["jobs"] if j["job"] == "data")
    assert job["drill_result"] == "ok" and job["drill_failed"] is False


def test_corrupted_object_fails_the_drill_naming_the_file_and_cleans_up(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 3)
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    cfg = config.load(str(agent.path))
    job = FilesJob(cfg, cfg.job("data"))
    snap = job.select(None, None)
    with job.open_manifest(snap.id) as (_, entries, _):
        victim = next(e for e in entries if e.path.endswith("f01.bin"))
    key = job.root + str(victim.object)
    body = bytearray(agent.s3.get_object(Bucket=agent.bucket, Key=key)["Body"].read())
    body[victim.offset + 10] ^= 0xFF  # same size: only the bytes are wrong
    agent.s3.put_object(Bucket=agent.bucket, Key=key, Body=bytes(body))

    proc = agent.run("drill", "data", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "failed"
    assert "f01.bin" in proc.stderr and any("f01.bin" in e for e in out["errors"])
    state = Path(agent.data["state_dir"])
    assert list((state / "drill-tmp").iterdir()) == []
    assert read_drill(state, "data")["result"] == "failed"
    status = agent.json("status")
    assert next(j for j in status["jobs"] if j["job"] == "data")["drill_failed"] is True
    assert "Traceback" not in proc.stderr


def test_drill_of_a_command_job_restores_the_whole_dump(agent, tmp_path: Path) -> None:
    agent.job("db", type="command", command=["sh", "-c", "head -c 300000 /dev/urandom | base64"])
    assert agent.run("run", "db").returncode == 0
    out = agent.json("drill", "db")
    assert out["status"] == "ok" and out["files_checked"] == 1
    assert out["dump_bytes"] > 300000
    assert list((Path(agent.data["state_dir"]) / "drill-tmp").iterdir()) == []


def test_drill_bad_input(agent, tmp_path: Path) -> None:
    proc = agent.run("drill", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
    agent.job("data", type="files", paths=[str(tmp_path)], drill={"schedule": "every fortnight"})
    proc = agent.run("drill", "data")
    assert proc.returncode == 2 and "drill.schedule" in proc.stderr


def test_drill_without_snapshots_fails(agent, tmp_path: Path) -> None:
    agent.job("data", type="files", paths=[str(tmp_path)])
    proc = agent.run("drill", "data", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["status"] == "failed"


@pytest.mark.parametrize("n", [1, 2, 5, 50])
def test_choose_always_has_first_and_last(n: int) -> None:
    entries = [Entry(path=f"/f{i}", type="file", size=i + 1, sha256="x", object="o") for i in range(30)]
    entries.insert(3, Entry(path="/d", type="dir"))
    picked, files, total = choose(iter(entries), n, random.Random(1))
    assert files == 30 and total == sum(range(1, 31))
    assert picked[0].path == "/f0" and picked[-1].path == "/f29"
    assert len(picked) == min(max(n, 2), 30) and len({e.path for e in picked}) == len(picked)


def test_drill_of_an_ebs_job_checks_the_set_covers_the_volumes(aws) -> None:
    aws.job("vols", volumes="all")
    run = aws.json("run", "vols")
    out = aws.json("drill", "vols")
    assert out["status"] == "ok" and out["files_checked"] == 3
    assert set(out["volumes"]) == set(aws.node.all)
    # one EBS snapshot of the set deleted behind the agent's back: the set no longer restores whole
    aws.ec2.delete_snapshot(SnapshotId=run["ebs_snapshots"][0])
    proc = aws.run("drill", "vols", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and any("2 of 3" in e for e in doc["errors"])


def test_the_daemon_runs_drills_on_their_schedule(agent, tmp_path: Path) -> None:
    import signal
    import subprocess

    from conftest import AGENT
    from support.waiting import wait_for

    src = tmp_path / "src"
    _tree(src, 3)
    # no backup schedule: only the drill is the daemon's to run
    agent.job("data", type="files", paths=[str(src)], drill={"schedule": "every 2 seconds", "sample_files": 2})
    agent.write(metrics={"textfile": str(tmp_path / "backup.prom")})
    assert agent.run("run", "data").returncode == 0
    state = Path(agent.data["state_dir"])
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen([AGENT, "-c", str(agent.path), "daemon"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: "restore drill passed" in (tmp_path / "daemon.log").read_text(), 60, "a scheduled drill")
        assert read_drill(state, "data")["result"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (tmp_path / "daemon.log").read_text()
    assert "restore drill schedule 'every 2 seconds'" in text and "restore drill passed" in text
    prom = (tmp_path / "backup.prom").read_text()
    assert 'backup_agent_last_drill_success_timestamp_seconds{job="data"}' in prom
    assert 'backup_agent_last_drill_status{job="data"} 0' in prom
    assert not list((state / "drill-tmp").iterdir())


def test_a_missing_object_fails_the_drill_and_a_stale_sample_is_removed(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src, 2)
    agent.job("data", type="files", paths=[str(src)])
    assert agent.run("run", "data").returncode == 0
    state = Path(agent.data["state_dir"])
    # what a drill killed with SIGKILL two days ago left behind
    stale = state / "drill-tmp" / "data.killed"
    (stale / "srv").mkdir(parents=True)
    (stale / "srv" / "f").write_bytes(b"old sample")
    os.utime(stale, (0, 0))
    for key in agent.object_keys():
        if "/snapshots/" not in key:
            agent.s3.delete_object(Bucket=agent.bucket, Key=key)
    proc = agent.run("drill", "data")
    assert proc.returncode == 1 and "f00.bin" in proc.stderr and "Traceback" not in proc.stderr
    assert list((state / "drill-tmp").iterdir()) == []


def test_drill_of_archived_data_asks_for_it_and_says_try_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GLACIER data (moto server: GET refused until RestoreObject) cannot be drilled at once:
    exit 75 like `restore`, the retrieval requested, nothing left in the drill's directory."""
    import subprocess
    import uuid

    import boto3
    import yaml
    from botocore.config import Config as BotoConfig
    from conftest import AGENT
    from fake_aws import CREDS, shared_moto

    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    url = shared_moto().url
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                      config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = f"d-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    src = tmp_path / "src"
    _tree(src, 2)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": "n1", "state_dir": str(tmp_path / "state"),
        "storage": {"bucket": bucket, "endpoint_url": url, "access_key_id": "testing", "secret_access_key": "testing"},
        "jobs": {"cold": {"type": "files", "paths": [str(src)], "storage_class": "GLACIER"}}}))
    run = subprocess.run([AGENT, "-c", str(cfg), "run", "cold"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    proc = subprocess.run([AGENT, "-c", str(cfg), "drill", "cold"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stderr
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "state" / "drill-tmp").iterdir()) == []
