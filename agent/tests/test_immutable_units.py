"""Immutable backups without a server: the object_lock / pruned_by / maintenance keys, what
`validate` says about a lock longer than retention, the delete-failure classification prune
relies on, and the metrics of a write-only node."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AGENT

from backup_agent import immutability
from backup_agent.metrics import render


def run(tmp_path: Path, data: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return subprocess.run([AGENT, "-c", str(path), *args], capture_output=True, text=True, timeout=60)


def cfg(storage: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"storage": {"bucket": "acme-backups", **(storage or {})},
            "jobs": {"etc": {"type": "files", "paths": ["/etc"], "retention": {"keep_daily": 7}}}, **top}


@pytest.mark.parametrize(("data", "message"), [
    (cfg({"object_lock": {"mode": "FOREVER", "days": 3}}), "storage.object_lock.mode: must be one of GOVERNANCE"),
    (cfg({"object_lock": {"mode": "COMPLIANCE", "days": 0}}), "storage.object_lock.days: must be ≥ 1"),
    (cfg({"object_lock": {"mode": "COMPLIANCE"}}), "storage.object_lock.days: required key is missing"),
    (cfg({"pruned_by": "nobody"}), "storage.pruned_by: must be one of node, maintenance"),
    (cfg(maintenance={"retention": {"keep_forever": 1}}), "maintenance.retention.keep_forever: unknown key"),
])
def test_bad_lock_settings_are_one_line_and_exit_2(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    proc = run(tmp_path, data, "validate")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_validate_notes_a_lock_longer_than_retention(tmp_path: Path) -> None:
    proc = run(tmp_path, cfg({"object_lock": {"mode": "GOVERNANCE", "days": 30}}), "validate")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ok"
    assert "jobs.etc: storage.object_lock.days (30) exceeds its retention (about 7 days)" in lines[1]
    assert run(tmp_path, cfg({"object_lock": {"mode": "GOVERNANCE", "days": 5}}), "validate").stdout == "ok\n"


def test_a_lock_is_dated_from_the_write() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)
    until = immutability.retain_until(3, now)
    assert until >= now + timedelta(days=3) and until.microsecond == 0


@pytest.mark.parametrize(("code", "message", "kind"), [
    ("AccessDenied", "Access Denied because object protected by object lock.", "locked"),
    ("AccessDenied", "Access Denied", "denied"),
    ("InvalidRequest", "", "locked"),
    ("InternalError", "We encountered an internal error", "failed"),
])
def test_delete_failures_are_told_apart(code: str, message: str, kind: str) -> None:
    assert immutability.classify_delete_failure(code, message) == kind


def test_metrics_of_a_write_only_node_are_not_a_failure() -> None:
    text = render({"etc": {"result": "success", "prune_result": "elsewhere", "last_prune": "2026-01-01T00:00:00Z"},
                   "db": {"result": "success", "prune_result": "success", "prune_locked_skipped": 4}})
    assert 'backup_agent_prune_elsewhere{job="etc"} 1' in text
    assert 'backup_agent_last_prune_success{job="etc"}' not in text
    assert 'backup_agent_last_prune_locked_skipped{job="db"} 4' in text
