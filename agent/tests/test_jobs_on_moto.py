"""The jobs through the real CLI on moto server with signature checking on (issue #19, item 4).

Two credential sources, as a node has them: (a) an IAM user's static keys in the config, (b) no
keys anywhere and an instance profile: AWS_EC2_METADATA_SERVICE_ENDPOINT points at a loopback
IMDSv2 serving assume-role credentials. Each runs a files job (one file above the multipart
threshold) and a command job through run, snapshots, restore, check --read-data, an unchanged
rerun, prune and drill. One moto server and one IMDS per module; a bucket per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from store_servers import REGION, CredentialImds, SigMoto, sig_moto
from support.treeutil import capture

AGENT = str(Path(sys.executable).parent / "backup-agent")
CHUNK_MB = 5  # the smallest part S3 allows; files of two parts or more go up as multipart uploads
BIG = 11 << 20  # three parts
WRONG_SECRET = "wrong-secret-for-the-test-0123456789abcd"
# Environment that would pick another credential source, another client (a proxy makes the agent
# use BotoStore) or another trust store than the one under test.
DROP_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@dataclass
class Imds:
    imds: CredentialImds
    url: str


@pytest.fixture(scope="module")
def moto() -> Iterator[SigMoto]:
    with sig_moto() as m:
        yield m


@pytest.fixture(scope="module")
def imds(moto: SigMoto) -> Iterator[Imds]:
    served = CredentialImds(moto.role_name, moto.assume_role)
    with served.serve() as url:
        yield Imds(served, url)


@dataclass
class Cli:
    """A config on a fresh bucket of the signature-checking moto, and the CLI with an environment
    that holds exactly one credential source."""

    path: Path
    data: dict[str, Any]
    env: dict[str, str]
    moto: SigMoto
    bucket: str
    secrets: list[str] = field(default_factory=list)

    def job(self, name: str, **spec: Any) -> None:
        self.data["jobs"][name] = spec
        self.path.write_text(yaml.safe_dump(self.data))

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([AGENT, "-c", str(self.path), *args], capture_output=True, timeout=300,
                              env=self.env, check=False)

    def ok(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.returncode, proc.stderr.decode(errors="replace"))
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def snapshot_ids(self, job: str) -> list[str]:
        return [s["id"] for s in self.json("snapshots", job)]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in DROP_ENV}
    env["AWS_CONFIG_FILE"] = str(tmp / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-credentials")
    return {**env, **extra}


def _cli(moto: SigMoto, tmp: Path, env: dict[str, str], **keys: str) -> Cli:
    bucket = f"j-{uuid.uuid4().hex[:16]}"
    moto.s3().create_bucket(Bucket=bucket)
    data: dict[str, Any] = {
        "node": "test-node",
        "state_dir": str(tmp / "state"),
        "log_level": "INFO",
        "storage": {"bucket": bucket, "region": REGION, "endpoint_url": moto.url,
                    "multipart_chunk_mb": CHUNK_MB, **keys},
        "jobs": {},
    }
    cli = Cli(tmp / "config.yaml", data, env, moto, bucket, secrets=[v for k, v in keys.items() if "secret" in k])
    cli.path.write_text(yaml.safe_dump(data))
    return cli


@pytest.fixture(params=["static-keys", "instance-profile"])
def cli(request: pytest.FixtureRequest, moto: SigMoto, tmp_path: Path) -> Iterator[Cli]:
    if request.param == "static-keys":
        env = _env(tmp_path, AWS_EC2_METADATA_DISABLED="true")
        yield _cli(moto, tmp_path, env, access_key_id=moto.user.access_key,
                   secret_access_key=moto.user.secret_key)
        return
    served: Imds = request.getfixturevalue("imds")
    before = len(served.imds.fetches)
    yield _cli(moto, tmp_path, _env(tmp_path, AWS_EC2_METADATA_SERVICE_ENDPOINT=served.url))
    # The credentials came from the IMDS, not from somewhere else.
    assert len(served.imds.fetches) > before


def _make_tree(root: Path) -> None:
    (root / "sub dir").mkdir(parents=True)
    (root / "small.txt").write_text("hello\n")
    (root / "sub dir" / "ünïcødé.bin").write_bytes(os.urandom(70_000))
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(os.urandom(BIG))  # above the multipart threshold
    (root / "link").symlink_to("small.txt")


def _no_secret(cli: Cli, proc: subprocess.CompletedProcess[bytes]) -> None:
    for secret in cli.secrets:
        assert secret.encode() not in proc.stdout + proc.stderr


def test_files_job(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    state = capture(src)
    cli.job("data", type="files", paths=[str(src)], retention={"keep_last": 1})

    first = cli.json("run", "data")
    assert first["status"] == "success" and first["files_failed"] == 0
    assert first["files_new"] >= 4 and first["bytes_uploaded"] >= BIG
    assert cli.snapshot_ids("data") == [first["snapshot"]]

    target = tmp_path / "restored"
    cli.ok("restore", "data", "--target", str(target))
    assert capture(target / str(src).lstrip("/")) == state
    cli.ok("check", "data", "--read-data")

    time.sleep(1.1)  # snapshot ids have second resolution
    second = cli.json("run", "data")
    assert second["status"] == "success" and second["snapshot"] != first["snapshot"]
    assert second["bytes_uploaded"] == 0
    assert second["files_new"] == second["files_changed"] == 0
    assert second["files_unchanged"] == first["files_new"]
    assert cli.snapshot_ids("data") == [first["snapshot"], second["snapshot"]]

    pruned = cli.json("prune", "data")
    assert pruned["forget"] == [first["snapshot"]]
    assert cli.snapshot_ids("data") == [second["snapshot"]]
    target2 = tmp_path / "restored-after-prune"
    cli.ok("restore", "data", "--target", str(target2))
    assert capture(target2 / str(src).lstrip("/")) == state

    drill = cli.run("drill", "data", "--json")
    assert drill.returncode == 0, drill.stderr.decode(errors="replace")
    out = json.loads(drill.stdout)
    assert out["snapshot"] == second["snapshot"] and out["files_checked"] >= 2
    _no_secret(cli, drill)


def test_command_job(cli: Cli, tmp_path: Path) -> None:
    # A dump of several parts, with a header from printf, so the dump goes up as a multipart upload.
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(BIG))
    cli.job("dump", type="command", retention={"keep_last": 1},
            command=["sh", "-c", f"printf 'dump of %s\\n' test; cat '{payload}'"])
    expected = b"dump of test\n" + payload.read_bytes()

    first = cli.json("run", "dump")
    assert first["status"] == "success" and first["bytes_raw"] == len(expected)
    assert cli.snapshot_ids("dump") == [first["snapshot"]]
    assert cli.ok("restore", "dump", "--target", "-").stdout == expected
    cli.ok("check", "dump", "--read-data")

    time.sleep(1.1)
    second = cli.json("run", "dump")
    assert second["status"] == "success" and second["snapshot"] != first["snapshot"]
    assert cli.snapshot_ids("dump") == [first["snapshot"], second["snapshot"]]

    pruned = cli.json("prune", "dump")
    assert pruned["forget"] == [first["snapshot"]]
    assert cli.snapshot_ids("dump") == [second["snapshot"]]
    assert cli.ok("restore", "dump", "--target", "-").stdout == expected

    drill = cli.run("drill", "dump", "--json")
    assert drill.returncode == 0, drill.stderr.decode(errors="replace")
    assert json.loads(drill.stdout)["bytes_checked"] >= len(expected) // 2


def test_a_small_command_job(cli: Cli) -> None:
    """The plain case: a one-line dump from printf, a single PUT."""
    cli.job("small", type="command", command=["printf", "%s\\n", "hello from printf"])
    out = cli.json("run", "small")
    assert out["status"] == "success"
    assert cli.ok("restore", "small", "--target", "-").stdout == b"hello from printf\n"
    cli.ok("check", "small", "--read-data")
    cli.ok("drill", "small")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_configs_imds_endpoint_serves_the_instance_profile_too(moto: SigMoto, tmp_path: Path, host: str) -> None:
    """aws.imds_endpoint in the config, nothing in the environment: the credentials come from that
    metadata service as well, not only the instance's identity. On an IPv6-only subnet that is
    http://[fd00:ec2::254] (here [::1]); the link-local IPv4 address does not answer there."""
    served = CredentialImds(moto.role_name, moto.assume_role)
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(served.serve(host))
        except OSError as exc:  # pragma: no cover - a machine without IPv6 on loopback
            pytest.skip(f"cannot listen on {host}: {exc}")
        cli = _cli(moto, tmp_path, _env(tmp_path))
        cli.data["aws"] = {"imds_endpoint": url + "/"}
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.txt").write_text("hello\n")
        cli.job("data", type="files", paths=[str(src)])
        cli.job("dump", type="command", command=["printf", "%s", "dumped"])

        assert cli.json("run", "data")["status"] == "success"
        assert cli.json("run", "dump")["status"] == "success"
        assert cli.ok("restore", "dump", "--target", "-").stdout == b"dumped"
        target = tmp_path / "restored"
        cli.ok("restore", "data", "--target", str(target))
        assert (target / str(src).lstrip("/") / "a.txt").read_text() == "hello\n"
        assert served.fetches


@pytest.mark.parametrize(("wrong", "named"), [("secret", "SignatureDoesNotMatch"), ("key-id", "InvalidAccessKeyId")])
def test_wrong_static_keys_fail_in_one_line_without_the_secret(moto: SigMoto, tmp_path: Path, wrong: str,
                                                               named: str) -> None:
    key_id = moto.user.access_key if wrong == "secret" else "NOSUCHKEYIDFORTESTS0"
    cli = _cli(moto, tmp_path, _env(tmp_path, AWS_EC2_METADATA_DISABLED="true"),
               access_key_id=key_id, secret_access_key=WRONG_SECRET if wrong == "secret" else moto.user.secret_key)
    cli.data["log_level"] = "WARNING"  # INFO adds a "job ...: starting" log line
    src = tmp_path / "src"
    _make_tree(src)
    cli.job("data", type="files", paths=[str(src)])
    cli.job("dump", type="command", command=["printf", "x"])
    for args in (("run", "data"), ("run", "data", "--json"), ("run", "dump", "--json"), ("snapshots", "data"),
                 ("restore", "data", "--target", str(tmp_path / "r")), ("check", "data", "--read-data"),
                 ("prune", "data"), ("drill", "data")):
        proc = cli.run(*args)
        stderr = proc.stderr.decode(errors="replace")
        assert proc.returncode == 1, (args, proc.returncode, stderr)  # CONTRACT: the job failed
        assert "Traceback" not in stderr, (args, stderr)
        _no_secret(cli, proc)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, stderr)
        assert lines[0].startswith("backup-agent: ") and named in lines[0] and cli.bucket in lines[0], (args, stderr)
        if "--json" in args:
            out = json.loads(proc.stdout)
            assert out["status"] == "failed" and out["snapshot"] is None
            assert named in out["error"] and "\n" not in out["error"]
    assert not (tmp_path / "r").exists()
    # Nothing half-done is visible as a snapshot: with the right keys the jobs have none.
    (tmp_path / "good").mkdir()
    good = _cli(moto, tmp_path / "good", _env(tmp_path, AWS_EC2_METADATA_DISABLED="true"),
                access_key_id=moto.user.access_key, secret_access_key=moto.user.secret_key)
    good.data["storage"]["bucket"] = cli.bucket
    good.job("data", type="files", paths=[str(src)])
    good.job("dump", type="command", command=["printf", "x"])
    assert good.snapshot_ids("data") == [] and good.snapshot_ids("dump") == []
