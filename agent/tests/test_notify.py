"""Notifications against a local HTTP server: healthchecks.io pings, the JSON webhook, and
endpoints that hang or fail, which must neither fail nor noticeably delay a backup."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from support.httpreceiver import Receiver

from backup_agent.logfmt import set_secrets
from backup_agent.notify import Notifier

UUID = "5f1d3c9e-0d7b-4b1e-9a57-0e4c2f7d1a42"

RECORD = {"job": "etc", "type": "files", "result": "success", "last_snapshot": "20261127T020000Z-abc123",
          "bytes_uploaded": 1234, "duration_s": 2.5, "last_start": "2026-11-27T02:00:00Z",
          "last_end": "2026-11-27T02:00:02Z", "consecutive_failures": 0, "error": None}


@pytest.fixture
def receiver() -> Any:
    with Receiver() as r:
        yield r


def notifier(**notify: Any) -> Notifier:
    return Notifier(notify, node="web-01", environment="production")


def test_healthchecks_start_and_success_share_a_run_id(receiver: Receiver) -> None:
    n = notifier(healthchecks_url=f"{receiver.url}/ping/{UUID}")
    n.start("etc")
    n.finish(RECORD, 0)
    assert n.wait(5)
    start, end = sorted(receiver.requests, key=lambda r: "/start" not in r.path)
    assert start.path == f"/ping/{UUID}/start?rid={n.run_id}"
    assert end.path == f"/ping/{UUID}?rid={n.run_id}"
    assert b"snapshot 20261127T020000Z-abc123" in end.body
    assert start.headers["User-Agent"].startswith("backup-agent/")


@pytest.mark.parametrize(("exit_code", "suffix"), [(1, "/1"), (3, "/3"), (None, "/fail")])
def test_healthchecks_failure_carries_the_exit_code(receiver: Receiver, exit_code: int | None,
                                                    suffix: str) -> None:
    n = notifier(healthchecks_url=f"{receiver.url}/ping/{UUID}/")
    n.finish({**RECORD, "result": "failed", "error": "bucket gone"}, exit_code)
    assert n.wait(5)
    (req,) = receiver.requests
    assert req.path == f"/ping/{UUID}{suffix}?rid={n.run_id}"
    assert b"error: bucket gone" in req.body


def test_healthchecks_url_placeholders_give_each_job_its_check(receiver: Receiver) -> None:
    n = notifier(healthchecks_url=f"{receiver.url}/ping/KEY/{{node}}-{{job}}")
    n.finish(RECORD, 0)
    assert n.wait(5)
    assert receiver.paths() == [f"/ping/KEY/web-01-etc?rid={n.run_id}"]


def test_webhook_gets_one_json_document_per_run(receiver: Receiver) -> None:
    n = notifier(webhook_url=f"{receiver.url}/hook")
    n.start("etc")  # no healthchecks URL: nothing to send at the start
    n.finish(RECORD, 0)
    assert n.wait(5)
    (req,) = receiver.requests
    assert req.headers["Content-Type"] == "application/json"
    doc = req.json()
    assert doc["event"] == "backup_agent.run"
    assert doc["node"] == "web-01" and doc["environment"] == "production"
    assert doc["job"] == "etc" and doc["result"] == "success" and doc["exit_code"] == 0
    assert doc["snapshot"] == "20261127T020000Z-abc123"
    assert doc["bytes_uploaded"] == 1234 and doc["duration_s"] == 2.5
    assert doc["started"] == "2026-11-27T02:00:00Z"


def test_webhook_masks_secrets_in_the_error(receiver: Receiver) -> None:
    set_secrets(["hunter2-password"])
    try:
        n = notifier(webhook_url=f"{receiver.url}/hook")
        n.finish({**RECORD, "result": "failed", "error": "pg_dump: password hunter2-password rejected"}, 1)
        assert n.wait(5)
    finally:
        set_secrets([])
    body = receiver.requests[0].body.decode()
    assert "hunter2-password" not in body
    assert "password *** rejected" in body


def test_a_500_is_retried_a_few_times_then_given_up(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    n = notifier(healthchecks_url=f"{receiver.url}/fail500/{UUID}", timeout=2)
    t0 = time.monotonic()
    n.finish(RECORD, 0)
    assert n.wait(10)
    assert 2 <= len(receiver.requests) <= 4
    assert time.monotonic() - t0 < 5
    assert "HTTP 500" in caplog.text
    assert UUID not in caplog.text  # the ping URL's path is its credential


def test_a_hanging_endpoint_never_blocks_the_caller(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    n = notifier(healthchecks_url=f"{receiver.url}/hang/{UUID}", webhook_url=f"{receiver.url}/hang/hook",
                 timeout=0.5)
    t0 = time.monotonic()
    n.start("etc")
    n.finish(RECORD, 0)
    assert time.monotonic() - t0 < 0.2  # sending happens in the background
    assert n.wait(5)  # and is bounded by the timeout (no retry of a read timeout)
    assert time.monotonic() - t0 < 3
    assert len(receiver.requests) == 3
    assert "timed out after 0.5s" in caplog.text
    assert UUID not in caplog.text


def test_an_unreachable_endpoint_is_only_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    n = notifier(webhook_url="http://127.0.0.1:9/hook", timeout=1)
    n.finish(RECORD, 0)
    assert n.wait(10)
    assert "webhook to http://127.0.0.1:9 failed: cannot connect" in caplog.text


# --- through `backup-agent run` against SeaweedFS -------------------------------------------------


def test_run_pings_and_posts(agent: Any, receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    agent.write(notify={"healthchecks_url": f"{receiver.url}/ping/{UUID}", "webhook_url": f"{receiver.url}/hook"})
    agent.job("etc", type="files", paths=[str(tmp_path / "data")])
    out = agent.json("run", "etc")
    paths = receiver.paths()
    assert any(p.startswith(f"/ping/{UUID}/start?rid=") for p in paths)
    assert any(p.startswith(f"/ping/{UUID}?rid=") for p in paths)
    (hook,) = receiver.matching("/hook")
    assert hook.json()["snapshot"] == out["snapshot"]
    assert hook.json()["result"] == "success"


def test_run_with_broken_endpoints_still_succeeds_quickly(agent: Any, receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_text("x")
    agent.write(notify={"healthchecks_url": f"{receiver.url}/fail500/{UUID}",
                        "webhook_url": f"{receiver.url}/hang/hook", "timeout": 1})
    agent.job("etc", type="files", paths=[str(tmp_path / "data")])
    t0 = time.monotonic()
    proc = agent.run("run", "etc", "--json")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 15
    assert "webhook to" in proc.stderr and "timed out" in proc.stderr
    assert UUID not in proc.stderr
    assert len(agent.json("snapshots", "etc")) == 1
