"""Real `chef-client --local-mode` converges of this repository on this machine.

The chef repo is this checkout's cookbooks/, the TEST-ONLY encrypted items of
tests/fixtures/encrypted_data_bags/ and a copy of environments/ that the tests may edit; the
secret is the TEST-ONLY tests/fixtures/encrypted_data_bag_secret. The agent
is installed the way a node without PyPI installs it: the wheel the cookbook carries
(files/agent), its dependencies by the cookbook's hash lock from a mirror that holds nothing else
(the lock's wheels from the wheelhouse, BACKUP_AGENT_WHEELHOUSE): no agent anywhere but the
cookbook.

In order, one module (each chef-client run costs 20-40 s, so the cases share runs):
  1. staging, from scratch: install, config = the environment's jobs, backup and restore with
     the installed agent through a real SeaweedFS on 127.0.0.1:18333 (the data bag's endpoint);
  2. with a real `backup-agent daemon` running (PID 1 is not systemd here, so the cookbook does
     not manage a service; it sends the daemon a SIGHUP when the config changes):
     a second converge updates 0 resources and the daemon hears nothing; a changed environment
     attribute changes the config and the daemon reloads exactly once;
  3. a wrapper cookbook (test/fixtures/cookbooks/backup_agent_test) declares backup_agent_job
     resources, gets the pg password from the data bag and sets up the bucket; again: 0 updated;
  4. production and development: their schedules and retention; the wrapper's jobs are gone;
  5. bad inputs (attributes, a resource, the data bag, the agent's own validation): each run
     fails with a message that names the problem, and the config file stays as it was;
  6. the install: the venv holds exactly the cookbook's wheel and the lock's versions; a venv of
     another Python is made again; a mirror URL with credentials never reaches the output.

This is the environment way (`-E`); test_policyfile.py converges the same repository with a
policy lock, test_secret_stores.py with the secrets in a chef-vault item or AWS Secrets Manager.

It installs packages and writes /etc, /opt and /usr/local/bin: it runs only as root, where
CI=true or BACKUP_AGENT_CONVERGE=1 (`make test-converge`), holding the machine lock it shares
with the knife end-to-end suite.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import stat
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.machine import cookbook_wheel, dependency_mirror, locked_pins, machine_lock, offline_install_attributes

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TEST_COOKBOOKS = REPO / "cookbooks" / "backup_agent" / "test" / "fixtures" / "cookbooks"
CONFIG = Path("/etc/backup-agent/config.yaml")
AGENT = Path("/usr/local/bin/backup-agent")
INSTALL_DIR = Path("/opt/backup-agent")
INSTALL_MARKER = INSTALL_DIR / ".chef-backup-agent-install"
# Its own state_dir, so nothing another suite left (daemon plans, a lock) changes what happens.
STATE_DIR = Path("/var/lib/backup-agent-converge-test")
NODE_NAME = "converge-test"
FINISHED = re.compile(r"(?:Chef Infra Client finished|Infra Phase complete), (\d+)/(\d+) resources updated")
FAILED = re.compile(r"Infra Phase failed\. (\d+) resources updated")
RELOAD = "ruby_block[reload backup-agent] action run"
OHAI_LANGUAGES = ["C", "Elixir", "Erlang", "Go", "Groovy", "Haskell", "Java", "Lua", "Mono", "Nodejs", "Perl",
                  "PHP", "Powershell", "Python", "Rust", "Scala"]

pytestmark = [
    pytest.mark.converge,
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_CONVERGE") != "1",
        reason="converges this machine (packages, /etc, /opt): set CI=true or "
        "BACKUP_AGENT_CONVERGE=1 (make test-converge) to run it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a real converge needs root"),
]


def plain_item(name: str = "staging") -> dict[str, Any]:
    """The TEST-ONLY plain source of a data bag item."""
    item: dict[str, Any] = json.loads((FIXTURES / "data_bags" / "backup_agent" / f"{name}.json").read_text())
    return item


def secret_values() -> list[str]:
    item = plain_item()
    pg = item["job_secrets"]["pg"]
    return [item["access_key_id"], item["secret_access_key"], pg["password"], *pg["env"].values()]


def clean_env() -> dict[str, str]:
    """The environment of an ordinary root shell: no pip or AWS settings leak in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_"))}
    env["CHEF_LICENSE"] = "accept-no-persist"
    env["BUNDLE_GEMFILE"] = str(REPO / "Gemfile")
    return env


def config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


@dataclass
class Converge:
    returncode: int
    output: str
    seconds: float

    @property
    def updated(self) -> int:
        found = FINISHED.findall(self.output) or FAILED.findall(self.output)
        assert found, f"no 'resources updated' line:\n{self.output[-4000:]}"
        last = found[-1]
        return int(last[0] if isinstance(last, tuple) else last)

    def updated_resources(self) -> list[str]:
        """The `* resource[name] action x` lines of resources that changed something."""
        lines = self.output.splitlines()
        out = []
        for i, line in enumerate(lines):
            head = line.strip()
            if not head.startswith("* ") or " action " not in head:
                continue
            body = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if "(up to date)" in head or "(skipped" in head or head.endswith("action nothing"):
                continue
            if body.startswith("- "):
                out.append(head[2:])
        return out


TIMINGS: list[tuple[str, float]] = []


class ChefRepo:
    """client.rb, node state and an editable copy of environments/ in a temp dir; cookbooks and
    data bags are the test-only encrypted items (or `data_bags` when given)."""

    def __init__(
        self,
        workdir: Path,
        sample_source: Path,
        secret: Path = FIXTURES / "encrypted_data_bag_secret",
        data_bags: Path = FIXTURES / "encrypted_data_bags",
        mirror: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.sample_source = sample_source
        self.mirror = mirror
        self.node_path = workdir / "nodes"
        self.cache = workdir / "cache"
        self.environments = workdir / "environments"
        if not self.environments.exists():
            shutil.copytree(REPO / "environments", self.environments)
        for d in (self.node_path, self.cache, workdir / "clients", workdir / "backup"):
            d.mkdir(parents=True, exist_ok=True)
        paths = {
            "chef_repo_path": REPO,
            "data_bag_path": data_bags,
            "environment_path": self.environments,
            "node_path": self.node_path,
            "client_path": workdir / "clients",
            "client_key": workdir / "client.pem",
            "file_cache_path": self.cache,
            "file_backup_path": workdir / "backup",
            "encrypted_data_bag_secret": secret,
        }
        lines = [
            "local_mode true",
            f"node_name {json.dumps(NODE_NAME)}",
            f"cookbook_path {json.dumps([str(REPO / 'cookbooks'), str(TEST_COOKBOOKS)])}",
        ]
        lines += [f"{key} {json.dumps(str(value))}" for key, value in paths.items()]
        # Ohai's inventory of installed languages (gcc, erl, ghc, python, java... --version) is
        # about a third of every run here and nothing in the cookbook reads it.
        lines.append("ohai.disabled_plugins = [" + ", ".join(f":{name}" for name in OHAI_LANGUAGES) + "]")
        self.client_rb = workdir / "client.rb"
        self.client_rb.write_text("\n".join(lines) + "\n")

    def attributes(
        self, sample_job: dict[str, Any] | None = None, wrapper: bool = False, **backup_agent: Any
    ) -> dict[str, Any]:
        job = {"type": "files", "paths": [str(self.sample_source)], "schedule": "daily at 04:00"}
        job.update(sample_job or {})
        attrs: dict[str, Any] = {
            # As a node without PyPI: pip reaches only the dependency mirror.
            "install": offline_install_attributes(self.mirror),
            "config": {"state_dir": str(STATE_DIR)},
            "jobs": {"sample": job},
        }
        for key, value in backup_agent.items():
            attrs[key] = {**attrs.get(key, {}), **value} if isinstance(value, dict) else value
        return {
            "run_list": ["recipe[backup_agent_test]" if wrapper else "recipe[backup_agent]"],
            "backup_agent": attrs,
        }

    def environment_jobs(self, name: str) -> dict[str, Any]:
        env = json.loads((self.environments / f"{name}.json").read_text())
        jobs: dict[str, Any] = env["default_attributes"]["backup_agent"]["jobs"]
        return jobs

    def edit_environment(self, name: str, change: Any) -> None:
        path = self.environments / f"{name}.json"
        env = json.loads(path.read_text())
        change(env["default_attributes"]["backup_agent"])
        path.write_text(json.dumps(env, indent=2) + "\n")

    def converge(self, attributes: dict[str, Any] | None = None, environment: str = "staging",
                 label: str = "") -> Converge:
        attrs = self.workdir / f"attrs-{label or 'run'}.json"
        attrs.write_text(json.dumps(attributes or self.attributes()))
        cmd = ["bundle", "exec", "chef-client", "--no-color", "-z", "-c", str(self.client_rb),
               "-E", environment, "-j", str(attrs)]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1200, check=False)
        seconds = time.monotonic() - started
        TIMINGS.append((label or environment, seconds))
        # Each run's output stays next to its client.rb, for whoever debugs a failure.
        log_name = re.sub(r"\W+", "-", label or environment) + ".log"
        (self.workdir / log_name).write_text(proc.stdout + proc.stderr)
        return Converge(proc.returncode, proc.stdout + proc.stderr, seconds)


def write_sample(root: Path) -> dict[str, bytes]:
    files = {
        "hello.txt": b"hello from the converge test\n",
        "empty": b"",
        "nested/deeper/data.bin": os.urandom(1024 * 1024 + 17),
        "nested/notes.md": "ünïcödé ✓\n".encode() * 100,
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), *args], env=clean_env(), capture_output=True, text=True, timeout=600, check=False
    )


def assert_jobs_match(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Every job of the environment, with exactly its schedule, retention and other keys."""
    for name, job in expected.items():
        assert actual.get(name) == job, f"jobs.{name}: rendered {actual.get(name)!r}, environment says {job!r}"


# --- fixtures: one machine, one order -------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def machine() -> Iterator[None]:
    with machine_lock():
        yield
    if TIMINGS:
        total = sum(s for _, s in TIMINGS)
        print("\nconverge timings: " + ", ".join(f"{label} {s:.0f}s" for label, s in TIMINGS) + f"; total {total:.0f}s")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    source = tmp_path_factory.mktemp("sample-source")
    return source, write_sample(source)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The lock's wheels and nothing else (None without a wheelhouse: pip's index then)."""
    return dependency_mirror(tmp_path_factory.mktemp("dependency-mirror"))


@pytest.fixture(scope="module")
def repo(
    tmp_path_factory: pytest.TempPathFactory, sample: tuple[Path, dict[str, bytes]], mirror: Path | None
) -> ChefRepo:
    return ChefRepo(tmp_path_factory.mktemp("chef"), sample[0], mirror=mirror)


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[Any]:
    from support.seaweedfs import SeaweedFS

    item = plain_item()
    port = int(item["endpoint_url"].rsplit(":", 1)[1])
    with SeaweedFS(port=port, access_key=item["access_key_id"], secret_key=item["secret_access_key"]) as s3:
        s3.client().create_bucket(Bucket=item["bucket"])
        yield s3


@pytest.fixture(scope="module")
def first(repo: ChefRepo) -> Converge:
    # Start from a fresh install, as a new node does.
    if INSTALL_MARKER.exists():
        shutil.rmtree(INSTALL_DIR)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    result = repo.converge(label="staging-first")
    assert result.returncode == 0, f"converge failed:\n{result.output[-6000:]}"
    return result


class Daemon:
    """`backup-agent daemon` started the way a supervisor other than systemd would."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(AGENT), "daemon"], env=clean_env(), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.wait_for("daemon started")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reloads(self) -> list[str]:
        return [line for line in self.text().splitlines() if "config reloaded" in line or "reload rejected" in line]

    def wait_for(self, needle: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.text().count(needle) >= count:
                return
            assert self.proc.poll() is None, f"daemon exited:\n{self.text()}"
            time.sleep(0.2)
        raise AssertionError(f"daemon log has no {needle!r} (x{count}) after {timeout}s:\n{self.text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def daemon(first: Converge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("daemon") / "daemon.log")
    yield d
    d.stop()


# --- 1. staging from scratch ----------------------------------------------------------------


def test_first_converge_renders_the_staging_config(repo: ChefRepo, first: Converge) -> None:
    assert first.updated > 0
    info = CONFIG.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (0, 0)

    rendered = config()
    assert rendered["environment"] == "staging"
    assert rendered["node"] == NODE_NAME
    assert rendered["state_dir"] == str(STATE_DIR)
    assert rendered["storage"]["bucket"] == plain_item()["bucket"]
    assert_jobs_match(repo.environment_jobs("staging"), rendered["jobs"])
    assert sorted(rendered["jobs"]) == sorted([*repo.environment_jobs("staging"), "sample"])
    # The data bag holds job_secrets for `pg`, a job this node does not have: not rendered.
    assert "password" not in CONFIG.read_text()
    assert AGENT.resolve() == INSTALL_DIR / "bin" / "backup-agent"
    assert "execute[install backup-agent] action run" in first.output
    assert "not managing service backup-agent: systemd is not PID 1" in first.output

    check = agent("validate")
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "ok"


def test_secrets_stay_out_of_node_json_and_output(repo: ChefRepo, first: Converge) -> None:
    item = plain_item()
    node_json = (repo.node_path / f"{NODE_NAME}.json").read_text()
    assert '"backup_agent"' in node_json  # the saved node is there and carries our attributes
    for secret in [item["bucket"], *secret_values()]:
        assert secret not in node_json, "a data bag value leaked into the saved node JSON"
    for secret in secret_values():
        assert secret not in first.output, "a secret leaked into chef-client output"


def test_installed_agent_backs_up_and_restores(
    first: Converge, seaweedfs: Any, sample: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    source, files = sample
    run = agent("run", "sample", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["job"] == "sample"
    assert result["snapshot"]

    target = tmp_path / "restore"
    restore = agent("restore", "sample", "--target", str(target))
    assert restore.returncode == 0, restore.stderr
    restored_root = target / source.relative_to("/")
    for rel, data in files.items():
        assert (restored_root / rel).read_bytes() == data, rel


# --- 2. no-op, then one changed attribute, with a daemon running ----------------------------


def test_second_converge_updates_nothing_and_tells_the_daemon_nothing(repo: ChefRepo, daemon: Daemon) -> None:
    second = repo.converge(label="staging-noop")
    assert second.returncode == 0, second.output[-6000:]
    assert second.updated == 0, "resources updated on the second converge:\n" + "\n".join(second.updated_resources())
    assert RELOAD not in second.output
    time.sleep(1)
    assert daemon.reloads() == []


def test_changed_environment_attribute_changes_the_config_and_reloads_once(repo: ChefRepo, daemon: Daemon) -> None:
    def change(attrs: dict[str, Any]) -> None:
        attrs["jobs"]["etc"]["schedule"] = "every 4 hours"
        attrs["jobs"]["etc"]["retention"]["keep_daily"] = 10

    repo.edit_environment("staging", change)
    before = config()
    result = repo.converge(label="staging-changed")
    assert result.returncode == 0, result.output[-6000:]

    after = config()
    assert after["jobs"]["etc"]["schedule"] == "every 4 hours"
    assert after["jobs"]["etc"]["retention"] == {"keep_last": 4, "keep_daily": 10}
    others = [name for name in before["jobs"] if name != "etc"]
    assert [after["jobs"][name] for name in others] == [before["jobs"][name] for name in others]
    # Exactly two changes: the file, and the one reload it notified (delayed, after the file).
    assert result.updated_resources() == [f"template[{CONFIG}] action create", RELOAD]
    assert result.updated == 2
    assert result.output.count(RELOAD) == 1
    # ... which the real daemon received once, and reloaded the new schedule from.
    daemon.wait_for("config reloaded")
    time.sleep(1)
    reloads = daemon.reloads()
    assert len(reloads) == 1, reloads
    assert "changed: etc" in reloads[0]


# --- 3. a wrapper cookbook's backup_agent_job resources, and the bucket -----------------------


def test_wrapper_jobs_from_resources_join_the_environment_jobs(
    repo: ChefRepo, daemon: Daemon, seaweedfs: Any
) -> None:
    attrs = repo.attributes(wrapper=True, bucket={"setup": True})
    result = repo.converge(attrs, label="wrapper")
    assert result.returncode == 0, result.output[-6000:]

    jobs = config()["jobs"]
    pg_secrets = plain_item()["job_secrets"]["pg"]
    assert jobs["pg"] == {
        "type": "command", "preset": "postgresql", "database": "app", "host": "127.0.0.1", "username": "backup",
        "schedule": "daily at 01:00", "retention": {"keep_daily": 7, "keep_weekly": 4},
        "password": pg_secrets["password"], "secret_env": pg_secrets["env"],
    }
    assert jobs["volumes"] == {"type": "ebs_snapshot", "volumes": "all", "exclude_root": True,
                               "schedule": "daily at 03:00 UTC", "retention": {"keep_last": 7}}
    assert "app" not in jobs  # backup_agent_job 'app' action :delete
    assert jobs["etc"] == repo.environment_jobs("staging")["etc"]
    for secret in secret_values():
        assert secret not in result.output
    assert "execute[backup-agent bucket setup] action run" in result.output
    versioning = seaweedfs.client().get_bucket_versioning(Bucket=plain_item()["bucket"])
    assert versioning.get("Status") == "Enabled"
    assert result.output.count(RELOAD) == 1
    daemon.wait_for("config reloaded", count=2)

    again = repo.converge(attrs, label="wrapper-noop")
    assert again.returncode == 0, again.output[-6000:]
    assert again.updated == 0, "updated on the second wrapper converge:\n" + "\n".join(again.updated_resources())
    assert "execute[backup-agent bucket setup] action run (skipped due to only_if)" in again.output


# --- 4. the other environments ----------------------------------------------------------------


@pytest.mark.parametrize("environment", ["production", "development"])
def test_environment_schedules_and_retention(repo: ChefRepo, daemon: Daemon, environment: str) -> None:
    result = repo.converge(environment=environment, label=environment)
    assert result.returncode == 0, result.output[-6000:]
    rendered = config()
    assert rendered["environment"] == environment
    assert rendered["storage"]["bucket"] == plain_item(environment)["bucket"]
    # production's item turns client-side encryption on (a key and a previous one): they reach
    # the file the agent validated; development's has none, and its file names none.
    for key in ("encryption_key", "previous_encryption_keys"):
        assert rendered["storage"].get(key) == plain_item(environment).get(key), key
    assert ("encryption_key" in rendered["storage"]) == (environment == "production")
    env_jobs = repo.environment_jobs(environment)
    assert_jobs_match(env_jobs, rendered["jobs"])
    # The wrapper's resources are not in this run: their jobs are gone from the config.
    assert sorted(rendered["jobs"]) == sorted([*env_jobs, "sample"])
    assert result.output.count(RELOAD) == 1
    assert agent("validate").returncode == 0


# --- 5. bad inputs ------------------------------------------------------------------------------


@dataclass
class BadInput:
    name: str
    messages: list[str]
    attributes: dict[str, Any] | None = None
    secret: Path | None = None
    data_bags: Path | None = None
    # Compile-time failures stop before any resource; the agent's own check runs at the end.
    compile_time: bool = True


def bad_inputs(repo: ChefRepo, tmp: Path) -> list[BadInput]:
    broken_bags = tmp / "broken_data_bags"
    shutil.copytree(FIXTURES / "encrypted_data_bags", broken_bags)
    item = broken_bags / "backup_agent" / "staging.json"
    item.write_text(item.read_text()[:-40])  # cut off mid-JSON
    wrong_secret = tmp / "wrong_secret"
    wrong_secret.write_text(os.urandom(384).hex())

    many = repo.attributes()
    jobs = many["backup_agent"]["jobs"]
    jobs["etc"] = {"type": "tarball"}  # unknown job type
    jobs["app"] = {"schedule": "daly at 02:00", "retention": {"keep_daily": "7"}}  # bad schedule, wrong type
    jobs["db"] = {"type": "command", "command": ["pg_dump", "app"], "password": "hunter2"}  # a secret
    many["backup_agent"]["config"]["splay"] = "5m"  # wrong type
    many["backup_agent"]["install"]["find_links"] = "/srv/wheels"  # a string, not a list

    return [
        BadInput("wrong attribute types, unknown job type, bad schedule, a password", [
            "backup_agent: 6 invalid attributes, nothing was changed:",
            "node['backup_agent']['install']['find_links']: must be a list of strings, got the string \"/srv/wheels\"",
            "node['backup_agent']['config']['splay']: must be an integer >= 0, got the string \"5m\"",
            "node['backup_agent']['jobs']['etc']['type']: \"tarball\" is not a job type",
            "node['backup_agent']['jobs']['app']['schedule']: 'daly at 02:00' is not a schedule",
            "node['backup_agent']['jobs']['app']['retention']: keep_daily must be an integer >= 0, got the string",
            "node['backup_agent']['jobs']['db']['password']: is a secret: put it in the encrypted data bag item as "
            "job_secrets.db.password, never in an attribute",
        ], attributes=many),
        BadInput("a backup_agent_job with a schedule the agent cannot read", [
            "Option schedule's value every other tuesday must be 'every N seconds|minutes|hours|days'",
        ], attributes={**repo.attributes(wrapper=True), "backup_agent_test": {"bad_schedule": True}}),
        BadInput("a missing data bag item", [
            "backup_agent: data bag 'backup_agent' has no item 'nope' "
            "(it has: default, development, production, staging)",
        ], attributes=repo.attributes(data_bag={"item": "nope"})),
        BadInput("a wrong secret", [
            "backup_agent: cannot decrypt key 'bucket' of data bag item 'backup_agent/staging' with the secret from "
            f"{wrong_secret}",
        ], secret=wrong_secret),
        BadInput("malformed data bag JSON", [
            f"backup_agent: data bag item 'backup_agent/staging' is not valid JSON ({item}): ",
        ], data_bags=broken_bags),
        BadInput("a key only the agent's schema knows is wrong", [
            "backup_agent: `backup-agent validate` rejected the new /etc/backup-agent/config.yaml, which is left "
            "unchanged:", "jobs.sample", "storage_clas",
        ], attributes=repo.attributes({"storage_clas": "GLACIER"}), compile_time=False),
    ]


def test_bad_inputs_fail_clearly_and_leave_the_config_alone(
    repo: ChefRepo, daemon: Daemon, sample: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    before = CONFIG.read_bytes()
    before_mtime = CONFIG.stat().st_mtime_ns
    cases = bad_inputs(repo, tmp_path)

    def run(case: BadInput) -> Converge:
        # Each in its own chef repo dir: they run two at a time, and change nothing.
        own = ChefRepo(tmp_path / re.sub(r"\W+", "-", case.name), sample[0],
                       secret=case.secret or FIXTURES / "encrypted_data_bag_secret",
                       data_bags=case.data_bags or FIXTURES / "encrypted_data_bags", mirror=repo.mirror)
        shutil.rmtree(own.environments)
        shutil.copytree(repo.environments, own.environments)
        return own.converge(case.attributes or own.attributes(), label=f"bad: {case.name}")

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))

    problems = []
    for case, result in zip(cases, results, strict=True):
        if result.returncode == 0:
            problems.append(f"{case.name}: the converge succeeded")
            continue
        missing = [m for m in case.messages if m not in result.output]
        if missing:
            problems.append(f"{case.name}: no {missing!r} in:\n{result.output[-3000:]}")
        if case.compile_time and "Infra Phase failed. 0 resources updated" not in result.output:
            problems.append(f"{case.name}: expected to stop before any resource changed:\n{result.output[-3000:]}")
        for secret in secret_values():
            if secret in result.output:
                problems.append(f"{case.name}: a secret is in the output")
    assert not problems, "\n\n".join(problems)

    assert CONFIG.read_bytes() == before
    assert CONFIG.stat().st_mtime_ns == before_mtime
    # Nothing with credentials was left behind: no staged copy, no failed_validations copy
    # (fleet_view.json is the Ohai plugin's settings: agent and config paths, no secret).
    assert sorted(p.name for p in CONFIG.parent.iterdir()) == ["config.yaml", "fleet_view.json"]
    assert not list(tmp_path.glob("*/cache/failed_validations"))
    # The daemon was not told about configs that never replaced the old one.
    assert len(daemon.reloads()) == 4


# --- 6. the install: the cookbook's agent, the lock's dependencies, a new Python, credentials --


def site_packages() -> Path:
    found = sorted((INSTALL_DIR / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]


def test_the_venv_holds_the_cookbooks_agent_and_the_locks_versions(first: Converge, mirror: Path | None) -> None:
    # Nothing but the cookbook offered the agent: the mirror holds dependencies only.
    if mirror is not None:
        assert not [p.name for p in mirror.iterdir() if p.name.lower().startswith(("backup_agent", "backup-agent"))]
    # Every module of the cookbook's wheel, byte for byte.
    with zipfile.ZipFile(cookbook_wheel()) as wheel:
        modules = [name for name in wheel.namelist() if name.startswith("backup_agent/")]
        assert modules
        for name in modules:
            assert (site_packages() / name).read_bytes() == wheel.read(name), name
    # Exactly the lock's dependencies at the lock's versions, and the agent: nothing drifts.
    listed = subprocess.run([str(INSTALL_DIR / "bin" / "pip"), "list", "--format", "json"],
                            env=clean_env(), capture_output=True, text=True, check=True)
    installed = {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(listed.stdout)
                 if p["name"].lower() not in ("pip", "setuptools")}
    assert installed == {**locked_pins(), "backup-agent": "0.1.0"}
    assert "execute[install backup-agent dependencies] action run" in first.output


def test_a_venv_of_another_python_is_made_again(repo: ChefRepo, daemon: Daemon) -> None:
    # As after a distribution upgrade: the venv's Python is not the one install.python is now.
    cfg = INSTALL_DIR / "pyvenv.cfg"
    cfg.write_text(re.sub(r"(?m)^executable = .*$", "executable = /usr/bin/python3.10", cfg.read_text()))
    leftover = site_packages() / "left_by_the_old_python.py"
    leftover.write_text("")
    result = repo.converge(label="another-python")
    assert result.returncode == 0, result.output[-6000:]
    updated = result.updated_resources()
    for step in ("execute[create backup-agent venv] action run",
                 "execute[install backup-agent dependencies] action run", "execute[install backup-agent] action run"):
        assert step in updated, updated
    assert not leftover.exists()
    assert f"executable = {os.path.realpath('/usr/bin/python3')}" in cfg.read_text()
    assert agent("validate").returncode == 0

    again = repo.converge(label="another-python-noop")
    assert again.returncode == 0, again.output[-6000:]
    assert again.updated == 0, "\n".join(again.updated_resources())


def test_a_mirror_url_with_credentials_never_reaches_the_output(
    repo: ChefRepo, daemon: Daemon, mirror: Path | None
) -> None:
    if mirror is None:
        pytest.skip("no wheelhouse to serve as a mirror")
    password = "TESTONLY-mirror-password"
    seen: list[str] = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(mirror), **kwargs)

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    # A new node: everything comes through the URL (an installed venv would need nothing from it).
    shutil.rmtree(INSTALL_DIR)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Recording) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://deploy:{password}@127.0.0.1:{server.server_address[1]}/"
            result = repo.converge(repo.attributes(install={"find_links": [url], "no_index": True}), label="mirror-url")
        finally:
            server.shutdown()
    assert result.returncode == 0, result.output[-6000:]
    # pip installed from the served mirror, sending the URL's credentials...
    assert "execute[install backup-agent dependencies] action run" in result.updated_resources()
    assert len(seen) > len(locked_pins()), seen  # the page, then each wheel
    assert all(header.startswith("Basic ") for header in seen)
    # ... and the password is in no output and not in the install marker.
    assert password not in result.output
    assert password not in INSTALL_MARKER.read_text()
    assert agent("validate").returncode == 0
