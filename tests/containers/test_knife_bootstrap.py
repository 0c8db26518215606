"""`knife bootstrap` over SSH into a fresh Debian 12 container with systemd as PID 1.

The workstation is this machine: chef-zero on loopback gets the environments, the encrypted data
bag and the cookbook through knife, as README.md "Using it with Chef" says. The node is a booted
container whose sshd listens on a loopback port (host networking). Its Chef is the image's
/usr/bin/chef-client, which the bootstrap script finds instead of downloading one. The bootstrap
ends with the service running under systemd and, without anyone running a backup by hand, the
staging job `etc` has its first snapshot in the bucket (SeaweedFS on the data bag's endpoint).
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
from support.seaweedfs import SeaweedFS, free_port

from containers.conftest import FIXTURES, booting, dependency_mirror, plain_item

SUITE = "bookworm"
NODE = "ct-knife"
ENVIRONMENT = "staging"
# Building the images (first run on a machine) happens in the first test's setup.
pytestmark = pytest.mark.timeout(1800)


class Workstation:
    """knife as a user runs it, against a chef-zero on loopback; every command is logged."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir()
        self.port = free_port()
        admin_key = workdir / "admin.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(admin_key), "2048"], check=True, capture_output=True)
        self.config = workdir / "knife.rb"
        self.config.write_text("\n".join([
            'node_name "ct-admin"',
            f"client_key {json.dumps(str(admin_key))}",
            f'chef_server_url "http://127.0.0.1:{self.port}"',
            f"cookbook_path [{json.dumps(str(REPO / 'cookbooks'))}]",
            "",
        ]))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_"))}
        # knife asks a licensing service before a bootstrap: a loopback port where nothing listens.
        self.env.update(CHEF_LICENSE="accept-no-persist", BUNDLE_GEMFILE=str(REPO / "Gemfile"), HOME=str(self.home),
                        CHEF_LICENSE_SERVER=f"http://127.0.0.1:{free_port()}/licensing")
        self.log = workdir / "commands.log"
        self.server = subprocess.Popen(
            ["bundle", "exec", "chef-zero", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=(workdir / "chef-zero.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.run("node", "list").returncode != 0:
            if self.server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chef-zero did not start:\n{(self.workdir / 'chef-zero.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = ["bundle", "exec", "knife", *args, "-c", str(self.config)]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n# exit {proc.returncode} in {time.monotonic() - started:.1f}s\n"
                      f"{proc.stdout}{proc.stderr}\n")
        return proc

    def knife(self, *args: str) -> None:
        proc = self.run(*args)
        assert proc.returncode == 0, f"knife {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"

    def stop(self) -> None:
        if self.server.poll() is None:
            os.killpg(self.server.pid, 15)
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, 9)
                self.server.wait()


@pytest.fixture(scope="module")
def workstation(tmp_path_factory: pytest.TempPathFactory, machine: None) -> Iterator[Workstation]:
    ws = Workstation(tmp_path_factory.mktemp("knife-workstation"))
    try:
        ws.wait_ready()
        # README "Using it with Chef", steps 1 and 2.
        ws.knife("environment", "from", "file", *sorted(str(p) for p in (REPO / "environments").glob("*.json")))
        ws.knife("data", "bag", "create", "backup_agent")
        items = REPO / "tests" / "fixtures" / "encrypted_data_bags" / "backup_agent"
        ws.knife("data", "bag", "from", "file", "backup_agent", *sorted(str(p) for p in items.glob("*.json")))
        ws.knife("cookbook", "upload", "backup_agent")
        yield ws
    finally:
        ws.stop()


@pytest.fixture(scope="module")
def bootstrapped(workstation: Workstation, cookbooks: Path, s3: SeaweedFS) -> Iterator[tuple[Any, str]]:
    workdir = workstation.workdir
    key = workdir / "node_key"
    # RSA in PEM: knife's net-ssh has no ed25519 without extra gems.
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(key)], check=True)
    ssh_port = free_port()
    with booting(SUITE, "knife", cookbooks) as node:
        # Host networking: the node's sshd must take a free loopback port, not the host's 22.
        node.write("/etc/ssh/sshd_config.d/test.conf",
                   f"Port {ssh_port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
                   "PasswordAuthentication no\n")
        node.write("/root/.ssh/authorized_keys", (workdir / "node_key.pub").read_text(), mode=0o600)
        node.path("/root/.ssh").chmod(0o700)
        node.boot()
        started = node.run("systemctl", "start", "ssh")
        assert started.returncode == 0, started.stderr + node.run("journalctl", "-u", "ssh", "--no-pager").stdout
        attributes = workdir / "first-boot.json"
        attributes.write_text(json.dumps({"backup_agent": {"install": dependency_mirror(SUITE)}}))
        proc = workstation.run(
            "bootstrap", "127.0.0.1", "-U", "root", "-p", str(ssh_port), "-i", str(key),
            "--ssh-verify-host-key", "never", "-N", NODE, "-E", ENVIRONMENT, "-r", "recipe[backup_agent]",
            "--secret-file", str(FIXTURES / "encrypted_data_bag_secret"),
            "--json-attribute-file", str(attributes), "-y",
            timeout=900,
        )
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"knife bootstrap failed:\n{output[-8000:]}"
        yield node, output
        shutil.copy(workstation.log, workdir.parent / "knife-commands.log")


def test_bootstrap_ends_with_the_service_running(bootstrapped: tuple[Any, str]) -> None:
    node, output = bootstrapped
    # Chef came from the image: nothing was downloaded.
    assert "Existing Chef Infra Client installation detected" in output
    assert "service[backup-agent] action start" in output
    assert node.run("systemctl", "is-enabled", "backup-agent").stdout.strip() == "enabled"
    assert node.run("systemctl", "is-active", "backup-agent").stdout.strip() == "active"


def test_first_scheduled_backup_reaches_the_bucket(bootstrapped: tuple[Any, str], s3: SeaweedFS) -> None:
    """Nobody runs a backup: the daemon systemd started runs the staging job on its schedule."""
    node, _ = bootstrapped
    client = s3.client()
    bucket = plain_item()["bucket"]
    deadline = time.monotonic() + 120
    snapshots: list[str] = []
    while not snapshots:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{NODE}/etc/snapshots/")
        snapshots = [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".json.gz")]
        if not snapshots and time.monotonic() > deadline:
            journal = node.run("journalctl", "-u", "backup-agent", "--no-pager", "-o", "cat").stdout
            pytest.fail(f"no snapshot of job etc in s3://{bucket}/{NODE}/etc/ after 120s:\n{journal[-4000:]}")
        time.sleep(1)
    journal = node.run("journalctl", "-u", "backup-agent", "--no-pager", "-o", "cat").stdout
    assert "job etc: run finished" in journal and "(success)" in journal, journal[-3000:]
