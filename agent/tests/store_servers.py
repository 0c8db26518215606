"""S3 servers for the store contract tests, all real HTTP on loopback.

- SigMoto: moto server with signature checking on: an IAM user with an access key, a role it may
  assume, and `reset-auth`, so wrong keys get SignatureDoesNotMatch/InvalidAccessKeyId.
- CredentialImds: fake_aws.ImdsServer that also serves an instance profile's role credentials
  (from sts:AssumeRole, which moto accepts once auth is on), as EC2's IMDSv2 does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    """IMDSv2 on loopback serving the role credentials `creds()` returns (called per request, so
    a test can rotate them); counts how often credentials were fetched."""

    role: str
    creds: Any  # () -> Keys
    fetches: list[float] = field(default_factory=list)

    @contextmanager
    def serve(self) -> Iterator[str]:
        from fake_aws import ImdsServer

        outer = self

        class WithRole(ImdsServer):
            def meta(self) -> dict[str, str]:
                base = super().meta()
                keys = outer.creds()
                outer.fetches.append(datetime.now(UTC).timestamp())
                now = datetime.now(UTC)
                base["iam/security-credentials/"] = outer.role
                base["iam/security-credentials"] = outer.role
                base[f"iam/security-credentials/{outer.role}"] = json.dumps({
                    "Code": "Success", "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "Type": "AWS-HMAC",
                    "AccessKeyId": keys.access_key, "SecretAccessKey": keys.secret_key, "Token": keys.token,
                    "Expiration": keys.expiration or (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                })
                return base

        with WithRole("i-0123456789abcdef0", REGION, REGION + "a").serve() as url:
            yield url


__all__ = ["CredentialImds", "Keys", "SigMoto", "free_port", "sig_moto"]
