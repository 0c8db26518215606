"""The one place boto3 S3 clients are made (endpoints, credentials, retries, encryption settings),
and the helpers that read botocore's errors: for the BotoStore (s3_boto.py) and the control plane
(bucket setup)."""

from __future__ import annotations

import base64
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from backup_agent.config import Storage

# Adaptive mode retries 5xx, SlowDown, throttling and connection resets with backoff and a
# client-side rate limiter, which is what a fleet hitting one bucket needs.
RETRIES = {"mode": "adaptive", "max_attempts": 10}


def make_client(storage: Storage, *, concurrency: int | None = None) -> Any:
    # Imported here: boto3's import is the slow part of a start, and only S3 work needs it.
    import boto3
    from botocore.config import Config as BotoConfig

    from backup_agent.storage import endpoints

    # Bucket setup and maintenance make their clients here directly; open_store has resolved
    # the list already for the stores (then this is a no-op).
    storage = endpoints.resolve(storage)
    session = boto3.session.Session(
        aws_access_key_id=storage.access_key_id,
        aws_secret_access_key=storage.secret_access_key,
        aws_session_token=storage.session_token,
        region_name=storage.region,
    )
    cfg = BotoConfig(
        retries=RETRIES,  # type: ignore[arg-type]
        max_pool_connections=max(10, (concurrency or storage.concurrency) * 2 + 4),
        connect_timeout=10,
        read_timeout=120,
        # Custom endpoints (SeaweedFS, MinIO, moto) want path-style addressing. Payloads are not
        # SigV4-signed (that hashes every byte a second time on both ends); integrity comes from
        # the x-amz-checksum-sha256 header (`checksum_args`, or botocore's per part) that we send
        # with data and the server verifies: a signed header, as tamper-proof as a signed payload.
        s3={"addressing_style": "path" if storage.endpoint_url else "auto", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client = session.client("s3", endpoint_url=storage.endpoint_url, config=cfg)
    return client


def put_args(storage: Storage, storage_class: str | None = None) -> dict[str, str]:
    """Extra arguments for every object we write (encryption, storage class)."""
    args: dict[str, str] = {}
    if storage.sse:
        args["ServerSideEncryption"] = storage.sse
        if storage.sse == "aws:kms" and storage.kms_key_id:
            args["SSEKMSKeyId"] = storage.kms_key_id
    if storage_class and storage_class != "STANDARD":
        args["StorageClass"] = storage_class
    return args


def checksum_args(sha256_hex: str) -> dict[str, str]:
    """The header that makes S3 verify the body against a SHA-256 we already computed."""
    return {"ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256_hex)).decode()}


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def describe(exc: BaseException) -> str:
    """A one-line description of an S3 failure without request ids or credentials."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "request")
        return f"{op}: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket")

