"""The node_exporter textfile: format, atomic replacement, and what real runs write into it."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from backup_agent.metrics import render, write_textfile
from backup_agent.state import write_status

SAMPLE = re.compile(r'^(?P<name>[a-z_]+)\{job="(?P<job>(?:[^"\\]|\\.)*)"\} (?P<value>-?[0-9.e+]+)$')


def parse(text: str) -> dict[tuple[str, str], float]:
    """Strict enough for node_exporter: HELP/TYPE before samples, one sample per line."""
    out: dict[tuple[str, str], float] = {}
    typed: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind == "gauge"
            typed.add(name)
            continue
        m = SAMPLE.match(line)
        assert m, line
        assert m["name"] in typed, line
        out[(m["name"], m["job"])] = float(m["value"])
    return out


def test_render_all_metrics_of_a_successful_and_a_failed_job() -> None:
    text = render({
        "etc": {"result": "success", "last_success": "2026-11-27T02:00:05Z", "last_end": "2026-11-27T02:00:05Z",
                "duration_s": 4.25, "bytes_uploaded": 1048576, "consecutive_failures": 0, "snapshots": 7},
        "pg": {"result": "failed", "last_success": None, "last_end": "2026-11-27T03:00:00Z", "duration_s": 1.5,
               "consecutive_failures": 3, "snapshots": 2},
        "never": {},
    })
    m = parse(text)
    assert m[("backup_agent_last_success_timestamp_seconds", "etc")] == 1795744805
    assert m[("backup_agent_last_run_duration_seconds", "etc")] == 4.25
    assert m[("backup_agent_last_run_bytes", "etc")] == 1048576
    assert m[("backup_agent_last_run_status", "etc")] == 0
    assert m[("backup_agent_snapshots", "etc")] == 7
    assert m[("backup_agent_last_run_status", "pg")] == 1
    assert m[("backup_agent_consecutive_failures", "pg")] == 3
    assert ("backup_agent_last_success_timestamp_seconds", "pg") not in m
    assert not [k for k in m if k[1] == "never"]
    assert text.count("# TYPE backup_agent_last_run_status gauge") == 1


def test_partial_and_aborted_status_values() -> None:
    m = parse(render({"a": {"result": "partial"}, "b": {"result": "aborted"}}))
    assert m[("backup_agent_last_run_status", "a")] == 3
    assert m[("backup_agent_last_run_status", "b")] == 1


def test_label_values_are_escaped() -> None:
    m = parse(render({'we"ird\\job': {"result": "success"}}))
    assert ("backup_agent_last_run_status", 'we\\"ird\\\\job') in m


def test_write_replaces_the_file_atomically_and_world_readable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    target = tmp_path / "textfile" / "backup_agent.prom"
    target.parent.mkdir()
    target.write_text("old content\n")
    inode = target.stat().st_ino
    write_status(state, "etc", {"result": "success", "duration_s": 1.0})
    write_textfile(target, state, ["etc", "other"])
    assert target.stat().st_ino != inode  # renamed over, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert parse(target.read_text()) == {("backup_agent_last_run_duration_seconds", "etc"): 1.0,
                                         ("backup_agent_last_run_status", "etc"): 0.0}
    assert os.listdir(target.parent) == ["backup_agent.prom"]  # no temp files left behind


def test_an_unwritable_textfile_is_logged_not_raised(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "file").write_text("")
    write_textfile(tmp_path / "file" / "x.prom", tmp_path / "state", ["etc"])
    assert "metrics: cannot write" in caplog.text


def test_runs_write_the_textfile(agent: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 5000)
    textfile = tmp_path / "node_exporter" / "backup_agent.prom"
    agent.write(metrics={"textfile": str(textfile)})
    agent.job("etc", type="files", paths=[str(data)])
    agent.job("partial", type="files", paths=[str(tmp_path / "missing")])
    first = agent.json("run", "etc")
    m = parse(textfile.read_text())
    assert m[("backup_agent_last_run_status", "etc")] == 0
    assert m[("backup_agent_snapshots", "etc")] == 1
    assert m[("backup_agent_last_run_bytes", "etc")] == first["bytes_uploaded"] > 0
    (data / "g").write_text("more")
    agent.json("run", "etc")
    proc = agent.run("run", "partial")
    assert proc.returncode == 3, proc.stderr
    m = parse(textfile.read_text())
    assert m[("backup_agent_snapshots", "etc")] == 2
    assert m[("backup_agent_last_run_status", "partial")] == 3
    assert m[("backup_agent_consecutive_failures", "partial")] == 0
    assert m[("backup_agent_last_success_timestamp_seconds", "etc")] > 1.7e9
