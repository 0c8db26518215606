"""The Policyfile workflow of README.md, converged for real: `chef-cli install`, then
`chef-client -z` with the policy lock.

The repository's Policyfile.rb is installed (`chef-cli install` writes Policyfile.lock.json;
nothing is fetched, the cookbook is a path source) and exported to a chef repo (`chef-cli
export`: the lock, the cookbook as a cookbook artifact, a policy group). That repo gets one policy
group per environments/*.json, all pointing at the lock's revision, as `chef push GROUP` makes
them on a Chef server. A node in group staging, then in group production, converges in local
mode with `use_policyfile`, `policy_name` and `policy_group` in client.rb and no environment
(Chef Infra Client 18 sets chef_environment to the policy group):

- it gets exactly the jobs of the environment of the same name (the group's attributes in the
  lock, hoisted by chef-client) and the data bag item named after the group, never `default`;
- the config says `environment: <group>`, is 0600 and holds the item's credentials; the node
  saved by the run and the output hold none of them, nor does any process's command line;
- the systemd unit is written (systemd_unit) though systemd is not PID 1 here;
- a second converge in the same group updates nothing.

It installs packages and writes /etc, /opt and /usr/local/bin: it runs only as root, where
CI=true or BACKUP_AGENT_CONVERGE=1 (`make test-converge`), holding the machine lock.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.chef_client import (
    CONFIG,
    FIXTURES,
    UNIT,
    Converge,
    chef_client,
    clean_env,
    client_rb_lines,
    plain_item,
    secret_values,
)
from support.machine import REPO, dependency_mirror, machine_lock, offline_install_attributes

NODE_NAME = "policyfile-test"
STATE_DIR = Path("/var/lib/backup-agent-policyfile-test")
GROUPS = sorted(p.stem for p in (REPO / "environments").glob("*.json"))

pytestmark = [
    pytest.mark.converge,
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_CONVERGE") != "1",
        reason="converges this machine (packages, /etc, /opt): set CI=true or "
        "BACKUP_AGENT_CONVERGE=1 (make test-converge) to run it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a real converge needs root"),
]


def environment_jobs(name: str) -> dict[str, Any]:
    env = json.loads((REPO / "environments" / f"{name}.json").read_text())
    jobs: dict[str, Any] = env["default_attributes"]["backup_agent"]["jobs"]
    return jobs


def chef_cli(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["bundle", "exec", "chef-cli", *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"chef-cli {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


class PolicyRepo:
    """The exported policy, a policy group per environment, and a client.rb per group."""

    def __init__(self, workdir: Path, mirror: Path | None) -> None:
        self.workdir = workdir
        self.mirror = mirror
        # The Policyfile as a user has it (cookbooks/ and environments/ beside it), in a copy so
        # the lock chef-cli writes does not land in the checkout.
        source = workdir / "source"
        source.mkdir()
        shutil.copy(REPO / "Policyfile.rb", source)
        for name in ("cookbooks", "environments"):
            (source / name).symlink_to(REPO / name)
        self.install_output = chef_cli("install", cwd=source)
        self.lock = json.loads((source / "Policyfile.lock.json").read_text())
        self.export = workdir / "export"
        chef_cli("export", "Policyfile.lock.json", str(self.export), cwd=source)
        # `chef push GROUP` on a server; in an exported repo a group is a file naming the revision.
        local = (self.export / "policy_groups" / "local.json").read_text()
        for group in GROUPS:
            (self.export / "policy_groups" / f"{group}.json").write_text(local)
        self.nodes = workdir / "nodes"
        self.nodes.mkdir()

    def converge(self, group: str, label: str) -> Converge:
        settings = {
            "local_mode": True,
            "chef_repo_path": self.export,
            "use_policyfile": True,
            "policy_document_native_api": True,
            "policy_name": "backup_agent",
            "policy_group": group,
            "node_name": NODE_NAME,
            # The TEST-ONLY encrypted items and their secret, which the export does not carry.
            "data_bag_path": FIXTURES / "encrypted_data_bags",
            "encrypted_data_bag_secret": FIXTURES / "encrypted_data_bag_secret",
            "node_path": self.nodes,
            "client_path": self.workdir / "clients",
            "client_key": self.workdir / "client.pem",
            "file_cache_path": self.workdir / "cache",
            "file_backup_path": self.workdir / "backup",
        }
        client_rb = self.workdir / f"client-{group}.rb"
        client_rb.write_text("\n".join(client_rb_lines(settings)) + "\n")
        attrs = self.workdir / "attrs.json"
        # No run_list here: the policy says what runs.
        attrs.write_text(json.dumps({"backup_agent": {
            "install": offline_install_attributes(self.mirror),
            "config": {"state_dir": str(STATE_DIR)},
        }}))
        return chef_client(["-z", "-c", str(client_rb), "-j", str(attrs)], self.workdir / f"{label}.log",
                           secret_values(group), cwd=self.export)

    def node(self) -> tuple[str, dict[str, Any]]:
        text = (self.nodes / f"{NODE_NAME}.json").read_text()
        return text, json.loads(text)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyRepo]:
    with machine_lock():
        mirror = dependency_mirror(tmp_path_factory.mktemp("dependency-mirror"))
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        yield PolicyRepo(tmp_path_factory.mktemp("policy"), mirror)


@pytest.fixture(scope="module")
def runs(policy: PolicyRepo) -> dict[str, Any]:
    """Each group converged twice, one after the other (the second must change nothing)."""
    done: dict[str, Any] = {"revision": policy.lock["revision_id"]}
    for group in ("staging", "production"):
        for attempt in ("first", "again"):
            result = policy.converge(group, f"{group}-{attempt}")
            assert result.returncode == 0, f"{group} ({attempt}) converge failed:\n{result.output[-6000:]}"
            done[f"{group}-{attempt}"] = result
            if attempt == "first":
                done[f"{group}-config"] = yaml.safe_load(CONFIG.read_text())
                done[f"{group}-node"] = policy.node()
    return done


def test_chef_install_locks_the_local_cookbook_and_a_group_per_environment(policy: PolicyRepo) -> None:
    lock = policy.lock
    assert lock["name"] == "backup_agent"
    assert lock["run_list"] == ["recipe[backup_agent::default]"]
    assert lock["cookbook_locks"]["backup_agent"]["source_options"] == {"path": "cookbooks/backup_agent"}
    assert sorted(lock["default_attributes"]) == GROUPS
    assert "Lockfile written to" in policy.install_output


@pytest.mark.parametrize("group", ["staging", "production"])
def test_a_node_of_a_policy_group_gets_that_environments_jobs_and_item(runs: dict[str, Any], group: str) -> None:
    first: Converge = runs[f"{group}-first"]
    config: dict[str, Any] = runs[f"{group}-config"]
    revision = runs["revision"]
    assert f"Using Policyfile 'backup_agent' at revision '{revision}'" in first.output
    assert config["environment"] == group
    # The item named after the group, not the fallback `default` (another bucket, other keys).
    item = plain_item(group)
    assert config["storage"]["bucket"] == item["bucket"] != plain_item("default")["bucket"]
    assert config["storage"]["access_key_id"] == item["access_key_id"]
    jobs = environment_jobs(group)
    for name, job in jobs.items():
        assert config["jobs"][name] == job, name
    assert sorted(config["jobs"]) == sorted(jobs)


@pytest.mark.parametrize("group", ["staging", "production"])
def test_the_secrets_reach_only_the_root_only_config(runs: dict[str, Any], group: str) -> None:
    first: Converge = runs[f"{group}-first"]
    text, node = runs[f"{group}-node"]
    assert node["policy_group"] == group and node["policy_name"] == "backup_agent"
    # Chef Infra Client 18 makes the policy group the node's chef_environment too (automatic).
    assert node["chef_environment"] == group
    for value in secret_values(group):
        assert value not in text, f"a secret ({value[:4]}...) is in the saved node"
        assert value not in first.output, f"a secret ({value[:4]}...) is in the chef-client output"
        assert value not in runs[f"{group}-again"].output
    assert first.leaked_args == []
    mode = CONFIG.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0


def test_the_unit_is_written_by_systemd_unit_where_systemd_is_not_pid_1(runs: dict[str, Any]) -> None:
    first: Converge = runs["staging-first"]
    assert "systemd is not PID 1 here" in first.output
    text = UNIT.read_text()
    assert f"ExecStart=/opt/backup-agent/bin/backup-agent -c {CONFIG} daemon\n" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in text
    assert stat.S_IMODE(UNIT.stat().st_mode) == 0o644


@pytest.mark.parametrize("group", ["staging", "production"])
def test_a_second_converge_in_the_group_updates_nothing(runs: dict[str, Any], group: str) -> None:
    again: Converge = runs[f"{group}-again"]
    assert again.updated == 0, "updated on the second converge:\n" + "\n".join(again.updated_resources())
