"""The cookbook under a real systemd: `chef-client --local-mode` inside Debian 12 and 13 containers.

For each release, one container (systemd as PID 1) is converged in order, as a node's life goes:
  1. staging from scratch: backup-agent.service is enabled and active;
  2. the same converge again updates 0 resources and leaves the daemon alone (same MainPID);
  3. a schedule edited in the environment: the service is reloaded, not restarted (same MainPID),
     and the daemon logs the new schedule;
  4. a new agent version (a newer wheel in the cookbook's files/agent): the service is restarted
     (new MainPID, the new version runs);
  5. the unit's TimeoutStopSec covers the agent's stop_timeout, and `systemctl stop` while a
     backup runs lets that run finish, then stops cleanly.
The agent comes from the cookbook alone (its files/agent wheel); pip's only source is a
dependency mirror (the wheelhouse, read-only) that holds no backup-agent.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.containers import Container
from support.machine import REPO

from containers.conftest import (
    CHEF_REPO_INSIDE,
    FIXTURES,
    MIRROR_INSIDE,
    SUITES,
    agent_wheels_in,
    booting,
    build_agent_wheel,
    dependency_mirror,
)

FINISHED = re.compile(r"(?:Chef Infra Client finished|Infra Phase complete), (\d+)/(\d+) resources updated")
CHEF_DIR = "/root/chef"
CONFIG = "/etc/backup-agent/config.yaml"
NEW_VERSION = "0.1.1"
# Longer than systemd's default TimeoutStopSec (90 s): the unit must follow the agent's setting.
STOP_TIMEOUT = 120
# A backup that takes a while: `systemctl stop` comes while it runs.
SLOW_JOB = {"type": "command", "command": ["sh", "-c", "sleep 20; echo finished"], "schedule": "every 1 hours"}
OHAI_LANGUAGES = ["C", "Elixir", "Erlang", "Go", "Groovy", "Haskell", "Java", "Lua", "Mono", "Nodejs", "Perl",
                  "PHP", "Powershell", "Python", "Rust", "Scala"]
TIMINGS: list[tuple[str, float]] = []


@dataclass
class Converge:
    returncode: int
    output: str

    @property
    def updated(self) -> int:
        found = FINISHED.findall(self.output)
        assert found, f"no 'resources updated' line:\n{self.output[-4000:]}"
        return int(found[-1][0])


class Node:
    """A booted container with a chef repository: a copy of this checkout's cookbooks and its
    data bags (read-only), an editable copy of environments/, node state and the data bag secret."""

    def __init__(self, container: Container, suite: str, logs: Path) -> None:
        self.container = container
        self.logs = logs
        self.suite = suite
        self.name = f"ct-{suite}"
        self.chef = container.path(CHEF_DIR)
        (self.chef / "environments").mkdir(parents=True)
        for env in (REPO / "environments").glob("*.json"):
            (self.chef / "environments" / env.name).write_text(env.read_text())
        (self.chef / "secret").write_bytes((FIXTURES / "encrypted_data_bag_secret").read_bytes())
        (self.chef / "secret").chmod(0o600)
        settings = {
            "node_name": self.name,
            "chef_repo_path": CHEF_REPO_INSIDE,
            "data_bag_path": f"{CHEF_REPO_INSIDE}/data_bags",
            "environment_path": f"{CHEF_DIR}/environments",
            "node_path": f"{CHEF_DIR}/nodes",
            "client_path": f"{CHEF_DIR}/clients",
            "client_key": f"{CHEF_DIR}/client.pem",
            "file_cache_path": f"{CHEF_DIR}/cache",
            "file_backup_path": f"{CHEF_DIR}/backup",
            "encrypted_data_bag_secret": f"{CHEF_DIR}/secret",
        }
        lines = ["local_mode true", f'cookbook_path ["{CHEF_REPO_INSIDE}/cookbooks"]']
        lines += [f"{key} {json.dumps(value)}" for key, value in settings.items()]
        # Ohai's inventory of installed languages is slow and nothing here reads it.
        lines.append("ohai.disabled_plugins = [" + ", ".join(f":{name}" for name in OHAI_LANGUAGES) + "]")
        (self.chef / "client.rb").write_text("\n".join(lines) + "\n")
        self.version = "0.1.0"
        self.stop_seconds = 0.0
        # The staging job `app` backs up /srv/app.
        container.path("/srv/app").mkdir(parents=True, exist_ok=True)
        container.path("/srv/app/hello.txt").write_text("hello from the container\n")

    def attributes(self) -> dict[str, Any]:
        return {
            "run_list": ["recipe[backup_agent]"],
            "backup_agent": {
                "install": {**dependency_mirror(self.suite), "version": self.version},
                "config": {"stop_timeout": STOP_TIMEOUT},
            },
        }

    def converge(self, label: str) -> Converge:
        (self.chef / "attributes.json").write_text(json.dumps(self.attributes()))
        started = time.monotonic()
        proc = self.container.run("chef-client", "--no-color", "-z", "-c", f"{CHEF_DIR}/client.rb",
                                  "-E", "staging", "-j", f"{CHEF_DIR}/attributes.json", timeout=900)
        TIMINGS.append((f"{self.suite} {label}", time.monotonic() - started))
        output = proc.stdout + proc.stderr
        # Each run's output, for whoever debugs a failure.
        (self.logs / f"{label}.log").write_text(output)
        assert proc.returncode == 0, f"chef-client ({self.suite}, {label}) failed:\n{output[-6000:]}"
        return Converge(proc.returncode, output)

    def edit_environment(self, change: Any) -> None:
        path = self.chef / "environments" / "staging.json"
        env = json.loads(path.read_text())
        change(env["default_attributes"]["backup_agent"]["jobs"])
        path.write_text(json.dumps(env, indent=2))

    def systemctl(self, *args: str) -> str:
        return str(self.container.run("systemctl", *args).stdout).strip()

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", "backup-agent")

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal(self) -> str:
        return str(self.container.run("journalctl", "-u", "backup-agent", "--no-pager", "-o", "cat").stdout)

    def wait_for_log(self, needle: str, count: int = 1, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.journal()
            if log.count(needle) >= count:
                return log
            if time.monotonic() > deadline:
                pytest.fail(f"{self.suite}: the journal of backup-agent has no {needle!r} (x{count}):\n{log[-3000:]}")
            time.sleep(0.3)


@dataclass
class Step:
    converge: Converge
    pid_before: int
    pid_after: int


# What each step did on each release, or why it could not be done there.
Steps = dict[str, Step | BaseException]


def each(nodes: dict[str, Node], previous: Steps | None, step: Callable[[Node], Step]) -> Steps:
    """One step on every release at once (a converge keeps one core busy; CI has two), skipping
    releases whose previous step failed."""
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        futures = {suite: pool.submit(step, node) for suite, node in nodes.items()
                   if previous is None or isinstance(previous[suite], Step)}
        done: Steps = {}
        for suite in nodes:
            if suite not in futures:
                done[suite] = RuntimeError(f"{suite}: an earlier step failed")
                continue
            try:
                done[suite] = futures[suite].result()
            except BaseException as exc:  # the test of that release reports it
                done[suite] = exc
        return done


def outcome(steps: Steps, suite: str) -> Step:
    step = steps[suite]
    if isinstance(step, BaseException):
        raise step
    return step


@pytest.fixture(scope="module")
def nodes(cookbooks: Path, s3: Any) -> Iterator[dict[str, Node]]:
    with contextlib.ExitStack() as stack:
        found: dict[str, Node] = {}
        for suite in SUITES:
            container = stack.enter_context(booting(suite, f"svc-{suite}", cookbooks))
            # The chef-client outputs stay after the run (build/ is ignored), for whoever debugs one.
            logs = REPO / "build" / "test-containers" / suite
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir(parents=True)
            found[suite] = Node(container, suite, logs)
        for node in found.values():
            node.container.launch()
        for node in found.values():
            node.container.wait_booted()
        yield found
        for node in found.values():
            node.container.request_stop()
        print("\nconverge timings: " + ", ".join(f"{label} {s:.0f}s" for label, s in TIMINGS))


@pytest.fixture(scope="module")
def first(nodes: dict[str, Node]) -> Steps:
    def step(node: Node) -> Step:
        run = node.converge("first")
        return Step(run, 0, node.main_pid())

    return each(nodes, None, step)


@pytest.fixture(scope="module")
def second(nodes: dict[str, Node], first: Steps) -> Steps:
    def step(node: Node) -> Step:
        before = node.main_pid()
        run = node.converge("second")
        return Step(run, before, node.main_pid())

    return each(nodes, first, step)


@pytest.fixture(scope="module")
def reloaded(nodes: dict[str, Node], second: Steps) -> Steps:
    def step(node: Node) -> Step:
        node.wait_for_log("daemon started")
        before = node.main_pid()
        node.edit_environment(lambda jobs: jobs["etc"].update(schedule="every 12 hours"))
        run = node.converge("schedule-change")
        return Step(run, before, node.main_pid())

    return each(nodes, second, step)


@pytest.fixture(scope="module")
def upgraded(nodes: dict[str, Node], reloaded: Steps, cookbooks: Path) -> Steps:
    # A release of the agent reaches nodes as a new wheel in the cookbook and install.version.
    build_agent_wheel(NEW_VERSION, cookbooks / "backup_agent" / "files" / "agent")

    def step(node: Node) -> Step:
        before = node.main_pid()
        node.version = NEW_VERSION
        run = node.converge("new-version")
        return Step(run, before, node.main_pid())

    return each(nodes, reloaded, step)


@pytest.fixture(scope="module")
def stopped(nodes: dict[str, Node], upgraded: Steps) -> Steps:
    """A slow job added, and `systemctl stop` while its first run goes on."""
    def step(node: Node) -> Step:
        node.edit_environment(lambda jobs: jobs.update(slow=SLOW_JOB))
        run = node.converge("slow-job")
        node.wait_for_log("job slow: run started")
        before = node.main_pid()
        started = time.monotonic()
        stop = node.container.run("systemctl", "stop", "backup-agent", timeout=STOP_TIMEOUT + 60)
        assert stop.returncode == 0, f"systemctl stop failed: {stop.stderr}"
        node.stop_seconds = time.monotonic() - started
        return Step(run, before, node.main_pid())

    return each(nodes, upgraded, step)


# Building the images (first run on a machine) happens in the first test's setup.
pytestmark = [pytest.mark.parametrize("suite", SUITES), pytest.mark.timeout(1800)]


def test_first_converge_enables_and_starts_the_service(suite: str, nodes: dict[str, Node], first: Steps) -> None:
    node, step = nodes[suite], outcome(first, suite)
    assert step.converge.updated > 0
    assert node.systemctl("is-enabled", "backup-agent") == "enabled"
    assert node.systemctl("is-active", "backup-agent") == "active"
    assert step.pid_after > 0
    node.wait_for_log("daemon started")
    # The unit runs the installed agent with the rendered config.
    cmdline = node.container.run("cat", f"/proc/{step.pid_after}/cmdline").stdout.split("\0")
    assert cmdline[-4:-1] == ["-c", CONFIG, "daemon"], cmdline


def test_first_converge_installs_the_agent_the_cookbook_carries(suite: str, nodes: dict[str, Node],
                                                                 cookbooks: Path, first: Steps) -> None:
    node = nodes[suite]
    outcome(first, suite)
    # pip was offered the dependency mirror alone, and no backup-agent is in it ...
    install = node.attributes()["backup_agent"]["install"]
    assert install["find_links"] == [MIRROR_INSIDE] and install["no_index"] is True
    assert not install.get("index_url")
    offered = node.container.run("ls", "-1", MIRROR_INSIDE).stdout.split()
    assert any(name.startswith("boto3-") for name in offered), f"{suite}: no dependency mirror inside: {offered}"
    assert not agent_wheels_in(offered), f"the mirror offers {agent_wheels_in(offered)}"
    # ... so the agent that runs is the cookbook's wheel, byte for byte.
    wheel = f"backup_agent-{node.version}-py3-none-any.whl"
    carried = (cookbooks / "backup_agent" / "files" / "agent" / wheel).read_bytes()
    assert node.container.path(f"/opt/backup-agent/dist/{wheel}").read_bytes() == carried
    version = node.container.run("/usr/local/bin/backup-agent", "--version")
    assert version.returncode == 0 and node.version in version.stdout, version.stdout + version.stderr


def test_second_converge_updates_nothing(suite: str, nodes: dict[str, Node], second: Steps) -> None:
    node, step = nodes[suite], outcome(second, suite)
    assert step.converge.updated == 0, step.converge.output[-4000:]
    assert step.pid_after == step.pid_before
    assert node.journal().count("config reloaded") == 0


def test_schedule_change_reloads_the_same_process(suite: str, nodes: dict[str, Node], reloaded: Steps) -> None:
    node, step = nodes[suite], outcome(reloaded, suite)
    output = step.converge.output
    assert "service[backup-agent] action reload" in output
    assert "action restart" not in output
    assert step.pid_after == step.pid_before, "the service was restarted, not reloaded"
    log = node.wait_for_log("config reloaded")
    assert re.search(r"job etc: schedule 'every 12 hours'", log), log[-3000:]
    assert log.count("daemon started") == 1, log[-3000:]
    assert node.systemctl("is-active", "backup-agent") == "active"


def test_new_agent_version_restarts_the_service(suite: str, nodes: dict[str, Node], upgraded: Steps) -> None:
    node, step = nodes[suite], outcome(upgraded, suite)
    output = step.converge.output
    assert "execute[install backup-agent] action run" in output
    assert "service[backup-agent] action restart" in output
    assert step.pid_after not in (0, step.pid_before), "the daemon was not restarted"
    assert node.systemctl("is-active", "backup-agent") == "active"
    node.wait_for_log("daemon started", count=2)
    version = node.container.run("/usr/local/bin/backup-agent", "--version").stdout
    assert NEW_VERSION in version


def systemd_seconds(value: str) -> float:
    """A systemd time span as `systemctl show` prints it ("2min 30s", "1h", "infinity")."""
    if value == "infinity":
        return float("inf")
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(us|ms|min|s|h|d)", value):
        total += float(number) * units[unit]
    assert total > 0, f"unparsed time span {value!r}"
    return total


def test_unit_gives_the_daemon_its_stop_timeout(suite: str, nodes: dict[str, Node], upgraded: Steps) -> None:
    node = nodes[suite]
    outcome(upgraded, suite)
    assert yaml.safe_load(node.container.path(CONFIG).read_text())["stop_timeout"] == STOP_TIMEOUT
    timeout_stop = systemd_seconds(node.show("TimeoutStopUSec"))
    assert timeout_stop >= STOP_TIMEOUT, f"TimeoutStopSec {timeout_stop}s < stop_timeout {STOP_TIMEOUT}s"
    # Only the daemon gets SIGTERM: the runs it supervises are its to finish or abort.
    assert node.show("KillMode") == "mixed"


def test_stop_lets_a_running_backup_finish_then_stops_cleanly(suite: str, nodes: dict[str, Node],
                                                             stopped: Steps) -> None:
    node = nodes[suite]
    outcome(stopped, suite)
    log = node.journal()
    # The stop came while the backup ran, and the daemon waited for it ...
    assert f"stopping: no new runs; waiting up to {STOP_TIMEOUT}s for slow to finish" in log, log[-3000:]
    # ... which finished undisturbed (systemd signalled the daemon only).
    assert re.search(r"job slow: run finished in [\d.]+s \(success\)", log), log[-3000:]
    assert "daemon stopped" in log
    assert node.systemctl("is-active", "backup-agent") == "inactive"
    assert node.show("Result") == "success"
    assert node.stop_seconds < STOP_TIMEOUT, f"systemctl stop took {node.stop_seconds:.0f}s"
