"""The Glacier cold tier against moto in server mode, over HTTP like AWS.

SeaweedFS has no Glacier semantics; moto refuses GETs of GLACIER/DEEP_ARCHIVE objects
(InvalidObjectState) until RestoreObject and reports `x-amz-restore` on HEAD. How long a restore
takes is moto's "s3::keyrestore" state transition, which these tests drive through moto's own
state-manager API (`Moto.hold` / `Moto.release`): that plays the role of S3's clock, nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
import yaml
from botocore.config import Config as BotoConfig
from support.contentkeys import content_keys, runner_for
from support.seaweedfs import free_port
from support.treeutil import capture

from backup_agent import cli
from backup_agent.storage import cold

AGENT = str(Path(sys.executable).parent / "backup-agent")
FROZEN = {"progression": "manual", "times": 10**9}


class Moto:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing",
                               config=BotoConfig(s3={"addressing_style": "path"}))

    def transition(self, transition: dict[str, Any] | None) -> None:
        action = "set-transition" if transition else "unset-transition"
        body: dict[str, Any] = {"model_name": "s3::keyrestore"}
        if transition:
            body["transition"] = transition
        requests.post(f"{self.endpoint}/moto-api/state-manager/{action}", data=json.dumps(body),
                      timeout=10).raise_for_status()

    def _settle(self, bucket: str, keys: list[str], transition: dict[str, Any]) -> None:
        # moto moves a key's restore one step when it is looked at under a transition that allows it
        self.transition(transition)
        for key in keys:
            self.s3.head_object(Bucket=bucket, Key=key)
        self.transition(FROZEN)

    def hold(self, bucket: str, keys: list[str]) -> None:
        """S3 is still working on these restores (x-amz-restore: ongoing-request="true")."""
        self._settle(bucket, keys, {"progression": "manual", "times": 1})

    def release(self, bucket: str, keys: list[str]) -> None:
        """These restores have finished: a readable copy exists."""
        self._settle(bucket, keys, {"progression": "immediate"})


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    m = Moto(f"http://127.0.0.1:{port}")
    try:
        yield m
    finally:
        m.transition(None)
        server.stop()


@dataclass
class ColdAgent:
    path: Path
    data: dict[str, Any]
    moto: Moto
    bucket: str
    capsys: Any

    def job(self, name: str, **spec: Any) -> None:
        self.data["jobs"][name] = spec
        self.path.write_text(yaml.safe_dump(self.data))

    def cli(self, *args: str) -> tuple[int, str, str]:
        """The real CLI in this process (fast, and lets a test replace the --wait sleep)."""
        self.capsys.readouterr()
        code = cli.main(["-c", str(self.path), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str, code: int = 0) -> Any:
        rc, out, err = self.cli(*args, "--json")
        assert rc == code, err
        return json.loads(out)

    def data_keys(self, job: str) -> list[str]:
        listed = self.moto.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"node/{job}/").get("Contents", [])
        return sorted(o["Key"] for o in listed if "/snapshots/" not in o["Key"])

    def head(self, key: str) -> dict[str, Any]:
        return dict(self.moto.s3.head_object(Bucket=self.bucket, Key=key))

    def rules(self) -> list[dict[str, Any]]:
        return list(self.moto.s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"])


@pytest.fixture
def ca(moto: Moto, tmp_path: Path, capsys: Any) -> ColdAgent:
    moto.transition(FROZEN)
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    moto.s3.create_bucket(Bucket=bucket)
    data: dict[str, Any] = {
        "node": "node",
        "state_dir": str(tmp_path / "state"),
        "log_level": "INFO",
        "storage": {"bucket": bucket, "endpoint_url": moto.endpoint, "access_key_id": "testing",
                    "secret_access_key": "testing", "large_file_mb": 1, "pack_size_mb": 1, "concurrency": 4},
        "jobs": {},
    }
    a = ColdAgent(tmp_path / "config.yaml", data, moto, bucket, capsys)
    a.path.write_text(yaml.safe_dump(data))
    return a


def files_within(ca: ColdAgent, job: str, keys: set[str]) -> set[str]:
    """The paths of the newest snapshot's files whose content lies entirely in `keys` (a restore
    writes them as soon as those objects are readable)."""
    runner = runner_for(ca.path, job)
    with runner.open_manifest(runner.snapshots()[-1].id) as (_, entries, _):
        return {e.path for e in entries if e.type == "file" and e.size
                and all(runner.root + o in keys for o in e.objects())}


def make_tree(root: Path, large: int = 1) -> None:
    (root / "etc" / "conf.d").mkdir(parents=True)
    for i in range(20):
        (root / "etc" / "conf.d" / f"{i:02}.conf").write_text(f"setting {i}\n" * (i + 1))
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "link").symlink_to("hosts")
    (root / "etc").chmod(0o750)
    for i in range(large):
        # over large_file_mb: chunks, over pack_size_mb: in more than one pack
        (root / f"large-{i}.bin").write_bytes(os.urandom((3 << 19) + i))


def test_deep_archive_restore_asks_once_waits_then_completes(ca: ColdAgent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ca.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE")
    sid = ca.json("run", "cold")["snapshot"]
    data = ca.data_keys("cold")
    n = len(data)  # packs: small files and the large file's chunks
    assert n >= 2 and all(ca.head(k)["StorageClass"] == "DEEP_ARCHIVE" for k in data)
    manifest = f"node/cold/snapshots/{sid}.json.gz"
    assert "StorageClass" not in ca.head(manifest)  # manifests stay STANDARD
    [snap] = ca.json("snapshots", "cold")
    assert snap["storage_class"] == "DEEP_ARCHIVE" and snap["instant_restore"] is False
    assert snap["archived_objects"] == n

    target = tmp_path / "restore"
    # Expedited does not exist for DEEP_ARCHIVE: refused before anything is requested
    rc, _, err = ca.cli("restore", "cold", "--target", str(target), "--tier", "Expedited")
    assert rc == 2 and "not offered for DEEP_ARCHIVE" in err
    assert all("Restore" not in ca.head(k) for k in data)

    first = ca.json("restore", "cold", "--target", str(target), code=75)
    assert first["status"] == "restore_pending" and first["requested_now"] == n
    assert sorted(p["key"] for p in first["pending"]) == sorted(k.removeprefix("node/cold/") for k in data)
    deep = first["by_class"]["DEEP_ARCHIVE"]
    assert deep["tier"] == "Standard" and deep["expected_delay"] == "within 12 hours" and deep["objects"] == n
    assert first["files_restored"] == 0
    assert not [p for p in target.rglob("*") if p.is_file()]
    record = json.loads((tmp_path / "state" / "restores" / "cold.json").read_text())
    assert sorted(record["requests"]) == data
    assert all(r["tier"] == "Standard" and r["days"] == 7 for r in record["requests"].values())

    ca.moto.hold(ca.bucket, data)  # S3 is still restoring
    rc, _, err = ca.cli("restore", "cold", "--target", str(target))
    assert rc == 75
    [line] = [ln for ln in err.splitlines() if ln.startswith("backup-agent:")]
    assert f"{n} object(s)" in line and "DEEP_ARCHIVE" in line and "within 12 hours" in line
    assert f"restore requested now for 0, earlier for {n}" in line and "--wait" in line

    ca.moto.release(ca.bucket, data)
    done = ca.json("restore", "cold", "--target", str(target))
    assert done["restores_requested"] == 0 and done["archived_objects"] == n
    assert capture(target / str(src).lstrip("/")) == capture(src)
    assert not (tmp_path / "state" / "restores" / "cold.json").exists()


def test_restore_interrupted_half_way_resumes(ca: ColdAgent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, large=2)
    ca.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE", restore_tier="Bulk")
    ca.json("run", "cold")
    data = ca.data_keys("cold")
    target = tmp_path / "restore"
    assert ca.json("restore", "cold", "--target", str(target), code=75)["requested_now"] == len(data)
    small_pack = content_keys(ca.path, "cold", f"{src}/etc/hosts")  # where the small files went
    ca.moto.hold(ca.bucket, data)
    ca.moto.release(ca.bucket, small_pack)  # S3 finished that one
    # The files with all their content in it; never a large file: 1.5 MiB spans two 1 MiB packs.
    whole = files_within(ca, "cold", set(small_pack))
    assert f"{src}/etc/hosts" in whole and not {f"{src}/large-0.bin", f"{src}/large-1.bin"} & whole

    half = ca.json("restore", "cold", "--target", str(target), code=75)
    assert half["requested_now"] == 0 and half["files_restored"] == len(whole)
    assert half["objects_pending"] == len(data) - 1
    assert half["by_class"]["DEEP_ARCHIVE"]["tier"] == "Bulk"
    restored = target / str(src).lstrip("/")
    assert (restored / "etc" / "hosts").read_bytes() == (src / "etc" / "hosts").read_bytes()
    assert not (restored / "large-0.bin").exists() and not (restored / "large-1.bin").exists()

    ca.moto.release(ca.bucket, data)
    done = ca.json("restore", "cold", "--target", str(target))
    before = sum(Path(p).stat().st_size for p in whole)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())
    assert done["files_already_restored"] == len(whole) and done["bytes"] == total - before  # not downloaded twice
    assert done["restores_requested"] == 0
    assert capture(restored) == capture(src)


def test_a_resumed_restore_takes_nothing_beyond_a_planted_link_for_restored(ca: ColdAgent, tmp_path: Path) -> None:
    """Between two passes, the target's first directory becomes a link to a copy outside whose
    etc/hosts has the restored size and mtime but other bytes: the next pass must not count it
    as restored (a look-up through the link did), nor write there."""
    src = tmp_path / "src"
    make_tree(src, large=2)
    ca.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE", restore_tier="Bulk")
    ca.json("run", "cold")
    data = ca.data_keys("cold")
    target = tmp_path / "restore"
    ca.json("restore", "cold", "--target", str(target), code=75)
    ca.moto.hold(ca.bucket, data)
    small_pack = content_keys(ca.path, "cold", f"{src}/etc/hosts")
    ca.moto.release(ca.bucket, small_pack)
    whole = files_within(ca, "cold", set(small_pack))
    assert ca.json("restore", "cold", "--target", str(target), code=75)["files_restored"] == len(whole)
    first = str(src).lstrip("/").split("/")[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / first).rename(outside / first)
    (target / first).symlink_to(outside / first)
    fake = outside / str(src).lstrip("/") / "etc" / "hosts"
    st = fake.stat()
    fake.write_bytes(b"x" * st.st_size)
    os.utime(fake, ns=(st.st_mtime_ns, st.st_mtime_ns))
    before = capture(outside)

    ca.moto.release(ca.bucket, data)
    done = ca.json("restore", "cold", "--target", str(target))

    assert done["files_already_restored"] == 0
    assert capture(outside) == before
    assert not (target / first).is_symlink()
    assert capture(target / str(src).lstrip("/")) == capture(src)


def test_wait_polls_with_backoff_and_a_killed_wait_resumes(ca: ColdAgent, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ca.job("cold", type="files", paths=[str(src)], storage_class="GLACIER", restore_tier="Bulk")
    ca.json("run", "cold")
    data = ca.data_keys("cold")
    target = tmp_path / "restore"

    # a --wait run killed while it waits (Ctrl-C, reboot, ssh gone) ...
    proc = subprocess.Popen([AGENT, "-c", str(ca.path), "restore", "cold", "--target", str(target), "--wait",
                             "--tier", "Standard", "--days", "2"], stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(60, proc.kill)
    guard.start()
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if f"waiting for {len(data)} archived object(s)" in line:
                break
        else:
            pytest.fail("restore --wait never waited: " + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        guard.cancel()
    record = json.loads((tmp_path / "state" / "restores" / "cold.json").read_text())
    assert sorted(record["requests"]) == data
    assert {(r["tier"], r["days"]) for r in record["requests"].values()} == {("Standard", 2)}

    # ... is resumed by the next one: nothing asked twice, polled with growing intervals
    ca.moto.hold(ca.bucket, data)
    sleeps: list[float] = []

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            ca.moto.release(ca.bucket, data)

    monkeypatch.setattr(cold, "_sleep", fake_sleep)
    done = ca.json("restore", "cold", "--target", str(target), "--wait")
    assert done["restores_requested"] == 0
    assert sleeps == [cold.FIRST_POLL, 2 * cold.FIRST_POLL, 4 * cold.FIRST_POLL]
    assert capture(target / str(src).lstrip("/")) == capture(src)
    assert not (tmp_path / "state" / "restores" / "cold.json").exists()


def test_prune_and_check_on_cold_data_need_no_retrieval(ca: ColdAgent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ca.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE", retention={"keep_last": 1})
    ca.job("warm", type="files", paths=[str(src / "etc")])
    ca.json("run", "cold")
    (src / "large-0.bin").write_bytes(os.urandom(3 << 19))
    (src / "etc" / "hosts").write_text("10.0.0.1 changed\n")
    time.sleep(1.1)  # snapshot ids have second resolution
    ca.json("run", "cold")
    stored = ca.data_keys("cold")
    runner = runner_for(ca.path, "cold")
    kept = {runner.root + o for o in runner.referenced_objects(runner.snapshots()[-1].id)}
    only_old = [k for k in stored if k not in kept]  # packs of the old large-0.bin no kept file uses
    assert only_old

    assert ca.json("check", "cold")["snapshots_checked"] == 2
    pruned = ca.json("prune", "cold")
    # the old large-0.bin's own packs go; a pack that also holds kept files' content stays
    assert len(pruned["forget"]) == 1 and pruned["objects_deleted"] == len(only_old)
    assert pruned["objects_deleted_early"] == len(only_old)  # DEEP_ARCHIVE bills 180 days whatever happens
    assert ca.json("check", "cold")["status"] == "ok"
    data = ca.data_keys("cold")
    assert sorted(data) == sorted(kept) and all("Restore" not in ca.head(k) for k in data)  # nothing retrieved

    # reading the data back does need a retrieval: check --read-data asks like restore does
    asked = ca.json("check", "cold", "--read-data", code=75)
    assert asked["requested_now"] == len(data) and asked["status"] == "restore_pending"
    ca.moto.release(ca.bucket, data)
    assert ca.json("check", "cold", "--read-data")["status"] == "ok"

    ca.json("run", "warm")
    [warm] = ca.json("snapshots", "warm")
    assert warm["storage_class"] == "STANDARD" and warm["instant_restore"] is True


def test_lifecycle_rules_merge_with_user_rules_idempotently(ca: ColdAgent, tmp_path: Path) -> None:
    user_rules = [
        {"ID": "expire-logs", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 30}},
        # another node sharing the bucket owns its own rules
        {"ID": "backup-agent-other/etc/packs", "Filter": {"Prefix": "other/etc/packs/"}, "Status": "Enabled",
         "Transitions": [{"Days": 5, "StorageClass": "GLACIER"}]},
        # a user's rule that would archive our manifests too: kept, but warned about
        {"ID": "archive-node", "Filter": {"Prefix": "node/"}, "Status": "Enabled",
         "Transitions": [{"Days": 400, "StorageClass": "DEEP_ARCHIVE"}]},
    ]
    ca.moto.s3.put_bucket_lifecycle_configuration(Bucket=ca.bucket, LifecycleConfiguration={"Rules": user_rules})
    ca.job("etc", type="files", paths=[str(tmp_path)], transition_days=30, transition_class="DEEP_ARCHIVE")
    ca.job("db", type="command", command=["true"], transition_days=60)
    ca.job("plain", type="files", paths=[str(tmp_path)])

    def lifecycle(*args: str) -> dict[str, Any]:
        plan = ca.json("bucket", "setup", *args)
        return next(s for s in plan["steps"] if s["step"] == "lifecycle rules")

    dry = lifecycle("--dry-run")
    assert dry["result"].startswith("would change")
    assert {d["rule"]: d["change"] for d in dry["diff"]} == {
        "backup-agent-node-housekeeping": "add", "backup-agent-node/db/dumps": "add",
        "backup-agent-node/etc/packs": "add", "backup-agent-node/etc/files": "add",
        "backup-agent-node/etc/blobs": "add"}
    assert sorted(dry["kept"]) == sorted(r["ID"] for r in user_rules)
    assert len(dry["warnings"]) == 3 and all("archive-node" in w for w in dry["warnings"])
    assert ca.rules() == user_rules  # a dry run changes nothing

    assert lifecycle()["result"].startswith("changed")
    rules = {r["ID"]: r for r in ca.rules()}
    assert all(rules[r["ID"]] == r for r in user_rules)
    assert rules["backup-agent-node/etc/packs"]["Filter"] == {"Prefix": "node/etc/packs/"}
    assert rules["backup-agent-node/etc/packs"]["Transitions"] == [{"Days": 30, "StorageClass": "DEEP_ARCHIVE"}]
    assert rules["backup-agent-node/db/dumps"]["Transitions"] == [{"Days": 60, "StorageClass": "GLACIER"}]
    assert not any("snapshots" in str(r.get("Filter")) for r in rules.values())
    applied = ca.rules()

    again = lifecycle()
    assert again["result"].startswith("already set") and again["diff"] == []
    assert ca.rules() == applied

    ca.job("etc", type="files", paths=[str(tmp_path)], transition_days=90, transition_class="DEEP_ARCHIVE")
    del ca.data["jobs"]["db"]
    ca.job("plain", type="files", paths=[str(tmp_path)])
    changes = {d["rule"]: d["change"] for d in lifecycle("--dry-run")["diff"]}
    assert changes == {"backup-agent-node/etc/packs": "update", "backup-agent-node/etc/files": "update",
                       "backup-agent-node/etc/blobs": "update", "backup-agent-node/db/dumps": "remove"}
    lifecycle()
    rules = {r["ID"]: r for r in ca.rules()}
    assert "backup-agent-node/db/dumps" not in rules and "backup-agent-other/etc/packs" in rules
    assert rules["backup-agent-node/etc/files"]["Transitions"] == [{"Days": 90, "StorageClass": "DEEP_ARCHIVE"}]


def test_transition_must_go_colder(ca: ColdAgent, tmp_path: Path) -> None:
    ca.job("etc", type="files", paths=[str(tmp_path)], storage_class="DEEP_ARCHIVE", transition_days=30)
    rc, _, err = ca.cli("validate")
    assert rc == 2 and "jobs.etc.transition_class: GLACIER is not colder than storage_class DEEP_ARCHIVE" in err
    ca.job("etc", type="files", paths=[str(tmp_path)], transition_days=10, transition_class="STANDARD_IA")
    rc, _, err = ca.cli("validate")
    assert rc == 2 and "jobs.etc.transition_days" in err and len(err.strip().splitlines()) == 1


def test_store_without_archive_semantics_restores_directly(agent: Any, tmp_path: Path) -> None:
    # SeaweedFS keeps DEEP_ARCHIVE as a label and answers RestoreObject with MethodNotAllowed
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    agent.job("cold", type="files", paths=[str(src)], storage_class="DEEP_ARCHIVE")
    agent.json("run", "cold")
    target = tmp_path / "restore"
    proc = agent.run("restore", "cold", "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert (target / str(src).lstrip("/") / "a.txt").read_text() == "a\n"
