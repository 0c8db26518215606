"""`run --json` prints one document with every field of docs/CONTRACT.md on every failure path:
zeros or null where nothing happened, how long the run took, and `error` with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from backup_agent.state import JobLock

FIELDS = {"job", "snapshot", "status", "files_new", "files_changed", "files_unchanged", "files_failed",
          "bytes_uploaded", "duration_s", "error"}


def failed_run(agent: Any, job: str, code: int) -> dict[str, Any]:
    proc = agent.run("run", job, "--json")
    assert proc.returncode == code, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document
    assert set(doc) >= FIELDS, sorted(FIELDS - set(doc))
    assert doc["job"] == job and doc["status"] == "failed" and doc["snapshot"] is None
    assert doc["files_new"] == doc["bytes_uploaded"] == 0 and isinstance(doc["duration_s"], (int, float))
    assert doc["error"] and "\n" not in doc["error"]
    return doc


def test_config_error(agent: Any) -> None:
    agent.data["jobs"]["etc"] = {"type": "files", "paths": ["relative"]}
    agent.write()
    assert "jobs.etc.paths[0]" in failed_run(agent, "etc", 2)["error"]


def test_unknown_job(agent: Any) -> None:
    assert "no such job" in failed_run(agent, "nope", 2)["error"]


def test_lock_held(agent: Any) -> None:
    agent.job("vols", type="ebs_snapshot")
    with JobLock(Path(agent.data["state_dir"]), "vols"):
        doc = failed_run(agent, "vols", 75)
    assert doc["ebs_snapshots"] == []  # the type's own field, as when nothing ran


def test_job_failure_says_how_long_it_ran(agent: Any) -> None:
    agent.job("dump", type="command", command=["sh", "-c", "sleep 0.5; exit 3"])
    doc = failed_run(agent, "dump", 1)
    assert doc["duration_s"] >= 0.5 and "exit" in doc["error"]


def test_storage_error(agent: Any, tmp_path: Path) -> None:
    agent.data["storage"]["bucket"] = "no-such-bucket-here"
    agent.job("dump", type="command", command=["echo", "x"])
    failed_run(agent, "dump", 1)


def test_interrupted_by_sigterm(agent: Any) -> None:
    agent.job("dump", type="command", command=["sh", "-c", "kill -TERM $PPID; sleep 5"])
    doc = failed_run(agent, "dump", 143)
    assert "SIGTERM" in doc["error"]


def test_a_failure_before_the_config_is_read(agent: Any) -> None:
    Path(agent.path).write_text(yaml.safe_dump({"storage": "not a mapping"}))
    failed_run(agent, "etc", 2)
