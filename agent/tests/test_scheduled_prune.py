"""Retention on schedule: the real daemon prunes after every scheduled run (files jobs against
SeaweedFS, ebs_snapshot jobs against moto), `run --prune` does the same once and a plain `run`
never deletes; the last prune shows in `status`, the metrics and, when it fails, a notification,
without turning the backup into a failure. Unreferenced data is deleted at most daily after runs."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_aws import EbsEnv
from support.httpreceiver import Receiver
from test_daemon import Daemon, data_dir, snapshots

from backup_agent.prune import GC_INTERVAL, gc_due


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Any], Daemon]]:
    started: list[Daemon] = []

    def start(agent: Any) -> Daemon:
        started.append(Daemon(agent, tmp_path))
        return started[-1]

    yield start
    for d in started:
        d.kill()


FINISHED = "run finished in"


def metric(path: Path, name: str, job: str) -> float | None:
    m = re.search(rf'^{name}{{job="{job}"}} (\S+)$', path.read_text(), re.M)
    return float(m.group(1)) if m else None


def test_the_daemon_keeps_a_job_within_its_retention(agent: Any, tmp_path: Path, daemons: Any) -> None:
    prom = tmp_path / "backup_agent.prom"
    data = data_dir(tmp_path)
    agent.write(stop_timeout=30, metrics={"textfile": str(prom)})
    agent.job("etc", type="files", paths=[str(data)], schedule="every 2 seconds", retention={"keep_last": 2})
    d = daemons(agent)
    d.wait_log(FINISHED, timeout=60, count=2)
    first = agent.json("status")["jobs"][0]
    assert first["prune_result"] == "success" and first["last_gc"], first

    # New content before each further run: data of the snapshots forgotten from now on is
    # unreferenced, but only the daily collection may delete it.
    for i in range(4):
        (data / f"file{i}").write_bytes(os.urandom(3000))
        d.wait_log(FINISHED, timeout=60, count=3 + i)
    # ≤ 2 kept, + 1 a run in flight may just have written.
    assert snapshots(agent) <= 3

    job = agent.json("status")["jobs"][0]
    assert job["result"] == "success" and job["prune_result"] == "success" and job["prune_error"] is None
    assert job["last_prune"] > first["last_prune"]
    assert job["last_gc"] == first["last_gc"], "unreferenced data is collected at most daily"
    assert metric(prom, "backup_agent_last_prune_success", "etc") == 1
    assert metric(prom, "backup_agent_last_prune_timestamp_seconds", "etc")
    assert metric(prom, "backup_agent_last_gc_timestamp_seconds", "etc")
    table = agent.run("status").stdout.splitlines()
    assert "LAST PRUNE" in table[1] and table[2].rstrip().endswith("success")
    assert d.stop() == 0

    # What the scheduled prunes left behind, an explicit prune collects.
    pruned = agent.json("prune", "etc")
    assert pruned["objects_deleted"] > 0 and pruned["garbage_collected"] is True
    status = agent.json("status")["jobs"][0]
    assert status["last_gc"] > first["last_gc"] and status["prune_objects_deleted"] == pruned["objects_deleted"]


def test_run_prune_prunes_and_a_plain_run_never_deletes(agent: Any, tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    agent.job("etc", type="files", paths=[str(data)], retention={"keep_last": 2})
    for i in range(4):
        (data / "changing").write_bytes(os.urandom(1000 + i))
        assert agent.run("run", "etc").returncode == 0
    assert snapshots(agent) == 4
    assert agent.json("status")["jobs"][0]["last_prune"] is None

    out = agent.json("run", "etc", "--prune")
    assert out["status"] == "success" and out["snapshot"]
    assert out["prune"]["result"] == "success" and out["prune"]["snapshots_forgotten"] == 3
    assert out["prune"]["garbage_collected"] is True and out["prune"]["objects_deleted"] > 0
    assert snapshots(agent) == 2
    job = agent.json("status")["jobs"][0]
    assert job["prune_result"] == "success" and job["last_prune"] and job["prune_snapshots_forgotten"] == 3
    assert job["snapshots"] == 2

    # Within a day of that collection, the next one only forgets snapshots.
    again = agent.run("run", "etc", "--prune")
    assert again.returncode == 0, again.stderr
    assert "pruned: forgot 1 snapshot(s), kept 2" in again.stdout and "at most daily" in again.stdout
    assert snapshots(agent) == 2


def test_run_prune_without_retention_deletes_nothing(agent: Any, tmp_path: Path) -> None:
    agent.job("etc", type="files", paths=[str(data_dir(tmp_path))])
    for _ in range(3):
        out = agent.json("run", "etc", "--prune")
    assert out["prune"]["result"] == "skipped" and "retention is not set" in out["prune"]["note"]
    assert snapshots(agent) == 3
    assert agent.json("status")["jobs"][0]["last_prune"] is None


def test_the_daemon_deletes_old_ebs_snapshots(aws: EbsEnv, daemons: Any) -> None:
    aws.data["log_level"] = "INFO"  # the daemon's "run finished" lines
    aws.job("vols", volumes=[aws.node.data1], schedule="every 2 seconds", retention={"keep_last": 2})
    d = daemons(aws)
    d.wait_log(FINISHED, timeout=120, count=5)
    assert d.stop() == 0
    assert len(aws.runner("vols").snapshots()) <= 3
    assert len(aws.snapshots(**{"backup-agent:job": "vols"})) <= 3
    assert len(aws.proxy.actions("DeleteSnapshot")) >= 2
    proc = aws.run("status", "--json")
    (job,) = json.loads(proc.stdout)["jobs"]
    assert job["prune_result"] == "success" and job["prune_snapshots_forgotten"] is not None


def test_a_failing_prune_leaves_the_backup_successful_and_is_reported(aws: EbsEnv, tmp_path: Path) -> None:
    prom = tmp_path / "backup_agent.prom"
    with Receiver() as hook:
        aws.data.update(metrics={"textfile": str(prom)}, notify={"webhook_url": f"{hook.url}/hook"})
        aws.job("vols", volumes=[aws.node.data1], retention={"keep_last": 1})
        assert aws.run("run", "vols").returncode == 0
        assert aws.run("run", "vols").returncode == 0
        assert len(aws.snapshots()) == 2, "a plain run never deletes"

        aws.proxy.denied.add("DeleteSnapshot")
        proc = aws.run("run", "vols", "--prune", "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["status"] == "success" and out["prune"]["result"] == "failed"
        assert "UnauthorizedOperation" in out["prune"]["error"]
        assert "prune failed" in proc.stderr
        assert len(aws.snapshots()) == 3

        (job,) = aws.json("status")["jobs"]
        assert job["result"] == "success" and job["consecutive_failures"] == 0
        assert job["prune_result"] == "failed" and "UnauthorizedOperation" in job["prune_error"]
        assert metric(prom, "backup_agent_last_run_status", "vols") == 0
        assert metric(prom, "backup_agent_last_prune_success", "vols") == 0
        hook.wait_for(lambda r: any(q.json().get("event") == "backup_agent.prune" for q in r.matching("/hook")))
        events = {q.json()["event"]: q.json() for q in hook.matching("/hook")}
        assert events["backup_agent.run"]["result"] == "success"
        assert events["backup_agent.prune"]["result"] == "failed" and events["backup_agent.prune"]["job"] == "vols"

        aws.proxy.denied.clear()
        out = aws.json("run", "vols", "--prune")
        assert out["prune"]["result"] == "success" and len(aws.snapshots()) == 1


def test_collection_is_due_daily() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert gc_due(None, now)
    assert not gc_due("2026-12-03T00:00:00Z", now)
    assert gc_due((now - GC_INTERVAL - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), now)
    assert gc_due("2026-12-04T00:00:00Z", now), "a clock set back must not postpone collection forever"
    assert gc_due("garbage", now)


def test_run_prune_applies_a_command_jobs_retention(agent: Any, tmp_path: Path) -> None:
    src = tmp_path / "dump.sql"
    agent.job("db", type="command", command=["cat", str(src)], retention={"keep_last": 1})
    for i in range(3):
        src.write_bytes(os.urandom(5000 + i))
        assert agent.run("run", "db").returncode == 0
    dumps = [k for k in agent.object_keys("test-node/db/") if "/snapshots/" not in k]
    assert snapshots(agent, "db") == 3 and len(dumps) == 3

    out = agent.json("run", "db", "--prune")
    assert out["prune"]["result"] == "success" and out["prune"]["snapshots_forgotten"] == 3
    assert snapshots(agent, "db") == 1
    # The first prune of the day also deletes the forgotten snapshots' dumps.
    assert len([k for k in agent.object_keys("test-node/db/") if "/snapshots/" not in k]) == 1


def test_metrics_and_table_show_the_last_prune(tmp_path: Path) -> None:
    from backup_agent.metrics import render
    from backup_agent.status import format_table

    text = render({"etc": {"result": "success", "last_prune": "2026-11-27T02:00:07Z", "prune_result": "failed",
                           "prune_snapshots_forgotten": 0, "prune_bytes_freed": 0,
                           "last_gc": "2026-11-26T02:00:09Z"},
                   "new": {"result": "success"}})
    assert 'backup_agent_last_prune_success{job="etc"} 0' in text
    assert 'backup_agent_last_prune_timestamp_seconds{job="etc"} 1795744807' in text
    assert 'backup_agent_last_gc_timestamp_seconds{job="etc"} 1795658409' in text
    assert 'backup_agent_last_prune_snapshots_removed{job="etc"} 0' in text
    assert 'job="new"} ' in text and 'backup_agent_last_prune_success{job="new"}' not in text

    job = {"job": "vols", "type": "ebs_snapshot", "schedule": "daily at 03:00", "next_run": None,
           "running_since": None, "last_start": None, "last_end": None, "result": "success", "snapshot": "s1",
           "bytes": None, "duration_s": None, "consecutive_failures": 0, "error": None,
           "last_prune": "2026-11-27T03:00:09Z", "prune_result": "failed",
           "prune_error": "prune in us-east-1: UnauthorizedOperation"}
    table = format_table({"node": "web-01", "daemon": {}, "jobs": [job]}).splitlines()
    assert table[1].split()[-4:] == ["FAILURES", "LAST", "PRUNE", "PRUNE"]
    assert table[2].split()[-3:] == ["2026-11-27", "03:00:09", "failed"]
    assert table[3] == "vols: prune failed: prune in us-east-1: UnauthorizedOperation"


def test_a_failed_prune_is_a_healthchecks_log_entry_not_a_failure() -> None:
    from backup_agent.notify import Notifier

    with Receiver() as r:
        n = Notifier({"healthchecks_url": f"{r.url}/ping/KEY/{{job}}"}, node="web-01", environment=None)
        n.prune_failed({"job": "etc", "result": "failed", "error": "AccessDenied",
                        "last_prune": "2026-12-03T02:00:00Z"})
        assert n.wait(5)
        (req,) = r.requests
        assert req.path == f"/ping/KEY/etc/log?rid={n.run_id}"
        assert req.body == b"etc: prune failed: AccessDenied"
