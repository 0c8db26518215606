"""Fixtures shared by the agent's tests: one real SeaweedFS per test session, a fresh bucket
and config per test, and a helper that runs the real `backup-agent` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_aws import CREDS, EbsEnv, ebs_env, shared_moto
from support.seaweedfs import SeaweedFS

AGENT = str(Path(sys.executable).parent / "backup-agent")


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    with SeaweedFS() as s:
        yield s


@dataclass
class Agent:
    """A config file pointing at a fresh bucket, and a way to call the CLI with it."""

    path: Path
    data: dict[str, Any]
    s3: Any
    bucket: str

    def write(self, **changes: Any) -> None:
        self.data.update(changes)
        self.path.write_text(yaml.safe_dump(self.data))

    def job(self, name: str, **spec: Any) -> None:
        self.data.setdefault("jobs", {})[name] = spec
        self.write()

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
            input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AGENT, "-c", str(self.path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode in (0, 3), proc.stderr
        return json.loads(proc.stdout)

    def object_keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


@pytest.fixture
def agent(seaweed: SeaweedFS, tmp_path: Path) -> Agent:
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3 = seaweed.client()
    s3.create_bucket(Bucket=bucket)
    data = {
        "node": "test-node",
        "environment": "test",
        "state_dir": str(tmp_path / "state"),
        "log_level": "INFO",
        "storage": {
            "bucket": bucket,
            "endpoint_url": seaweed.endpoint_url,
            "access_key_id": seaweed.access_key,
            "secret_access_key": seaweed.secret_key,
        },
        "jobs": {},
    }
    a = Agent(tmp_path / "config.yaml", data, s3, bucket)
    a.write()
    return a


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EbsEnv]:
    """moto's EC2 in server mode plus a loopback IMDSv2, for ebs_snapshot jobs."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    with ebs_env(shared_moto(), tmp_path) as env:
        yield env


@pytest.fixture
def gear_hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the blocks given to the chunker's gear hash (Chunker._candidates) from now on."""
    from backup_agent.storage.chunker import Chunker

    hashed: list[int] = []
    real = Chunker._candidates

    def counting(self: Chunker, tail: bytes, block: bytes, base: int) -> tuple[list[int], list[int]]:
        hashed.append(len(block))
        return real(self, tail, block, base)

    monkeypatch.setattr(Chunker, "_candidates", counting)
    return hashed
