"""The test bench of the reliability suite: a config pointing at the fault proxy, the real CLI,
SIGKILL at a held request, and verification of snapshots straight against SeaweedFS."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from support.faultproxy import FaultProxy, Hold
from support.seaweedfs import SeaweedFS
from support.treeutil import Tree, capture
from support.waiting import wait_for

AGENT = str(Path(sys.executable).parent / "backup-agent")
NODE = "rel-node"

def diff(expected: Tree, got: Tree) -> str:
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    changed = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])[:5]
    return f"missing {missing}, unexpected {extra}, different {changed}"


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The user-facing error of a failed command: one `backup-agent: ...` line, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("backup-agent:")]
    assert len(lines) == 1, proc.stderr
    assert not lines[0].startswith("backup-agent: internal error"), lines[0]
    return lines[0]


@dataclasses.dataclass
class Lab:
    seaweed: SeaweedFS
    proxy: FaultProxy
    tmp: Path
    bucket: str
    s3: Any
    path: Path
    data: dict[str, Any]
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, seaweed: SeaweedFS, proxy: FaultProxy, tmp: Path) -> Lab:
        bucket = f"rel-{uuid.uuid4().hex[:16]}"
        s3 = seaweed.client()
        s3.create_bucket(Bucket=bucket)
        data: dict[str, Any] = {
            "node": NODE,
            "environment": "reliability",
            "state_dir": str(tmp / "state"),
            "log_level": "INFO",
            "storage": {
                "bucket": bucket,
                "endpoint_url": proxy.url,
                "access_key_id": seaweed.access_key,
                "secret_access_key": seaweed.secret_key,
            },
            "jobs": {},
        }
        lab = cls(seaweed, proxy, tmp, bucket, s3, tmp / "config.yaml", data)
        lab.write()
        return lab

    # --- config ------------------------------------------------------------------------------

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.data))
        self.path.chmod(0o600)

    def job(self, name: str, **spec: Any) -> None:
        self.data["jobs"][name] = spec
        self.write()

    def storage(self, **changes: Any) -> None:
        self.data["storage"].update(changes)
        self.write()

    @property
    def state_dir(self) -> Path:
        return Path(self.data["state_dir"])

    # --- the CLI -----------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
            user: int | None = None) -> subprocess.CompletedProcess[str]:
        argv = [AGENT, "-c", str(self.path), *args]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode in (0, 3), proc.stderr
        return json.loads(proc.stdout)

    def popen(self, *args: str, log: str = "agent.log", out: str | None = None) -> subprocess.Popen[bytes]:
        """The agent in the background; stderr to `log`, stdout to `out` (both under tmp) if given."""
        with open(self.tmp / log, "wb") as err, open(self.tmp / out if out else os.devnull, "wb") as stdout:
            proc = subprocess.Popen([AGENT, "-c", str(self.path), *args], stdout=stdout, stderr=err)
        self.procs.append(proc)
        return proc

    def log(self, name: str = "agent.log") -> str:
        return (self.tmp / name).read_text(errors="replace")

    def kill_at(self, proc: subprocess.Popen[bytes], hold: Hold, timeout: float = 90) -> None:
        """SIGKILL `proc` while the proxy holds its request; then drop the held connection."""
        wait_for(lambda: hold.reached.is_set() or proc.poll() is not None, timeout, "the held request")
        assert hold.reached.is_set(), f"the agent exited ({proc.returncode}) before the kill point:\n{self.log()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        hold.release()
        self.proxy.clear()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.proxy.clear()

    # --- the bucket, straight from SeaweedFS -------------------------------------------------

    def object_keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def snapshot_ids(self, job: str) -> list[str]:
        keys = self.object_keys(f"{NODE}/{job}/snapshots/")
        return sorted(k.rsplit("/", 1)[1].removesuffix(".json.gz") for k in keys)

    def verifier(self, job: str, config_path: Path | None = None) -> Any:
        """The files job in this process, straight to SeaweedFS, with a state_dir of its own."""
        from backup_agent import config
        from backup_agent.jobs.files import FilesJob
        from backup_agent.storage.s3_boto import BotoStore

        cfg = config.load(str(config_path or self.path))
        storage = dataclasses.replace(cfg.storage, endpoint_url=self.seaweed.endpoint_url)
        cfg = dataclasses.replace(cfg, storage=storage, state_dir=self.tmp / "verifier-state")
        return FilesJob(cfg, cfg.job(job), store=BotoStore(storage))

    def check(self, job: str, config_path: Path | None = None) -> int:
        """`check --read-data` of every listed snapshot; returns how many were verified."""
        out = self.verifier(job, config_path).check(read_data=True)
        assert out["status"] == "ok", out
        return int(out["snapshots_checked"])

    def assert_restores(self, job: str, src: Path, states: dict[str, Tree]) -> int:
        """Restore each snapshot into a fresh directory; it must equal the tree it captured."""
        runner = self.verifier(job)
        for sid, state in states.items():
            target = self.tmp / f"restore-{uuid.uuid4().hex[:8]}"
            runner.restore(snapshot=sid, at=None, target=str(target), paths=[])
            got = capture(target / str(src).lstrip("/"))
            assert got == state, f"snapshot {sid} does not restore to the tree it captured: {diff(state, got)}"
            with contextlib.suppress(OSError):
                subprocess.run(["rm", "-rf", str(target)], check=False)
        return len(states)
