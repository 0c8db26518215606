"""The knife workflow of README.md end to end: a Chef server, an SSH node, the fleet view.

A real Chef server API (chef-zero on loopback) gets this repository's environments, the
encrypted data bag and the cookbook through the README's own commands (`knife environment from
file`, `knife data bag create` / `from file`, `berks install && berks upload`). An sshd on a
loopback port with a throwaway key makes this machine the node: `knife bootstrap ... -E staging
-r 'recipe[backup_agent]' --secret-file` installs the agent offline (the cookbook's wheel, its
dependencies from a mirror of the wheelhouse, as --json-attribute-file) with the bundle's
chef-client (knife's `chef_client_path`; nothing can be downloaded here). Then, as a user would:

- the node is registered with its environment and run list, the agent is installed and renders
  the staging schedules, and the node object on the server holds no secret value;
- a schedule edited in the environment JSON and re-uploaded reaches config.yaml at the next
  `knife ssh ... chef-client`, and the running daemon is reloaded (SIGHUP), not restarted;
- `knife ssh 'chef_environment:staging' 'backup-agent run etc'` backs up to a real S3 server
  (SeaweedFS on the data bag's endpoint), a job made to fail fails, and after the next converge
  `knife search node 'backup_agent_stale:true'` finds the node, whose
  `knife node show -a backup_agent.status` shows both jobs.

It converges this machine (/opt/backup-agent, /etc/backup-agent, /usr/local/bin) and, for the
time it runs, /etc/chef (bootstrap writes client.rb, client.pem and the secret there; what it
created is removed at the end). It runs only as root where CI=true or BACKUP_AGENT_E2E=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.machine import REPO, dependency_mirror, machine_lock, offline_install_attributes
from support.seaweedfs import SeaweedFS, free_port

FIXTURES = REPO / "tests" / "fixtures"
SECRET_FILE = FIXTURES / "encrypted_data_bag_secret"
NODE = "e2e-node"
ENVIRONMENT = "staging"
AGENT = Path("/usr/local/bin/backup-agent")
CONFIG = Path("/etc/backup-agent/config.yaml")
INSTALL_DIR = Path("/opt/backup-agent")
INSTALL_MARKER = INSTALL_DIR / ".chef-backup-agent-install"
ETC_CHEF = Path("/etc/chef")
SSHD_PRIVSEP_DIR = Path("/run/sshd")
FINISHED = re.compile(r"(?:Chef Infra Client finished|Infra Phase complete), (\d+)/(\d+) resources updated")
# The edit of step 4 of the README, and a job that fails whatever the bucket holds.
NEW_ETC_SCHEDULE = "every 12 hours"
BROKEN_JOB = {"type": "command", "command": ["false"], "schedule": "every 1 hours"}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_E2E") != "1",
        reason="bootstraps this machine as a Chef node (/etc/chef, /opt, /etc/backup-agent): set "
        "CI=true or BACKUP_AGENT_E2E=1 (make test-e2e) to run it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="knife bootstrap of this machine needs root"),
]


def plain_item() -> dict[str, Any]:
    """The TEST-ONLY plain source of the staging data bag item."""
    item: dict[str, Any] = json.loads((FIXTURES / "data_bags" / "backup_agent" / f"{ENVIRONMENT}.json").read_text())
    return item


def secret_values() -> list[str]:
    """Every value of the staging item that must never reach the Chef server in clear."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.append(value)

    walk({k: v for k, v in plain_item().items() if k not in ("id", "comment", "region")})
    return found


def staging_environment() -> dict[str, Any]:
    env: dict[str, Any] = json.loads((REPO / "environments" / f"{ENVIRONMENT}.json").read_text())
    return env


def tail(text: str, n: int = 6000) -> str:
    return text[-n:]


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def updated(self) -> tuple[int, int]:
        found = FINISHED.findall(self.output)
        assert found, f"no 'Chef Infra Client finished' line:\n{tail(self.output)}"
        done, total = found[-1]
        return int(done), int(total)


class Workstation:
    """knife and berks as a user runs them, against the chef-zero at `server_url`."""

    def __init__(self, workdir: Path, server_url: str, ssh_port: int, ssh_key: Path, chef_client: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir()
        self.ssh_port = ssh_port
        self.ssh_key = ssh_key
        self.chef_client = chef_client
        admin_key = workdir / "admin.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(admin_key), "2048"], check=True, capture_output=True)
        # chef-zero accepts any key; the node's chef-client and its cache live in workdir.
        node_cache = workdir / "node"
        client_d = workdir / "client.d"
        client_d.mkdir()
        (client_d / "e2e.rb").write_text(f"cache_path {json.dumps(str(node_cache))}\n")
        self.config = workdir / "knife.rb"
        settings = {
            "node_name": "e2e-admin",
            "client_key": str(admin_key),
            "chef_server_url": server_url,
            "chef_client_path": str(chef_client),
            "unix_bootstrap_file_cache_path": str(node_cache / "cache"),
            "unix_bootstrap_file_backup_path": str(node_cache / "backup"),
            "client_d_dir": str(client_d),
        }
        lines = [f"{key} {json.dumps(value)}" for key, value in settings.items()]
        lines.append(f"cookbook_path [{json.dumps(str(REPO / 'cookbooks'))}]")
        self.config.write_text("\n".join(lines) + "\n")
        # knife asks a licensing service before a bootstrap: a loopback port where nothing listens.
        self.license_server = f"http://127.0.0.1:{free_port()}/licensing"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_", "BERKSHELF_"))}
        env.update(
            CHEF_LICENSE="accept-no-persist",
            BUNDLE_GEMFILE=str(REPO / "Gemfile"),
            # ~/.chef and ~/.berkshelf of this run, not root's.
            HOME=str(self.home),
            BERKSHELF_PATH=str(self.home / ".berkshelf"),
            BERKSHELF_CHEF_CONFIG=str(self.config),
            CHEF_LICENSE_SERVER=self.license_server,
        )
        return env

    def run(self, tool: str, *args: str, timeout: float = 300) -> Run:
        cmd = ["bundle", "exec", tool, *args]
        if tool == "knife":
            cmd += ["-c", str(self.config)]
        started = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        output = proc.stdout + proc.stderr
        # Every command with its time and output, for whoever reads a failure.
        with (self.workdir / "commands.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n# exit {proc.returncode} in {time.monotonic() - started:.1f}s\n{output}\n")
        return Run(proc.returncode, output)

    def knife(self, *args: str, timeout: float = 300) -> str:
        result = self.run("knife", *args, timeout=timeout)
        assert result.returncode == 0, f"knife {' '.join(args)} failed:\n{tail(result.output)}"
        return result.output

    def knife_json(self, *args: str) -> Any:
        result = self.run("knife", *args, "-F", "json")
        assert result.returncode == 0, f"knife {' '.join(args)} failed:\n{tail(result.output)}"
        return json.loads(result.output)

    def ssh(self, query: str, command: str, timeout: float = 600) -> Run:
        """`knife ssh QUERY COMMAND` over the test's sshd (the node's address is e2e.ssh_host)."""
        return self.run(
            "knife", "ssh", query, command,
            "-x", "root", "-p", str(self.ssh_port), "-i", str(self.ssh_key), "--no-host-key-verify",
            "-a", "e2e.ssh_host",
            timeout=timeout,
        )

    def converge(self) -> Run:
        return self.ssh(f"name:{NODE}", str(self.chef_client))

    def search(self, query: str) -> list[str]:
        """Names of the nodes `knife search node QUERY` finds (knife exits 1 when none)."""
        result = self.run("knife", "search", "node", query, "-a", "name", "-F", "json")
        try:
            found = json.loads(result.output)
        except ValueError:
            pytest.fail(f"knife search node {query!r} failed:\n{tail(result.output)}")
        assert result.returncode == (0 if found["rows"] else 1), tail(result.output)
        return sorted(row["name"] for hit in found["rows"] for row in hit.values())


def start(cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs
        )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited early:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout}s:\n{log.read_text()[-3000:]}")


class MachineState:
    """What this test adds to /etc/chef and /run/sshd, so that exactly that is removed again."""

    def __init__(self) -> None:
        self.etc_chef_existed = ETC_CHEF.exists()
        self.etc_chef_before = set(ETC_CHEF.rglob("*")) if self.etc_chef_existed else set()
        self.privsep_existed = SSHD_PRIVSEP_DIR.exists()

    def restore(self) -> None:
        if not self.etc_chef_existed:
            shutil.rmtree(ETC_CHEF, ignore_errors=True)
        elif ETC_CHEF.exists():
            added = set(ETC_CHEF.rglob("*")) - self.etc_chef_before
            for path in sorted(added, key=lambda p: len(p.parts), reverse=True):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if not self.privsep_existed:
            shutil.rmtree(SSHD_PRIVSEP_DIR, ignore_errors=True)


@dataclass
class World:
    ws: Workstation
    workdir: Path
    state_dir: Path
    bootstrap: Run


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("knife-e2e")
    with machine_lock():
        machine = MachineState()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            yield from _world(workdir, procs)
        finally:
            for proc in reversed(procs):
                stop(proc)
            machine.restore()


def _world(workdir: Path, procs: list[subprocess.Popen[bytes]]) -> Iterator[World]:
    env = {**os.environ, "CHEF_LICENSE": "accept-no-persist", "BUNDLE_GEMFILE": str(REPO / "Gemfile")}

    # The Chef server.
    zero_port = free_port()
    zero_log = workdir / "chef-zero.log"
    zero = start(["bundle", "exec", "chef-zero", "--host", "127.0.0.1", "--port", str(zero_port)], zero_log, env=env)
    procs.append(zero)

    # The node: an sshd on loopback that only knows a throwaway key.
    ssh_port = free_port()
    ssh = workdir / "ssh"
    ssh.mkdir(mode=0o700)
    for name, kind in (("host_key", ["-t", "ecdsa"]), ("user_key", ["-t", "rsa", "-b", "2048", "-m", "PEM"])):
        # RSA/ECDSA: knife's net-ssh has no ed25519 without extra gems.
        subprocess.run(["ssh-keygen", "-q", *kind, "-N", "", "-f", str(ssh / name)], check=True)
    shutil.copy(ssh / "user_key.pub", ssh / "authorized_keys")
    sshd_config = ssh / "sshd_config"
    sshd_config.write_text(
        "\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {ssh_port}",
            f"HostKey {ssh / 'host_key'}",
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
            f"PidFile {ssh / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            # bash sources ~/.bashrc for commands run by sshd only at SHLVL 0: root's .bashrc on
            # these machines starts pyenv (seconds per command, and knife runs many).
            "SetEnv SHLVL=1",
            "",
        ])
    )
    SSHD_PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    sshd_log = workdir / "sshd.log"
    sshd = start(["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)], sshd_log)
    procs.append(sshd)

    # The node's chef-client is the bundle's (no omnibus package can be downloaded here).
    chef_client = workdir / "chef-client"
    chef_client.write_text(
        "#!/bin/sh\n"
        f"export CHEF_LICENSE=accept-no-persist BUNDLE_GEMFILE={REPO / 'Gemfile'} HOME={workdir / 'node-home'}\n"
        'exec bundle exec chef-client "$@"\n'
    )
    chef_client.chmod(0o755)
    (workdir / "node-home").mkdir()

    wait_for_port(zero_port, zero, zero_log)
    wait_for_port(ssh_port, sshd, sshd_log)
    ws = Workstation(workdir, f"http://127.0.0.1:{zero_port}", ssh_port, ssh / "user_key", chef_client)

    # README "Using it with Chef", steps 1 and 2.
    environments = sorted(str(p.relative_to(REPO)) for p in (REPO / "environments").glob("*.json"))
    ws.knife("environment", "from", "file", *environments)
    ws.knife("data", "bag", "create", "backup_agent")
    # The TEST-ONLY items (encrypted with the test secret), where a `knife upload` of the repository
    # does not find them.
    items = sorted(str(p.relative_to(REPO)) for p in (FIXTURES / "encrypted_data_bags" / "backup_agent").glob("*.json"))
    ws.knife("data", "bag", "from", "file", "backup_agent", *items)
    for args in (("install",), ("upload",)):
        result = ws.run("berks", *args)
        assert result.returncode == 0, f"berks {args[0]} failed:\n{tail(result.output)}"

    # A new node installs the agent: drop a venv an earlier run of this or the converge test left.
    if INSTALL_MARKER.exists():
        shutil.rmtree(INSTALL_DIR)
    state_dir = workdir / "state"
    attributes = workdir / "first-boot-attributes.json"
    attributes.write_text(
        json.dumps({
            "backup_agent": {
                # The agent comes with the cookbook; pip reaches only a mirror of its dependencies.
                "install": offline_install_attributes(dependency_mirror(workdir / "mirror")),
                # Its own state_dir: what earlier runs recorded in /var/lib/backup-agent stays out.
                "config": {"state_dir": str(state_dir)},
            },
            # Where knife ssh finds the node: the sshd above (the node's fqdn is not ours to choose).
            "e2e": {"ssh_host": "127.0.0.1"},
        })
    )
    # README step 3, plus how to reach this node and what replaces the omnibus download.
    bootstrap = ws.run(
        "knife", "bootstrap", "127.0.0.1",
        "-U", "root", "-p", str(ssh_port), "-i", str(ssh / "user_key"), "--ssh-verify-host-key", "never",
        "-N", NODE, "-E", ENVIRONMENT, "-r", "recipe[backup_agent]",
        "--secret-file", str(SECRET_FILE),
        "--json-attribute-file", str(attributes),
        "--bootstrap-install-command", "true",
        "-y",
        timeout=900,
    )
    assert bootstrap.returncode == 0, f"knife bootstrap failed:\n{tail(bootstrap.output, 10000)}"
    yield World(ws, workdir, state_dir, bootstrap)


def node_json(ws: Workstation) -> tuple[str, dict[str, Any]]:
    result = ws.run("knife", "node", "show", NODE, "-l", "-F", "json")
    assert result.returncode == 0, tail(result.output)
    return result.output, json.loads(result.output)


def test_bootstrap_registers_the_node_with_environment_and_run_list(world: World) -> None:
    _, node = node_json(world.ws)
    assert node["name"] == NODE
    assert node["chef_environment"] == ENVIRONMENT
    assert node["run_list"] == ["recipe[backup_agent]"]
    assert world.ws.search(f"chef_environment:{ENVIRONMENT} AND recipes:backup_agent") == [NODE]


def test_bootstrap_installs_and_configures_the_agent(world: World) -> None:
    # The venv was removed before the bootstrap: this converge installed it.
    assert INSTALL_MARKER.exists()
    assert AGENT.resolve() == INSTALL_DIR / "bin" / "backup-agent"

    config = yaml.safe_load(CONFIG.read_text())
    assert config["node"] == NODE
    assert config["environment"] == ENVIRONMENT
    for name, job in staging_environment()["default_attributes"]["backup_agent"]["jobs"].items():
        assert config["jobs"][name]["schedule"] == job["schedule"], name
        assert config["jobs"][name]["retention"] == job["retention"], name

    # README step 3: the agent answers on every node through knife ssh.
    status = world.ws.ssh(f"chef_environment:{ENVIRONMENT}", "backup-agent status")
    assert status.returncode == 0, tail(status.output)
    assert "etc" in status.output and "every 6 hours" in status.output


def test_node_object_on_the_server_holds_no_secret(world: World) -> None:
    text, node = node_json(world.ws)
    assert "find_links" in node["normal"]["backup_agent"]["install"]  # the saved node carries our attributes
    for value in secret_values():
        assert value not in text, f"a data bag value ({value[:4]}...) is in the node object on the server"
    for value in secret_values():
        assert value not in world.bootstrap.output, f"a data bag value ({value[:4]}...) is in the bootstrap output"


def agent_status() -> dict[str, Any]:
    """`backup-agent status --json` on the node (this machine)."""
    proc = subprocess.run([str(AGENT), "status", "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def wait_until_idle(timeout: float = 180) -> dict[str, Any]:
    """Until the daemon runs nothing and has nothing due: its own runs must not race ours."""
    deadline = time.monotonic() + timeout
    while True:
        doc = agent_status()
        soon = datetime.now(UTC) + timedelta(seconds=30)
        busy = [
            job["job"]
            for job in doc["jobs"]
            if job["running_since"] or (job["next_run"] and datetime.fromisoformat(job["next_run"]) < soon)
        ]
        if not busy:
            return doc
        if time.monotonic() > deadline:
            pytest.fail(f"the daemon is still busy with {busy} after {timeout}s: {doc}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def s3(world: World) -> Iterator[SeaweedFS]:
    """A real S3 server where the staging data bag item points (the converge test's endpoint)."""
    item = plain_item()
    port = int(item["endpoint_url"].rsplit(":", 1)[1])
    with SeaweedFS(port=port, access_key=item["access_key_id"], secret_key=item["secret_access_key"]) as server:
        server.client().create_bucket(Bucket=item["bucket"])
        yield server


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def daemon(world: World, s3: SeaweedFS) -> Iterator[Daemon]:
    """The agent's daemon, with the test as its supervisor (systemd is not PID 1 here).

    It runs the staging jobs on their schedules, the first runs at once; they are let finish.
    """
    log = world.workdir / "daemon.log"
    proc = start([str(AGENT), "daemon"], log, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
    try:
        lock = world.state_dir / "daemon.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() == str(proc.pid)):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the daemon did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        wait_until_idle()
        yield Daemon(proc, log)
    finally:
        stop(proc, timeout=30)


@dataclass
class Reconverged:
    run: Run
    config_before: dict[str, Any]


@pytest.fixture(scope="module")
def reconverged(world: World, daemon: Daemon) -> Reconverged:
    """README step 4: edit a schedule in the environment JSON, re-upload it, converge the node."""
    config_before = yaml.safe_load(CONFIG.read_text())
    env = staging_environment()
    jobs = env["default_attributes"]["backup_agent"]["jobs"]
    jobs["etc"]["schedule"] = NEW_ETC_SCHEDULE
    jobs["broken"] = BROKEN_JOB
    edited = world.workdir / "environments" / f"{ENVIRONMENT}.json"
    edited.parent.mkdir()
    edited.write_text(json.dumps(env, indent=2))
    world.ws.knife("environment", "from", "file", str(edited))

    run = world.ws.converge()
    assert run.returncode == 0, f"chef-client over knife ssh failed:\n{tail(run.output)}"
    return Reconverged(run, config_before)


def test_schedule_change_rewrites_config_and_reloads_the_daemon(reconverged: Reconverged, daemon: Daemon) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert reconverged.config_before["jobs"]["etc"]["schedule"] == "every 6 hours"
    assert config["jobs"]["etc"]["schedule"] == NEW_ETC_SCHEDULE
    assert config["jobs"]["broken"]["command"] == BROKEN_JOB["command"]
    assert config["jobs"]["app"] == reconverged.config_before["jobs"]["app"]

    output = reconverged.run.output
    assert "ruby_block[reload backup-agent] action run" in output
    assert "restart backup-agent" not in output
    # The same process re-read its config (SIGHUP) and scheduled the new job: no restart.
    assert daemon.proc.poll() is None, "the daemon exited"
    deadline = time.monotonic() + 30
    log = ""
    while "config reloaded" not in log and time.monotonic() < deadline:
        time.sleep(0.2)
        log = daemon.log.read_text()
    assert re.search(r"config reloaded: 3 job\(s\) scheduled", log), f"the daemon logged no reload:\n{log[-3000:]}"
    assert log.count("daemon started") == 1, log[-3000:]


@dataclass
class Stale:
    status: dict[str, Any]
    converge: Run


@pytest.fixture(scope="module")
def stale(world: World, reconverged: Reconverged) -> Stale:
    """README step 5, one job failing on purpose, then the next converge reports the node."""
    ws = world.ws
    # Not stale yet: the jobs that ran succeeded, and the new one has not failed yet.
    assert ws.search("backup_agent_stale:true") == []

    wait_until_idle()
    good = ws.ssh(f"chef_environment:{ENVIRONMENT}", "backup-agent run etc")
    assert good.returncode == 0, f"backup-agent run etc failed:\n{tail(good.output)}"
    # Fails whoever runs it: us (exit 1) or the daemon that started it first (we get 75, locked).
    bad = ws.ssh(f"chef_environment:{ENVIRONMENT}", "backup-agent run broken")
    assert bad.returncode != 0, f"the broken job succeeded:\n{tail(bad.output)}"
    wait_until_idle()

    converge = ws.converge()
    assert converge.returncode == 0, f"chef-client over knife ssh failed:\n{tail(converge.output)}"
    shown = ws.knife_json("node", "show", NODE, "-a", "backup_agent.status")
    return Stale(shown[NODE]["backup_agent.status"], converge)


def test_failed_job_makes_the_node_stale_in_search(world: World, stale: Stale) -> None:
    assert world.ws.search("backup_agent_stale:true") == [NODE]
    assert world.ws.search(f"backup_agent_stale:true AND chef_environment:{ENVIRONMENT}") == [NODE]

    status = stale.status
    assert status["stale"] is True
    assert "broken" in status["stale_jobs"]
    assert "etc" not in status["stale_jobs"]
    assert status["daemon_running"] is True
    etc = status["jobs"]["etc"]
    assert (etc["result"], etc["stale"], etc["schedule"]) == ("success", False, NEW_ETC_SCHEDULE)
    assert etc["snapshots"] >= 1
    assert etc["last_success"]
    broken = status["jobs"]["broken"]
    assert (broken["result"], broken["stale"], broken["last_success"]) == ("failed", True, None)
    assert broken["consecutive_failures"] >= 1

    # Reporting the state is no change: a converge with nothing new to do updates nothing.
    assert stale.converge.updated[0] == 0, tail(stale.converge.output)

    # `-a backup_agent` shows the state beside the settings.
    shown = world.ws.knife_json("node", "show", NODE, "-a", "backup_agent")
    assert "broken" in shown[NODE]["backup_agent"]["status"]["stale_jobs"]


def test_fleet_view_holds_no_secret(world: World, stale: Stale) -> None:
    text, node = node_json(world.ws)
    assert node["automatic"]["backup_agent_stale"] is True
    for value in secret_values():
        assert value not in text, f"a data bag value ({value[:4]}...) is in the node object on the server"
        assert value not in stale.converge.output, f"a data bag value ({value[:4]}...) is in chef-client output"
    assert "error" not in json.dumps(stale.status["jobs"])


def test_fleet_page_tabulates_the_node(world: World, stale: Stale) -> None:
    """The fleet page (knife/backup_agent_fleet.rb) over the same server: one row per job."""
    out = world.ws.knife("exec", str(REPO / "knife" / "backup_agent_fleet.rb"), "json", f"name:{NODE}")
    doc = json.loads(out[out.index("{"):])
    rows = {r["job"]: r for r in doc["rows"] if r["node"] == NODE}
    assert rows["etc"]["result"] == "success" and rows["etc"]["stale"] is False
    assert rows["broken"]["result"] == "failed" and rows["broken"]["stale"] is True
    assert doc["stale_nodes"] == [NODE]
    # no drill has failed on it: the plugin's flag is there, and false
    assert world.ws.search("backup_agent_drill_failed:false") == [NODE]
