"""The one place EC2 clients are made: endpoint, region, credentials and retries."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from backup_agent import __version__
from backup_agent.config import Config

# EC2 throttles per account and region (RequestLimitExceeded), so a fleet snapshotting at the
# same minute backs off together; adaptive mode adds a client-side rate limiter to the backoff.
RETRIES = {"mode": "adaptive", "max_attempts": 10}


def make_client(cfg: Config, region: str, *, max_attempts: int | None = None) -> Any:
    st = cfg.storage
    # Storage keys are AWS keys only when the bucket lives on AWS itself; keys for another S3
    # service (SeaweedFS, MinIO) mean nothing to EC2, so then the default chain (instance
    # profile, environment) is used.
    on_aws = not st.endpoint_url or ".amazonaws.com" in st.endpoint_url
    keys: dict[str, str | None] = {}
    if st.access_key_id and on_aws:
        keys = {"aws_access_key_id": st.access_key_id, "aws_secret_access_key": st.secret_access_key,
                "aws_session_token": st.session_token}
    session = boto3.session.Session(region_name=region, **keys)  # type: ignore[arg-type]
    retries = dict(RETRIES, max_attempts=max_attempts or RETRIES["max_attempts"])
    bc = BotoConfig(retries=retries, connect_timeout=5, read_timeout=60,  # type: ignore[arg-type]
                    user_agent_extra=f"backup-agent/{__version__}")
    # One endpoint override serves every region: tests and private endpoints route by the
    # region in the request signature.
    return session.client("ec2", endpoint_url=cfg.aws.get("ec2_endpoint_url"), config=bc)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def describe(exc: BaseException) -> str:
    """One line for the user: the call, AWS's code and message, and what to do for common causes."""
    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials for EC2: give the instance a profile with the policy in docs/IAM.md "
                "(or set AWS_* environment variables)")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "error"))
        text = f"{exc.operation_name}: {code}: {err.get('Message', '')}".rstrip(": ")
        if code in ("UnauthorizedOperation", "AccessDenied", "AuthFailure"):
            text += " (the node's IAM policy needs this action: see docs/IAM.md)"
        elif code in ("RequestLimitExceeded", "Throttling", "SnapshotCreationPerVolumeRateExceeded"):
            text += " (still throttled after retries; spread the fleet's runs with `splay`)"
        return text
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


AwsError = (ClientError, BotoCoreError)
