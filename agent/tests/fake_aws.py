"""Stand-ins for the AWS parts an EC2 node talks to, all real HTTP on loopback.

- MotoServer: moto's EC2 API in its own process (`moto_server`), reset between tests.
- FaultProxy: sits in front of it and can throttle (RequestLimitExceeded) or delay chosen actions,
  and records every action called, so tests see exactly which API calls the agent made.
- ImdsServer: the instance metadata service, IMDSv2 (token required) or IMDSv1-only.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import requests

MOTO = str(Path(sys.executable).parent / "moto_server")
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        # Without the default AMI catalogue moto starts faster and DescribeImages shows only ours.
        env = {**os.environ, **CREDS, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"}
        self.proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("moto_server did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def reset(self) -> None:
        requests.post(self.url + "/moto-api/reset", timeout=10).raise_for_status()

    def client(self, region: str = REGION) -> Any:
        return boto3.client("ec2", endpoint_url=self.url, region_name=region, aws_access_key_id="testing",
                            aws_secret_access_key="testing")


_shared: MotoServer | None = None


def shared_moto() -> MotoServer:
    """One moto server per test process: its first EC2 call costs seconds, so modules share it."""
    global _shared
    if _shared is None:
        server = MotoServer().__enter__()
        atexit.register(server.__exit__, None, None, None)
        server.client().describe_regions()  # pay the EC2 backend's start-up once, here
        _shared = server
    return _shared


@dataclass
class Node:
    """An instance with a root volume and two data volumes, as moto sees it."""

    instance_id: str
    zone: str
    root: str
    data1: str
    data2: str

    @property
    def all(self) -> list[str]:
        return [self.root, self.data1, self.data2]


def make_node(ec2: Any) -> Node:
    # moto reports /dev/sda1 as every instance's root device name, so the root mapping uses it.
    inst = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                             BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}])
    inst = inst["Instances"][0]
    iid, zone = inst["InstanceId"], inst["Placement"]["AvailabilityZone"]
    root = inst["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    data = []
    for device, name in (("/dev/sdf", "data1"), ("/dev/sdg", "data2")):
        vol = ec2.create_volume(Size=4, AvailabilityZone=zone,
                                TagSpecifications=[{"ResourceType": "volume",
                                                    "Tags": [{"Key": "Name", "Value": name}]}])
        ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=iid, Device=device)
        data.append(vol["VolumeId"])
    return Node(iid, zone, root, data[0], data[1])


# --- fault-injecting proxy ---------------------------------------------------------------------

def ec2_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>fake</RequestID></Response>").encode()


THROTTLED = ec2_error("RequestLimitExceeded", "Request limit exceeded.")


@dataclass
class FaultProxy:
    upstream: str
    calls: list[tuple[str, str]] = field(default_factory=list)  # (action, region)
    throttles: dict[str, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)  # actions answered with UnauthorizedOperation
    closed: bool = False

    def actions(self, name: str | None = None) -> list[str]:
        return [a for a, _ in self.calls if name is None or a == name]

    @contextmanager
    def serve(self) -> Iterator[str]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = urllib.parse.parse_qs(body.decode()).get("Action", ["?"])[0]
                auth = self.headers.get("Authorization", "")
                region = auth.split("Credential=")[1].split("/")[2] if "Credential=" in auth else "?"
                proxy.calls.append((action, region))
                if proxy.throttles.get(action, 0) > 0:
                    proxy.throttles[action] -= 1
                    self._reply(503, THROTTLED, "text/xml")
                    return
                if action in proxy.denied:
                    self._reply(403, ec2_error("UnauthorizedOperation", f"You are not authorized to {action}."),
                                "text/xml")
                    return
                until = time.monotonic() + proxy.delays.get(action, 0)
                while time.monotonic() < until and not proxy.closed:
                    time.sleep(0.02)
                if proxy.closed:  # the test is over: a late request must not reach the next test's moto
                    self._reply(503, ec2_error("Unavailable", "proxy closed"), "text/xml")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                up = requests.post(proxy.upstream + self.path, data=body, headers=headers, timeout=60)
                self._reply(up.status_code, up.content, up.headers.get("Content-Type", "text/xml"))

            def _reply(self, status: int, body: bytes, ctype: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the agent gave up on this request (SIGTERM, timeout): nothing to tell it

        with _serving(Handler) as url:
            try:
                yield url
            finally:
                self.closed = True


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- instance metadata ---------------------------------------------------------------------------

@dataclass
class ImdsServer:
    """IMDS on loopback. mode "v2": tokens required (token-less GET → 401); "v1": no token endpoint."""

    instance_id: str
    region: str
    zone: str
    mode: str = "v2"
    document: bool = True
    tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with HTTP 500 first

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def meta(self) -> dict[str, str]:
        return {
            "instance-id": self.instance_id,
            "placement/region": self.region,
            "placement/availability-zone": self.zone,
            "block-device-mapping/": "ami\nebs1\nebs2\nroot",
            "block-device-mapping/ami": "/dev/sda1",
            "block-device-mapping/root": "/dev/sda1",
            "block-device-mapping/ebs1": "sdf",
            "block-device-mapping/ebs2": "sdg",
        }

    @contextmanager
    def serve(self) -> Iterator[str]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, text: str = "") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _failing(self) -> bool:
                imds.requests.append((self.command, self.path, dict(self.headers.items())))
                if imds.fail_next > 0:
                    imds.fail_next -= 1
                    self._reply(500, "busy")
                    return True
                return False

            def do_PUT(self) -> None:
                if self._failing():
                    return
                if imds.mode != "v2" or self.path != "/latest/api/token":
                    self._reply(404 if imds.mode == "v1" else 405)
                    return
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400, "missing TTL")
                    return
                token = secrets.token_hex(16)
                imds.tokens.add(token)
                self._reply(200, token)

            def do_GET(self) -> None:
                if self._failing():
                    return
                if imds.mode == "v2" and self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    self._reply(401)
                    return
                if self.path == "/latest/dynamic/instance-identity/document" and imds.document:
                    self._reply(200, json.dumps({"instanceId": imds.instance_id, "region": imds.region,
                                                 "availabilityZone": imds.zone, "accountId": "123456789012"}))
                    return
                value = imds.meta().get(self.path.removeprefix("/latest/meta-data/"))
                if self.path.startswith("/latest/meta-data/") and value is not None:
                    self._reply(200, value)
                else:
                    self._reply(404)

        with _serving(Handler) as url:
            yield url


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connection refused at once."""
    return f"http://127.0.0.1:{free_port()}"


# --- an agent config pointing at all of the above ------------------------------------------------

AGENT = str(Path(sys.executable).parent / "backup-agent")


@dataclass
class EbsEnv:
    """A node in moto (reached through a FaultProxy), its IMDS, and a config file for the agent."""

    moto: MotoServer
    ec2: Any  # straight to moto, for the test's own looks
    node: Node
    proxy: FaultProxy
    imds: ImdsServer
    path: Path
    data: dict[str, Any]

    def write(self) -> None:
        import yaml

        self.path.write_text(yaml.safe_dump(self.data))

    def job(self, name: str, **spec: Any) -> None:
        self.data["jobs"][name] = {"type": "ebs_snapshot", **spec}
        self.write()

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENT, "-c", str(self.path), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **CREDS, **(env or {})})

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def runner(self, name: str, **kw: Any) -> Any:
        """The job in-process (same config, same HTTP endpoints), for injected clocks and sysfs."""
        from backup_agent import config
        from backup_agent.jobs.ebs import EbsSnapshotJob

        cfg = config.load(str(self.path))
        return EbsSnapshotJob(cfg, cfg.job(name), **kw)

    def snapshots(self, **filters: str) -> list[dict[str, Any]]:
        f = [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]
        return self.ec2.describe_snapshots(OwnerIds=["self"], Filters=f)["Snapshots"]  # type: ignore[no-any-return]


@contextmanager
def ebs_env(moto: MotoServer, tmp_path: Path) -> Iterator[EbsEnv]:
    moto.reset()
    ec2 = moto.client()
    node = make_node(ec2)
    proxy = FaultProxy(moto.url)
    imds = ImdsServer(node.instance_id, REGION, node.zone)
    with proxy.serve() as proxy_url, imds.serve() as imds_url:
        data: dict[str, Any] = {
            "node": "web-01",
            "environment": "test",
            "log_level": "WARNING",
            "state_dir": str(tmp_path / "state"),
            "storage": {"bucket": "unused-by-ebs-jobs", "region": REGION},
            "aws": {"ec2_endpoint_url": proxy_url, "imds_endpoint": imds_url},
            "jobs": {},
        }
        env = EbsEnv(moto, ec2, node, proxy, imds, tmp_path / "config.yaml", data)
        env.write()
        yield env
