"""The other secret stores of `secrets.source`, converged for real, with the data bag's guarantees.

- `chef_vault`: a Chef server (chef-zero on loopback) gets the environments, the cookbook and,
  through `knife vault create` (the chef-vault gem), the staging item's keys as a vault item
  shared with one node client and an admin; that node (its own client key, no data bag secret
  anywhere) converges with `chef-client -E staging`. A second node, not one of the vault's
  clients, is refused with a message that says how to share the vault.
- `secret`: the same keys as an AWS Secrets Manager secret in moto, served over HTTP; a node in
  local mode fetches it through Chef 18's `secret` helper (`secrets.secret_config` gives the
  region and moto's endpoint).

For each: the config holds the item's bucket, credentials and job secrets and is 0600 root; the
node object saved to the server (or the local node file), the chef-client output and every
process's command line during the run hold none of them; a second converge updates nothing.

It installs packages and writes /etc, /opt and /usr/local/bin: it runs only as root, where
CI=true or BACKUP_AGENT_CONVERGE=1 (`make test-converge`), holding the machine lock.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chef_client import (
    CONFIG,
    Converge,
    chef_client,
    clean_env,
    client_rb_lines,
    item_keys,
    secret_values,
)
from support.machine import REPO, dependency_mirror, machine_lock, offline_install_attributes
from support.seaweedfs import free_port

STATE_DIR = Path("/var/lib/backup-agent-secret-stores-test")
VAULT_NODE = "vault-node"
OTHER_NODE = "vault-outsider"
ADMIN = "vault-admin"
SECRET_NAME = "backup-agent/staging"

pytestmark = [
    pytest.mark.converge,
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_CONVERGE") != "1",
        reason="converges this machine (packages, /etc, /opt): set CI=true or "
        "BACKUP_AGENT_CONVERGE=1 (make test-converge) to run it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a real converge needs root"),
]


def node_attributes(mirror: Path | None, secrets: dict[str, Any], run_list: bool = True) -> dict[str, Any]:
    attrs: dict[str, Any] = {"backup_agent": {
        "install": offline_install_attributes(mirror),
        "config": {"state_dir": str(STATE_DIR)},
        "secrets": secrets,
        # A command job: the item's job_secrets.pg reaches the config too.
        "jobs": {"pg": {"type": "command", "preset": "postgresql", "database": "app", "schedule": "daily at 01:00"}},
    }}
    if run_list:
        attrs["run_list"] = ["recipe[backup_agent]"]
    return attrs


def assert_same_guarantees(first: Converge, again: Converge, saved_node: str) -> None:
    """What the data bag path guarantees, for another store."""
    assert first.returncode == 0, first.output[-6000:]
    config = yaml.safe_load(CONFIG.read_text())
    item = item_keys("staging")
    assert config["environment"] == "staging"
    for key in ("bucket", "region", "endpoint_url", "access_key_id", "secret_access_key"):
        assert config["storage"][key] == item[key], key
    assert config["jobs"]["pg"]["password"] == item["job_secrets"]["pg"]["password"]
    assert config["jobs"]["pg"]["secret_env"] == item["job_secrets"]["pg"]["env"]
    mode = CONFIG.stat()
    assert (stat.S_IMODE(mode.st_mode), mode.st_uid) == (0o600, 0)
    assert '"backup_agent"' in saved_node  # the saved node carries our attributes
    for value in secret_values("staging"):
        assert value not in saved_node, f"a secret ({value[:4]}...) is in the node object"
        assert value not in first.output, f"a secret ({value[:4]}...) is in the chef-client output"
        assert value not in again.output, f"a secret ({value[:4]}...) is in the second run's output"
    assert first.leaked_args == [] and again.leaked_args == [], first.leaked_args + again.leaked_args
    # No copy of the config anywhere else under /etc/backup-agent (a backup, a failed validation).
    assert sorted(p.name for p in CONFIG.parent.iterdir()) == ["config.yaml", "fleet_view.json"]
    assert again.returncode == 0, again.output[-6000:]
    assert again.updated == 0, "updated on the second converge:\n" + "\n".join(again.updated_resources())


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """The machine lock, and the dependency mirror both stores' nodes install from."""
    with machine_lock():
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        yield dependency_mirror(tmp_path_factory.mktemp("dependency-mirror"))


# --- chef-vault against a Chef server -----------------------------------------------------------


class Server:
    """chef-zero on loopback, knife as the admin, and the node clients' keys."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "chef-zero.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["bundle", "exec", "chef-zero", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.commands = workdir / "commands.log"
        try:
            self._set_up_clients()
        except BaseException:
            self.stop()  # no chef-zero left behind by a setup that failed
            raise

    def _set_up_clients(self) -> None:
        workdir = self.workdir
        # chef-zero takes any key from a requester it does not know: create the real clients
        # (keys chef-zero generates) with a throwaway identity, then act as the admin client.
        bootstrap = self.knife_rb("bootstrap", self.throwaway_key())
        deadline = time.monotonic() + 60
        while self.run(bootstrap, "client", "list").returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.5)
        self.keys: dict[str, Path] = {}
        # The admin is a client too: chef-vault's client mode (-M client) encrypts for clients' keys.
        for name in (ADMIN, VAULT_NODE, OTHER_NODE):
            key = workdir / f"{name}.pem"
            self.check(bootstrap, "client", "create", name, "-f", str(key), "--disable-editing")
            self.keys[name] = key
        self.knife_config = self.knife_rb(ADMIN, self.keys[ADMIN])

    def throwaway_key(self) -> Path:
        key = self.workdir / "throwaway.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        return key

    def knife_rb(self, name: str, key: Path) -> Path:
        path = self.workdir / f"knife-{name}.rb"
        path.write_text("\n".join([
            f"node_name {json.dumps(name)}", f"client_key {json.dumps(str(key))}",
            f"chef_server_url {json.dumps(self.url)}",
            f"cookbook_path [{json.dumps(str(REPO / 'cookbooks'))}]", "",
        ]))
        return path

    def run(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["bundle", "exec", "knife", *args, "-c", str(config)]
        proc = subprocess.run(cmd, cwd=REPO, env=clean_env(HOME=str(self.workdir)), capture_output=True, text=True,
                              timeout=300, check=False)
        with self.commands.open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n# exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n")
        return proc

    def check(self, config: Path, *args: str) -> str:
        proc = self.run(config, *args)
        assert proc.returncode == 0, f"knife {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def knife(self, *args: str) -> str:
        return self.check(self.knife_config, *args)

    def converge(self, node: str, attributes: dict[str, Any], label: str) -> Converge:
        client_rb = self.workdir / f"client-{node}.rb"
        client_rb.write_text("\n".join(client_rb_lines({
            "chef_server_url": self.url,
            "node_name": node,
            "client_key": self.keys[node],
            "file_cache_path": self.workdir / f"cache-{node}",
            "file_backup_path": self.workdir / f"backup-{node}",
        })) + "\n")
        attrs = self.workdir / f"attrs-{node}.json"
        attrs.write_text(json.dumps(attributes))
        return chef_client(["-c", str(client_rb), "-E", "staging", "-j", str(attrs)], self.workdir / f"{label}.log",
                           secret_values("staging"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class VaultRuns:
    server: Server
    first: Converge
    again: Converge
    outsider: Converge
    vault_item: str


@pytest.fixture(scope="module")
def vault(machine: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultRuns]:
    workdir = tmp_path_factory.mktemp("chef-vault")
    server = Server(workdir)
    try:
        environments = sorted(str(p) for p in (REPO / "environments").glob("*.json"))
        server.knife("environment", "from", "file", *environments)
        server.knife("cookbook", "upload", "backup_agent")
        # README, "Other secret stores": the item's keys into a vault only this node (and the
        # admin) can decrypt; the plain JSON exists only for the length of the command.
        plain = workdir / "staging.json"
        plain.write_text(json.dumps(item_keys("staging")))
        server.knife("vault", "create", "backup_agent", "staging", "-J", str(plain),
                     "-C", VAULT_NODE, "-A", ADMIN, "-M", "client")
        plain.unlink()
        stored = server.knife("data", "bag", "show", "backup_agent", "staging", "-F", "json")

        attributes = node_attributes(machine, {"source": "chef_vault"})
        first = server.converge(VAULT_NODE, attributes, "vault-first")
        assert first.returncode == 0, f"the vault node's converge failed:\n{first.output[-6000:]}"
        again = server.converge(VAULT_NODE, attributes, "vault-again")
        outsider = server.converge(OTHER_NODE, attributes, "vault-outsider")
        yield VaultRuns(server, first, again, outsider, stored)
    finally:
        server.stop()


def test_chef_vault_item_gives_the_config_its_secrets_and_nothing_else(vault: VaultRuns) -> None:
    node = vault.server.knife("node", "show", VAULT_NODE, "-l", "-F", "json")
    assert json.loads(node)["normal"]["backup_agent"]["secrets"]["source"] == "chef_vault"
    assert_same_guarantees(vault.first, vault.again, node)
    # On the server the item is ciphertext: no value of it in clear.
    for value in secret_values("staging"):
        assert value not in vault.vault_item


def test_a_node_the_vault_was_not_shared_with_is_refused_before_anything_changes(vault: VaultRuns) -> None:
    result = vault.outsider
    assert result.returncode != 0, "a node that is not one of the vault's clients converged"
    assert ("backup_agent: cannot load chef-vault item 'backup_agent/staging' (is this node one of the vault's "
            "clients? `knife vault update backup_agent staging -S 'name:NODE'`)") in result.output
    assert "Infra Phase failed. 0 resources updated" in result.output
    for value in secret_values("staging"):
        assert value not in result.output


# --- Chef 18's `secret` helper: AWS Secrets Manager (moto over HTTP) ----------------------------


@dataclass
class SecretRuns:
    first: Converge
    again: Converge
    saved_node: str


@pytest.fixture(scope="module")
def secret_service(machine: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretRuns]:
    import boto3
    from moto.server import ThreadedMotoServer

    workdir = tmp_path_factory.mktemp("secret-helper")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="eu-west-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_secret(Name=SECRET_NAME, SecretString=json.dumps(item_keys("staging")))

        client_rb = workdir / "client.rb"
        client_rb.write_text("\n".join(client_rb_lines({
            "local_mode": True,
            "node_name": "secret-helper-test",
            "cookbook_path": [str(REPO / "cookbooks")],
            "environment_path": REPO / "environments",
            # No data bags and no data bag secret: the secret service is the only source.
            "data_bag_path": workdir / "no-data-bags",
            "node_path": workdir / "nodes",
            "client_path": workdir / "clients",
            "client_key": workdir / "client.pem",
            "file_cache_path": workdir / "cache",
            "file_backup_path": workdir / "backup",
        })) + "\n")
        attrs = workdir / "attrs.json"
        attrs.write_text(json.dumps(node_attributes(machine, {
            "source": "secret", "secret_name": SECRET_NAME,
            # What the SDK's client takes: moto's endpoint instead of AWS's.
            "secret_config": {"region": "eu-west-1", "endpoint": endpoint},
        })))
        # The node's own AWS credentials (an instance profile on EC2): moto takes any.
        env = clean_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        args = ["-z", "-c", str(client_rb), "-E", "staging", "-j", str(attrs)]
        first = chef_client(args, workdir / "secret-first.log", secret_values("staging"), env=env)
        assert first.returncode == 0, f"the converge with the secret helper failed:\n{first.output[-6000:]}"
        again = chef_client(args, workdir / "secret-again.log", secret_values("staging"), env=env)
        saved = (workdir / "nodes" / "secret-helper-test.json").read_text()
        yield SecretRuns(first, again, saved)
    finally:
        server.stop()


def test_secret_helper_gives_the_config_its_secrets_and_nothing_else(secret_service: SecretRuns) -> None:
    assert json.loads(secret_service.saved_node)["normal"]["backup_agent"]["secrets"]["source"] == "secret"
    assert_same_guarantees(secret_service.first, secret_service.again, secret_service.saved_node)
