"""A real `chef-client --local-mode` converge of this repository on this machine.

The chef repo is this checkout (cookbooks/, data_bags/, environments/), the environment is
`staging`, the secret is the TEST-ONLY tests/fixtures/encrypted_data_bag_secret. The agent is
installed the way an offline node installs it: pip with --no-index from the wheel built from
agent/ (BACKUP_AGENT_WHEELS, `make wheel`) plus the wheelhouse (BACKUP_AGENT_WHEELHOUSE).

Then the agent that the converge installed backs up and restores a directory through a real
SeaweedFS on 127.0.0.1:18333 (the endpoint and fake keys in the data bag items), a second
converge must update 0 resources, and a config the agent rejects must leave the old file alone.

It installs packages and writes /etc, /opt and /usr/local/bin: it runs only as root, where
CI=true or BACKUP_AGENT_CONVERGE=1 (`make test-converge`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CONFIG = Path("/etc/backup-agent/config.yaml")
AGENT = Path("/usr/local/bin/backup-agent")
INSTALL_DIR = Path("/opt/backup-agent")
INSTALL_MARKER = INSTALL_DIR / ".chef-backup-agent-install"
NODE_NAME = "converge-test"
ENVIRONMENT = "staging"
FINISHED = re.compile(r"(?:Chef Infra Client finished|Infra Phase complete), (\d+)/(\d+) resources updated")

pytestmark = [
    pytest.mark.converge,
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and os.environ.get("BACKUP_AGENT_CONVERGE") != "1",
        reason="converges this machine (packages, /etc, /opt): set CI=true or "
        "BACKUP_AGENT_CONVERGE=1 (make test-converge) to run it",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a real converge needs root"),
]


def plain_item() -> dict[str, str]:
    """The TEST-ONLY plain source of the staging data bag item."""
    source = FIXTURES / "data_bags" / "backup_agent" / f"{ENVIRONMENT}.json"
    item: dict[str, str] = json.loads(source.read_text())
    return item


def staging_jobs() -> dict[str, Any]:
    env = json.loads((REPO / "environments" / f"{ENVIRONMENT}.json").read_text())
    jobs: dict[str, Any] = env["default_attributes"]["backup_agent"]["jobs"]
    return jobs


def wheel_dir() -> Path:
    wheels = Path(os.environ.get("BACKUP_AGENT_WHEELS") or REPO / "build" / "wheels")
    if not list(wheels.glob("backup_agent-*.whl")):
        pytest.fail(f"no backup_agent wheel in {wheels}: build it first (make wheel)")
    return wheels.resolve()


def wheelhouse() -> Path | None:
    """BACKUP_AGENT_WHEELHOUSE if set (empty: none), else ../shared/wheelhouse if present."""
    configured = os.environ.get("BACKUP_AGENT_WHEELHOUSE")
    if configured is not None:
        return Path(configured).resolve() if configured else None
    beside = REPO.parent / "shared" / "wheelhouse"
    return beside.resolve() if beside.is_dir() else None


def clean_env() -> dict[str, str]:
    """The environment of an ordinary root shell: no pip or AWS settings leak in from ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AWS_"))}
    env["CHEF_LICENSE"] = "accept-no-persist"
    env["BUNDLE_GEMFILE"] = str(REPO / "Gemfile")
    return env


@dataclass
class Converge:
    returncode: int
    output: str

    @property
    def updated(self) -> tuple[int, int]:
        found = FINISHED.findall(self.output)
        assert found, f"no 'Chef Infra Client finished' line:\n{self.output[-4000:]}"
        done, total = found[-1]
        return int(done), int(total)


class ChefRepo:
    """client.rb, attributes and node state in a temp dir; the chef repo is this checkout."""

    def __init__(
        self, workdir: Path, sample_source: Path, secret: Path = FIXTURES / "encrypted_data_bag_secret"
    ) -> None:
        self.workdir = workdir
        self.sample_source = sample_source
        self.node_path = workdir / "nodes"
        self.cache = workdir / "cache"
        self.client_rb = workdir / "client.rb"
        for d in (self.node_path, self.cache, workdir / "clients", workdir / "backup"):
            d.mkdir(parents=True, exist_ok=True)
        paths = {
            "chef_repo_path": REPO,
            "data_bag_path": REPO / "data_bags",
            "environment_path": REPO / "environments",
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
            f"cookbook_path [{json.dumps(str(REPO / 'cookbooks'))}]",
        ]
        lines += [f"{key} {json.dumps(str(value))}" for key, value in paths.items()]
        self.client_rb.write_text("\n".join(lines) + "\n")

    def attributes(self, sample_job: dict[str, Any] | None = None) -> dict[str, Any]:
        links = [str(wheel_dir())]
        house = wheelhouse()
        if house is not None:
            links.append(str(house))
        job = {"type": "files", "paths": [str(self.sample_source)], "schedule": "daily at 04:00"}
        job.update(sample_job or {})
        return {
            "run_list": ["recipe[backup_agent]"],
            "backup_agent": {
                # Offline, as a node without PyPI: the wheel from agent/ plus its dependencies.
                "install": {"find_links": links, "no_index": house is not None},
                "jobs": {"sample": job},
            },
        }

    def converge(self, attributes: dict[str, Any] | None = None) -> Converge:
        attrs = self.workdir / "attrs.json"
        attrs.write_text(json.dumps(attributes or self.attributes()))
        cmd = [
            "bundle",
            "exec",
            "chef-client",
            "--no-color",
            "-z",
            "-c",
            str(self.client_rb),
            "-E",
            ENVIRONMENT,
            "-j",
            str(attrs),
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1200, check=False)
        return Converge(proc.returncode, proc.stdout + proc.stderr)


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


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    source = tmp_path_factory.mktemp("sample-source")
    return source, write_sample(source)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, sample: tuple[Path, dict[str, bytes]]) -> ChefRepo:
    return ChefRepo(tmp_path_factory.mktemp("chef"), sample[0])


@pytest.fixture(scope="module")
def first(repo: ChefRepo) -> Converge:
    # A venv this cookbook made on an earlier run would keep its agent: pip does not reinstall a
    # rebuilt wheel of the same version. Start from a fresh install, as a new node does.
    if INSTALL_MARKER.exists():
        shutil.rmtree(INSTALL_DIR)
    result = repo.converge()
    assert result.returncode == 0, f"converge failed:\n{result.output[-6000:]}"
    return result


@pytest.fixture
def seaweedfs() -> Iterator[Any]:
    from support.seaweedfs import SeaweedFS

    item = plain_item()
    port = int(item["endpoint_url"].rsplit(":", 1)[1])
    with SeaweedFS(port=port, access_key=item["access_key_id"], secret_key=item["secret_access_key"]) as s3:
        s3.client().create_bucket(Bucket=item["bucket"])
        yield s3


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), *args], env=clean_env(), capture_output=True, text=True, timeout=600, check=False
    )


def test_converge_renders_staging_config_from_the_data_bag(first: Converge) -> None:
    done, _total = first.updated
    assert done > 0
    info = CONFIG.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == (0, 0)

    config = yaml.safe_load(CONFIG.read_text())
    assert config["environment"] == ENVIRONMENT
    assert config["node"] == NODE_NAME
    assert config["storage"]["bucket"] == plain_item()["bucket"]
    for name, job in staging_jobs().items():
        assert config["jobs"][name] == job
    assert AGENT.resolve() == INSTALL_DIR / "bin" / "backup-agent"
    assert "execute[install backup-agent] action run" in first.output

    check = agent("validate")
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "ok"


def test_secrets_stay_out_of_node_json_and_output(repo: ChefRepo, first: Converge) -> None:
    item = plain_item()
    node_json = (repo.node_path / f"{NODE_NAME}.json").read_text()
    assert '"backup_agent"' in node_json  # the saved node is there and carries our attributes
    for key in ("access_key_id", "secret_access_key", "bucket"):
        assert item[key] not in node_json, f"{key} leaked into the saved node JSON"
    for key in ("access_key_id", "secret_access_key"):
        assert item[key] not in first.output, f"{key} leaked into chef-client output"


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


def test_second_converge_updates_nothing(repo: ChefRepo, first: Converge) -> None:
    second = repo.converge()
    assert second.returncode == 0, second.output[-6000:]
    done, total = second.updated
    updated = [
        line
        for line in second.output.splitlines()
        if line.lstrip().startswith("* ") and "action" in line and "(up to date)" not in line and "(skipped" not in line
    ]
    assert done == 0, f"{done}/{total} resources updated on the second converge:\n" + "\n".join(updated)


def test_config_the_agent_rejects_leaves_the_old_file(repo: ChefRepo, first: Converge) -> None:
    before = CONFIG.read_bytes()
    before_mtime = CONFIG.stat().st_mtime_ns
    bad = repo.attributes({"retention": {"keep_daily": -1}})
    result = repo.converge(bad)

    assert result.returncode != 0
    assert "rejected the new /etc/backup-agent/config.yaml, which is left unchanged" in result.output
    assert "keep_daily" in result.output
    assert CONFIG.read_bytes() == before
    assert CONFIG.stat().st_mtime_ns == before_mtime
    # Nothing with credentials was left behind: no staged copy, no failed_validations copy.
    assert sorted(p.name for p in CONFIG.parent.iterdir()) == ["config.yaml"]
    assert not (repo.cache / "failed_validations").exists()
    for key in ("access_key_id", "secret_access_key"):
        assert plain_item()[key] not in result.output


def test_wrong_secret_fails_naming_bag_item_and_key(
    first: Converge, sample: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    before = CONFIG.read_bytes()
    wrong = tmp_path / "wrong_secret"
    wrong.write_text(os.urandom(384).hex())
    result = ChefRepo(tmp_path / "chef", sample[0], secret=wrong).converge()

    assert result.returncode != 0
    assert (
        f"cannot decrypt key 'bucket' of data bag item 'backup_agent/{ENVIRONMENT}' with the secret from {wrong}"
        in result.output
    )
    # Secrets load at compile time: the run stops before it changes anything.
    assert "Infra Phase failed. 0 resources updated" in result.output
    assert CONFIG.read_bytes() == before
