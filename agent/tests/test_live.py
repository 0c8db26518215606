"""Continuous protection (`schedule: continuous`): the pace (pure), the inotify watch on a real
temp tree, and a real daemon against SeaweedFS taking snapshots after changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT
from support.waiting import wait_for

from backup_agent.inotify import IN_Q_OVERFLOW, TreeWatch
from backup_agent.live import Pace

# --- the pace ------------------------------------------------------------------------------------


def test_a_change_is_due_settle_seconds_later_and_never_sooner_than_min_interval() -> None:
    p = Pace(settle=10, min_interval=60)
    assert p.due_at() is None and p.rpo(5) == 0
    p.changed(100)
    p.changed(105)  # the first change counts
    assert p.due_at() == 110
    assert p.rpo(108) == 8
    p.started(110)
    assert p.due_at() is None
    assert p.rpo(115) == 15  # the run is not done: the change at 100 is not protected yet
    p.changed(120)
    assert p.due_at() == 170  # 60 s after the start, not 130
    p.finished(True)
    assert p.rpo(125) == 5  # only the change at 120 is left
    p.started(170)
    p.finished(True)
    assert p.rpo(500) == 0 and p.due_at() is None


def test_a_failed_run_leaves_its_changes_pending() -> None:
    p = Pace(settle=1, min_interval=5)
    p.changed(10)
    p.started(11)
    p.changed(12)
    p.finished(False)
    assert p.pending_since == 10 and p.due_at() == 16
    assert p.rpo(20) == 10


# --- the watch -----------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, TreeWatch]]:
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "skipme").mkdir()
    w = TreeWatch([str(root)], lambda p: os.path.basename(p) == "skipme")
    yield root, w
    w.close()


def settled(w: TreeWatch) -> bool:
    time.sleep(0.05)
    return w.read()


def test_changes_anywhere_in_the_tree_are_seen(tree: tuple[Path, TreeWatch]) -> None:
    root, w = tree
    assert not settled(w)
    (root / "a" / "b" / "f").write_text("x")
    assert settled(w)
    assert not settled(w)
    (root / "new" / "deeper").mkdir(parents=True)
    settled(w)
    (root / "new" / "deeper" / "g").write_text("x")  # a directory made after the start is watched too
    assert settled(w)
    (root / "skipme" / "h").write_text("x")  # excluded
    assert not settled(w)
    os.chmod(root / "a" / "b" / "f", 0o600)
    assert settled(w)


def test_watches_survive_a_directory_rename(tree: tuple[Path, TreeWatch]) -> None:
    root, w = tree
    (root / "a").rename(root / "renamed")
    assert settled(w)
    # The watch of the renamed directory knows its new path: a directory made inside it is watched.
    (root / "renamed" / "later").mkdir()
    settled(w)
    (root / "renamed" / "later" / "f").write_text("x")
    assert settled(w)
    # Moved in from outside the tree: watched as well.
    outside = root.parent / "outside"
    (outside / "sub").mkdir(parents=True)
    outside.rename(root / "moved-in")
    assert settled(w)
    (root / "moved-in" / "sub" / "f").write_text("x")
    assert settled(w)


def test_queue_overflow_falls_back_to_a_rescan(tree: tuple[Path, TreeWatch]) -> None:
    root, w = tree
    before = w.rescans
    # Lost events are a change, and the watches are rebuilt from the tree as it is now.
    assert w.handle([(-1, IN_Q_OVERFLOW, b"")])
    assert w.rescans == before + 1
    assert sorted(w.wds.values()) == sorted(str(p) for p in [root, root / "a", root / "a" / "b"])


# --- a real daemon -------------------------------------------------------------------------------


@pytest.fixture
def daemon(agent: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    data = tmp_path / "data"
    (data / "dir" / "sub").mkdir(parents=True)
    (data / "dir" / "sub" / "one").write_text("one")
    textfile = tmp_path / "metrics.prom"
    agent.write(metrics={"textfile": str(textfile)})
    agent.job("live", type="files", paths=[str(data)], schedule="continuous", settle=1, min_interval=4)
    log_path = tmp_path / "daemon.log"
    proc = subprocess.Popen([AGENT, "-c", str(agent.path), "daemon"], stdout=subprocess.DEVNULL,
                            stderr=log_path.open("wb"))
    state: dict[str, Any] = {"data": data, "log": log_path, "proc": proc, "textfile": textfile}
    yield state
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def finished_runs(d: dict[str, Any]) -> int:
    return Path(d["log"]).read_text(errors="replace").count("job live: run finished")


def wait_runs(d: dict[str, Any], n: int, timeout: float = 30) -> None:
    wait_for(lambda: finished_runs(d) >= n or d["proc"].poll() is not None, timeout, f"{n} finished runs")
    assert finished_runs(d) >= n, Path(d["log"]).read_text()


def snapshot_files(agent: Any) -> set[str]:
    proc = agent.run("ls", "live", "--json")
    assert proc.returncode == 0, proc.stderr
    return {e["path"] for e in json.loads(proc.stdout)["entries"]}


def test_daemon_snapshots_after_changes_within_settle_and_never_faster_than_min_interval(
        agent: Any, daemon: dict[str, Any]) -> None:
    data = daemon["data"]
    wait_runs(daemon, 1)  # what changed while no daemon watched is unknown: one snapshot at start
    time.sleep(4)  # past min_interval: the next change waits only for settle
    t0 = time.monotonic()
    (data / "two").write_text("two")
    wait_runs(daemon, 2)
    assert time.monotonic() - t0 < 1 + 8, "a snapshot soon after settle (1 s)"
    assert any(p.endswith("/two") for p in snapshot_files(agent))

    # A burst of changes right after a run: one more run, min_interval (4 s) after the last start.
    t1 = time.monotonic()
    for i in range(5):
        (data / f"burst{i}").write_text(str(i))
        time.sleep(0.2)
    wait_runs(daemon, 3)
    time.sleep(2)
    assert finished_runs(daemon) == 3
    assert time.monotonic() - t1 >= 2
    status = agent.json("status")["jobs"][0]
    assert status["schedule"] == "continuous" and status["rpo_s"] == 0 and status["unprotected_since"] is None
    assert "backup_agent_rpo_seconds{job=\"live\"} 0" in daemon["textfile"].read_text()

    # A directory renamed, then a new directory inside it: still watched.
    (data / "dir").rename(data / "moved")
    wait_runs(daemon, 4, timeout=40)
    (data / "moved" / "fresh").mkdir()
    time.sleep(0.5)
    (data / "moved" / "fresh" / "f").write_text("x")
    time.sleep(0.5)
    status = agent.json("status")["jobs"][0]
    assert status["rpo_s"] > 0 and status["unprotected_since"] is not None, "the change is pending"
    wait_runs(daemon, 5, timeout=40)
    wait_for(lambda: any(p.endswith("/moved/fresh/f") for p in snapshot_files(agent)), 20, "the renamed dir's file")


# --- the config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("job", "message"), [
    ({"type": "command", "command": ["true"], "schedule": "continuous"},
     "jobs.j.schedule: 'continuous' is for files jobs only"),
    ({"type": "files", "paths": ["/srv"], "schedule": "daily at 01:00", "settle": 5},
     "jobs.j.settle: only with schedule: continuous"),
    ({"type": "files", "paths": ["/srv"], "schedule": "continuous", "min_interval": 0},
     "jobs.j.min_interval: must be ≥ 1"),
])
def test_config_refuses_continuous_where_it_cannot_work(job: dict[str, Any], message: str) -> None:
    from backup_agent import config
    from backup_agent.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        config.from_dict({"node": "n", "storage": {"bucket": "bkt"}, "jobs": {"j": job}}, "c.yaml")
    assert message in str(e.value)
    ok = config.from_dict({"node": "n", "storage": {"bucket": "bkt"},
                           "jobs": {"j": {"type": "files", "paths": ["/srv"], "schedule": " Continuous "}}}, "c.yaml")
    assert ok.jobs["j"].schedule is not None and ok.jobs["j"].schedule.kind == "continuous"


def test_a_single_file_path_sees_its_file_only(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    target = tmp_path / "etc" / "app.conf"
    target.write_text("a")
    w = TreeWatch([str(target)])
    try:
        (tmp_path / "etc" / "other").write_text("x")
        assert not settled(w)
        target.write_text("b")
        assert settled(w)
        # Replaced by rename, as editors and config managers do.
        (tmp_path / "etc" / "app.conf.tmp").write_text("c")
        settled(w)
        (tmp_path / "etc" / "app.conf.tmp").rename(target)
        assert settled(w)
    finally:
        w.close()
