"""A backup storage cluster on three storage-node containers, and an agent that uses it.

Four Debian 12 containers with systemd as PID 1, bootstrapped with `knife bootstrap` from a
chef-zero on loopback (the workstation of test_knife_bootstrap): three get
recipe[backup_agent::storage_node] and find each other through Chef search, the fourth gets
recipe[backup_agent] and finds their S3 gateways the same way (storage.endpoints). Then, as an
operator would see it: a backup lands in the cluster; one storage node (the client's first
gateway) is powered off and a restore is still exact and new backups still work; the node boots
again and the masters' own maintenance brings every volume back to exactly two copies on two
nodes. The containers share the host's network, so every node has ports of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.containers import Container, remove_cgroups
from support.machine import REPO
from support.seaweedfs import _bindable, free_port, weed_binary

from containers.conftest import FIXTURES, booting, build_agent_wheel, dependency_mirror
from containers.test_knife_bootstrap import Workstation

SUITE = "bookworm"
ENVIRONMENT = "cluster"
STORES = ("store-1", "store-2", "store-3")
CLIENT = "app-1"
ROLES = ("master", "volume", "filer", "s3")
# Test-only keys of the environment's data bag item (encrypted by knife on upload).
ITEM = {
    "id": ENVIRONMENT,
    "comment": "TEST-ONLY fake credentials of the storage cluster test; never use outside tests",
    "bucket": "backup-agent-cluster",
    "region": "us-east-1",
    "access_key_id": "TESTONLYCLUSTERKEY00",
    "secret_access_key": "test-only-cluster-secret-do-not-use-00000",
}
pytestmark = pytest.mark.timeout(2400)
TIMINGS: list[tuple[str, float]] = []


def ports_for_node() -> dict[str, int]:
    """Four free loopback ports whose gRPC twins (+10000) are free too."""
    for _ in range(200):
        base = free_port()
        if base > 55000:
            continue
        ports = dict(zip(ROLES, range(base, base + 4), strict=True))
        if all(_bindable(p) and _bindable(p + 10000) for p in ports.values()):
            return ports
    raise RuntimeError("no four free ports with free +10000 twins")


@dataclass
class Member:
    name: str
    container: Container
    ports: dict[str, int]

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.ports['master']}"


class Fleet:
    def __init__(self, ws: Workstation, cookbooks: Path) -> None:
        self.ws = ws
        self.cookbooks = cookbooks
        self.key = ws.workdir / "node_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(self.key)],
                       check=True)
        self.members: dict[str, Member] = {}
        self.client: Container | None = None

    def prepare(self, container: Container) -> int:
        ssh_port = free_port()
        container.write("/etc/ssh/sshd_config.d/test.conf",
                        f"Port {ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
                        "PasswordAuthentication no\n")
        container.write("/root/.ssh/authorized_keys", self.key.with_suffix(".pub").read_text(), mode=0o600)
        container.path("/root/.ssh").chmod(0o700)
        container.boot()
        started = container.run("systemctl", "start", "ssh")
        assert started.returncode == 0, started.stderr
        return ssh_port

    def bootstrap(self, container: Container, name: str, run_list: str, attributes: dict[str, Any]) -> str:
        ssh_port = self.prepare(container)
        path = self.ws.workdir / f"{name}.json"
        path.write_text(json.dumps({"backup_agent": {"install": dependency_mirror(SUITE), **attributes}}))
        started = time.monotonic()
        proc = self.ws.run(
            "bootstrap", "127.0.0.1", "-U", "root", "-p", str(ssh_port), "-i", str(self.key),
            "--ssh-verify-host-key", "never", "-N", name, "-E", ENVIRONMENT, "-r", run_list,
            "--secret-file", str(FIXTURES / "encrypted_data_bag_secret"), "--json-attribute-file", str(path), "-y",
            timeout=900,
        )
        TIMINGS.append((f"bootstrap {name}", time.monotonic() - started))
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"knife bootstrap {name} failed:\n{output[-8000:]}"
        return output

    def converge(self, container: Container, label: str) -> str:
        started = time.monotonic()
        proc = container.run("chef-client", "--no-color", env={"CHEF_LICENSE": "accept-no-persist"}, timeout=900)
        TIMINGS.append((f"converge {label}", time.monotonic() - started))
        output = proc.stdout + proc.stderr
        (self.ws.workdir / f"converge-{label}.log").write_text(output)
        assert proc.returncode == 0, f"chef-client on {label} failed:\n{output[-6000:]}"
        return output

    def shell(self, *commands: str, timeout: float = 300) -> str:
        """`weed shell` against the cluster's masters, as an operator on a storage node runs it."""
        masters = ",".join(m.master for m in self.members.values())
        proc = subprocess.run([weed_binary(), "shell", f"-master={masters}"], input="\n".join(commands) + "\n",
                              capture_output=True, text=True, timeout=timeout, check=False)
        return proc.stdout + proc.stderr

    def replicas(self) -> dict[int, list[str]]:
        """Volume id -> the racks (node names) holding a copy, for the bucket's collection."""
        out = self.shell("volume.list")
        found: dict[int, list[str]] = {}
        rack = ""
        for line in out.splitlines():
            if match := re.match(r"\s*Rack (\S+) hdd", line):
                rack = match.group(1)
            elif (match := re.search(r"volume Id:(\d+), .*Collection:(\S+?),", line)) \
                    and match.group(2) == ITEM["bucket"]:
                found.setdefault(int(match.group(1)), []).append(rack)
        return found


def agent(client: Container, *args: str) -> subprocess.CompletedProcess[str]:
    return client.run("/usr/local/bin/backup-agent", *args, timeout=600)


def power_off(container: Container) -> None:
    """A clean power-off that keeps the node's disk (its overlay) for the next boot."""
    container.request_stop()
    assert container.proc is not None
    container.proc.wait(timeout=120)
    container.pid = 0
    remove_cgroups(container.name)  # launch() makes them again


def wait_for(what: str, check: Any, timeout: float, diagnose: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s\n{diagnose() if diagnose else ''}"[-6000:])
        time.sleep(2)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, cookbooks: Path, machine: None) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("storage-cluster")
    # The agent the cookbook carries must be this checkout's (storage.endpoints is new).
    wheels = workdir / "wheels"
    built = build_agent_wheel("0.1.0", wheels)
    shutil.copy(built, cookbooks / "backup_agent" / "files" / "agent" / built.name)
    ws = Workstation(workdir)
    ws.config.write_text(ws.config.read_text().replace(json.dumps(str(REPO / "cookbooks")), json.dumps(str(cookbooks))))
    started = time.monotonic()
    try:
        ws.wait_ready()
        env = workdir / f"{ENVIRONMENT}.json"
        env.write_text(json.dumps({
            "name": ENVIRONMENT, "json_class": "Chef::Environment", "chef_type": "environment",
            "default_attributes": {"backup_agent": {
                "storage_nodes": {"search": "recipes:backup_agent\\:\\:storage_node"},
                # The masters' repair runs every minute here (17 by default).
                "storage_node": {"maintenance_minutes": 1, "volume_size_limit_mb": 64},
                "jobs": {"data": {"type": "files", "paths": ["/srv/data"]}},
            }},
        }))
        ws.knife("environment", "from", "file", str(env))
        item = workdir / "item.json"
        item.write_text(json.dumps(ITEM))
        ws.knife("data", "bag", "create", "backup_agent")
        ws.knife("data", "bag", "from", "file", "backup_agent", str(item),
                 "--secret-file", str(FIXTURES / "encrypted_data_bag_secret"))
        ws.knife("cookbook", "upload", "backup_agent")
        fleet = Fleet(ws, cookbooks)
        with booting(SUITE, STORES[0], cookbooks) as c1, booting(SUITE, STORES[1], cookbooks) as c2, \
                booting(SUITE, STORES[2], cookbooks) as c3, booting(SUITE, "app", cookbooks) as client:
            # One after the other, as nodes join: each finds those converged before it.
            for name, container in zip(STORES, (c1, c2, c3), strict=True):
                ports = ports_for_node()
                fleet.members[name] = Member(name, container, ports)
                fleet.bootstrap(container, name, "recipe[backup_agent::storage_node]",
                                {"storage_node": {"ip": "127.0.0.1", "bind": "127.0.0.1", "ports": ports}})
            # The first two join the raft of three on their next run (what chef-client's interval
            # does), both at once as timers on a fleet may: 30 s less of a suite CI waits for.
            with ThreadPoolExecutor(2) as pool:
                runs = [pool.submit(fleet.converge, m.container, f"{m.name} second")
                        for m in list(fleet.members.values())[:2]]
                for run in runs:
                    run.result()
            fleet.client = client
            try:
                yield fleet
            finally:
                # All four shut down at once; one after the other (each stop waits for its
                # systemd to finish) took 50 s.
                for container in (client, c3, c2, c1):
                    container.request_stop()
    finally:
        ws.stop()
        TIMINGS.append(("whole suite", time.monotonic() - started))
        (workdir.parent / "storage-cluster-timings.txt").write_text(
            "".join(f"{label}: {seconds:.1f} s\n" for label, seconds in TIMINGS))
        shutil.copy(ws.log, workdir.parent / "storage-cluster-commands.log")


@pytest.fixture(scope="module")
def cluster(fleet: Fleet) -> Fleet:
    """Every role running on every member, one raft of three masters, three volume servers."""
    for member in fleet.members.values():
        for role in ROLES:
            state = member.container.run("systemctl", "is-active", f"seaweedfs-{role}").stdout.strip()
            journal = member.container.run("journalctl", "-u", f"seaweedfs-{role}", "--no-pager").stdout
            assert state == "active", f"{member.name} seaweedfs-{role} is {state}:\n{journal[-3000:]}"
    def registered() -> bool:
        return len(re.findall(r"rack: store-\d", fleet.shell("cluster.ps"))) == 3

    wait_for("three volume servers registered", registered, 120, lambda: fleet.shell("cluster.ps"))
    return fleet


@pytest.fixture(scope="module")
def client(cluster: Fleet) -> Container:
    import boto3
    from botocore.config import Config

    first = next(iter(cluster.members.values()))
    s3 = boto3.client("s3", endpoint_url=first.s3_url, aws_access_key_id=ITEM["access_key_id"],
                      aws_secret_access_key=ITEM["secret_access_key"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    # The operator makes the bucket once (the agents' key pair may, on its own bucket only).
    wait_for("the bucket made through a gateway", lambda: _try(lambda: s3.create_bucket(Bucket=ITEM["bucket"])), 120)
    assert cluster.client is not None
    container = cluster.client
    container.path("/srv/data/sub").mkdir(parents=True)
    container.path("/srv/data/hello.txt").write_text("hello from the client\n")
    container.path("/srv/data/sub/random.bin").write_bytes(bytes(range(256)) * 4096)
    cluster.bootstrap(container, CLIENT, "recipe[backup_agent]", {})
    return container


def _try(call: Any) -> bool:
    try:
        call()
        return True
    except Exception as exc:  # not up yet, or already there
        return "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc)


def test_storage_nodes_converge_to_one_cluster_and_a_converge_changes_nothing(cluster: Fleet) -> None:
    raft = cluster.shell("cluster.raft.ps")
    for member in cluster.members.values():
        assert member.master in raft, raft
    config = cluster.members["store-3"].container.path("/etc/seaweedfs/s3.json")
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    again = cluster.converge(cluster.members["store-3"].container, "store-3 again")
    assert re.search(r"Infra Phase complete, 0/\d+ resources updated", again), again[-3000:]


def test_the_agent_gets_every_gateway_and_its_backup_lands_in_the_cluster(client: Container, cluster: Fleet) -> None:
    config = yaml.safe_load(client.path("/etc/backup-agent/config.yaml").read_text())
    endpoints = config["storage"]["endpoints"]
    assert sorted(endpoints) == sorted(m.s3_url for m in cluster.members.values())
    proc = agent(client, "run", "data", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["status"] == "success"
    wait_for("the bucket's volumes with two copies", lambda: cluster.replicas(), 60)
    for vid, racks in cluster.replicas().items():
        assert len(set(racks)) == 2, f"volume {vid} on {racks}"


def test_one_node_off_restore_exact_and_new_backups_work_then_it_repairs(client: Container, cluster: Fleet) -> None:
    config = yaml.safe_load(client.path("/etc/backup-agent/config.yaml").read_text())
    first = config["storage"]["endpoints"][0]
    down = next(m for m in cluster.members.values() if m.s3_url == first)
    started = time.monotonic()
    power_off(down.container)

    restored = agent(client, "restore", "data", "--target", "/srv/restored")  # /tmp is a tmpfs the host does not see
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert f"skipped: {first}" in restored.stderr
    assert client.path("/srv/restored/srv/data/hello.txt").read_text() == "hello from the client\n"
    assert client.path("/srv/restored/srv/data/sub/random.bin").read_bytes() == bytes(range(256)) * 4096

    client.path("/srv/data/while-down.txt").write_text("written while a storage node was off\n")
    ran = agent(client, "run", "data", "--json")
    assert ran.returncode == 0, ran.stderr[-3000:]
    TIMINGS.append(("restore + backup with a node off", time.monotonic() - started))

    # It comes back: its units start with the boot, and the masters' maintenance (every minute
    # here) leaves every volume of the bucket with exactly two copies on two nodes.
    down.container.launch()
    down.container.wait_booted()
    back = time.monotonic()

    def repaired() -> bool:
        replicas = cluster.replicas()
        racks = {r for copies in replicas.values() for r in copies}
        exact = all(len(set(copies)) == 2 and len(copies) == 2 for copies in replicas.values())
        return bool(replicas) and down.name in racks and exact

    wait_for("every volume back to two copies on two nodes", repaired, 300, lambda: cluster.shell("volume.list"))
    TIMINGS.append(("repair after the node came back", time.monotonic() - back))
    # What an operator checks: the copies agree, and nothing is left under-replicated.
    checked = cluster.shell("lock", "volume.check.disk -slow", "volume.fix.replication -verbose", "unlock", timeout=300)
    (cluster.ws.workdir / "after-repair.txt").write_text(checked)
    assert "under replicated" not in checked, checked[-3000:]

    restored = agent(client, "restore", "data", "--target", "/srv/restored-after")
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert client.path("/srv/restored-after/srv/data/while-down.txt").read_text().startswith("written while")
    assert client.path("/srv/restored-after/srv/data/sub/random.bin").read_bytes() == bytes(range(256)) * 4096
