"""S3 servers for the store contract tests, all real HTTP on loopback.

- SigMoto: moto server with signature checking on: an IAM user with an access key, a role it may
  assume, and `reset-auth`, so wrong keys get SignatureDoesNotMatch/InvalidAccessKeyId.
- CredentialImds: an IMDSv2 that serves an instance profile's role credentials (from
  sts:AssumeRole, which moto accepts once auth is on), as EC2's does.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import requests
from fake_aws import MotoServer, free_port

REGION = "us-east-1"
S3_ALL = json.dumps({"Version": "2012-10-17",
                     "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:*"], "Resource": "*"}]})
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]})


@dataclass
class Keys:
    access_key: str
    secret_key: str
    token: str | None = None
    expiration: str = ""


@dataclass
class SigMoto:
    """moto_server with IAM-checked signatures; `user` keys and `role` credentials."""

    server: MotoServer
    user: Keys
    role_name: str
    role_arn: str

    @property
    def url(self) -> str:
        return self.server.url

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=self.user.access_key, aws_secret_access_key=self.user.secret_key)

    role_keys: Keys = field(default_factory=lambda: Keys("", ""))

    def assume_role(self) -> Keys:
        """The role's temporary credentials (taken before auth was switched on: moto's policy
        check refuses sts:AssumeRole to a user even with an allowing policy; the credentials it
        issued stay valid)."""
        return self.role_keys


def _assume(url: str, user: Keys, role_arn: str) -> Keys:
    sts = boto3.client("sts", endpoint_url=url, region_name=REGION,
                       aws_access_key_id=user.access_key, aws_secret_access_key=user.secret_key)
    c = sts.assume_role(RoleArn=role_arn, RoleSessionName="backup-agent-test", DurationSeconds=3600)["Credentials"]
    return Keys(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"],
                c["Expiration"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


@contextmanager
def sig_moto() -> Iterator[SigMoto]:
    with MotoServer() as server:
        iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="backup-agent")
        iam.put_user_policy(UserName="backup-agent", PolicyName="s3", PolicyDocument=S3_ALL)
        key = iam.create_access_key(UserName="backup-agent")["AccessKey"]
        role = iam.create_role(RoleName="backup-node", AssumeRolePolicyDocument=TRUST)["Role"]
        iam.put_role_policy(RoleName="backup-node", PolicyName="s3", PolicyDocument=S3_ALL)
        user = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        role_keys = _assume(server.url, user, role["Arn"])
        requests.post(server.url + "/moto-api/reset-auth", data=b"0",
                      headers={"Content-Type": "text/plain"}, timeout=10).raise_for_status()
        yield SigMoto(server, user, "backup-node", role["Arn"], role_keys)


@dataclass
class CredentialImds:
    """IMDSv2 on loopback serving an instance profile's role credentials (`creds()` is called
    per request, so a test can rotate them); `fetches` counts credential documents served.

    HTTP/1.1 with keep-alive, as EC2's service is: a server that closes every connection makes
    awscrt's IMDS client retry each request on a new connection, with a backoff pause that is
    an artefact of the fake, not of the agent (it cost ~0.4 s per process)."""

    role: str
    creds: Any  # () -> Keys
    fetches: list[float] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)

    @contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """The service on `host` ("::1": over IPv6, as on an IPv6-only subnet); yields its URL."""
        imds = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, text: str = "") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400)
                    return
                token = secrets.token_hex(16)
                imds.tokens.add(token)
                self._reply(200, token)

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    self._reply(401)
                    return
                path = self.path.removeprefix("/latest/meta-data/")
                if path.rstrip("/") == "iam/security-credentials":
                    self._reply(200, imds.role)
                elif path == f"iam/security-credentials/{imds.role}":
                    imds.fetches.append(time.time())
                    self._reply(200, imds.document())
                else:
                    self._reply(404)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        server = Server((host, 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()

    def document(self) -> str:
        keys = self.creds()
        now = datetime.now(UTC)
        return json.dumps({
            "Code": "Success", "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "Type": "AWS-HMAC",
            "AccessKeyId": keys.access_key, "SecretAccessKey": keys.secret_key, "Token": keys.token,
            "Expiration": keys.expiration or (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })


__all__ = ["CredentialImds", "Keys", "SigMoto", "free_port", "sig_moto"]
