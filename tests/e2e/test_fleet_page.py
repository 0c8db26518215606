"""The fleet page (`knife exec knife/backup_agent_fleet.rb`) against a real Chef server API
(chef-zero on loopback): nodes carrying what the Ohai plugin reports become one table, as text,
JSON and a self-contained HTML page. Nodes are uploaded with `knife node from file` (automatic
attributes as the plugin sets them); nothing on this machine outside the test's directory is
touched, so this suite needs neither root nor the machine lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.machine import REPO
from support.seaweedfs import free_port

SCRIPT = REPO / "knife" / "backup_agent_fleet.rb"

pytestmark = pytest.mark.skipif(shutil.which("bundle") is None or not (REPO / "vendor" / "bundle").exists(),
                                reason="needs the Ruby bundle (make bundle) for chef-zero and knife")


def _node(name: str, env: str, status: dict[str, Any], drill_failed: bool = False) -> dict[str, Any]:
    return {"name": name, "chef_type": "node", "json_class": "Chef::Node", "chef_environment": env,
            "run_list": ["recipe[backup_agent]"],
            "automatic": {"backup_agent": {"status": status}, "backup_agent_stale": status.get("stale", False),
                          "backup_agent_drill_failed": drill_failed}}


def _job(**fields: Any) -> dict[str, Any]:
    return {"type": "files", "schedule": "daily at 02:00", "result": "success", "stale": False,
            "last_success": "2026-12-03T02:00:05Z", **fields}


class Knife:
    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        key = workdir / "admin.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        self.config = workdir / "knife.rb"
        self.config.write_text(f"chef_server_url '{url}'\nnode_name 'admin'\nclient_key '{key}'\n")
        self.env = {**os.environ, "CHEF_LICENSE": "accept-no-persist", "BUNDLE_GEMFILE": str(REPO / "Gemfile"),
                    "HOME": str(workdir)}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bundle", "exec", "knife", *args, "-c", str(self.config)], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc


@pytest.fixture(scope="module")
def knife(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knife]:
    workdir = tmp_path_factory.mktemp("fleet")
    port = free_port()
    env = {**os.environ, "CHEF_LICENSE": "accept-no-persist", "BUNDLE_GEMFILE": str(REPO / "Gemfile")}
    with (workdir / "chef-zero.log").open("wb") as log:
        zero = subprocess.Popen(["bundle", "exec", "chef-zero", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        k = Knife(workdir, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while k("node", "list", check=False).returncode != 0:
            assert zero.poll() is None and time.monotonic() < deadline, (workdir / "chef-zero.log").read_text()
            time.sleep(1)
        nodes = [
            _node("web-01", "production", {
                "collected_at": "2026-12-03T10:00:00Z", "daemon_running": True, "stale": False,
                "jobs": {"etc": _job(stored_bytes=3 << 30, monthly_usd=0.069, drill_result="ok"),
                         "db": _job(type="command", stored_bytes=1 << 20, monthly_usd=0.5, drill_result="failed")},
            }, drill_failed=True),
            _node("web-02", "staging", {
                "collected_at": "2026-12-03T09:00:00Z", "daemon_running": False, "stale": True,
                "jobs": {"etc": _job(result="failed", stale=True, consecutive_failures=3, monthly_usd=1.25)},
            }),
            _node("broken", "staging", {"collected_at": "2026-12-03T09:00:00Z", "stale": True,
                                        "error": "`backup-agent status --json` exited 2"}),
            {"name": "no-agent", "chef_type": "node", "json_class": "Chef::Node", "chef_environment": "_default"},
        ]
        for n in nodes:
            path = workdir / f"{n['name']}.json"
            path.write_text(json.dumps(n))
            k("node", "from", "file", str(path))
        yield k
    finally:
        zero.terminate()
        try:
            zero.wait(10)
        except subprocess.TimeoutExpired:
            zero.kill()
            zero.wait()


def test_fleet_json_has_one_row_per_node_and_job(knife: Knife) -> None:
    doc = json.loads(knife("exec", str(SCRIPT), "json").stdout)
    rows = {(r["node"], r["job"]): r for r in doc["rows"]}
    assert set(rows) == {("web-01", "db"), ("web-01", "etc"), ("web-02", "etc"), ("broken", None)}
    assert rows[("web-01", "etc")]["stored_bytes"] == 3 << 30 and rows[("web-01", "etc")]["stale"] is False
    assert rows[("web-02", "etc")]["stale"] is True and rows[("web-02", "etc")]["result"] == "failed"
    assert rows[("broken", None)]["result"] == "agent cannot report"
    assert doc["stale_nodes"] == ["broken", "web-02"]
    assert doc["drill_failed_nodes"] == ["web-01"]
    assert doc["monthly_usd"] == pytest.approx(0.069 + 0.5 + 1.25)


def test_fleet_table_and_query(knife: Knife) -> None:
    text = knife("exec", str(SCRIPT)).stdout
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["NODE", "ENV", "JOB"]
    assert any(line.startswith("web-02") and "STALE" in line and "failed" in line for line in lines)
    assert any("3.0 GiB" in line for line in lines)
    assert "drill failed: 1 node(s) (web-01)" in lines[-1] and "1.8190 USD/month" in lines[-1]
    only = knife("exec", str(SCRIPT), "json", "chef_environment:production").stdout
    assert {r["node"] for r in json.loads(only)["rows"]} == {"web-01"}
    # the plugin's own flag is what `knife search` answers
    found = knife("search", "node", "backup_agent_drill_failed:true", "-a", "name", "-F", "json").stdout
    assert [next(iter(r)) for r in json.loads(found)["rows"]] == ["web-01"]


def test_fleet_html_page(knife: Knife, tmp_path: Path) -> None:
    page = tmp_path / "fleet.html"
    knife("exec", str(SCRIPT), "html", str(page))
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "web-02" in html and 'class="bad"' in html
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
