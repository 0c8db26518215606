"""The direct S3 client of backup runs (storage/s3_direct.py): signatures botocore would make,
S3's answers and errors as botocore gives them, when boto3 takes over, and a rerun that
neither lists the bucket nor imports boto3."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from support.faultproxy import FaultProxy

from backup_agent.config import Storage
from backup_agent.storage.bodies import FileRange, FileShrank, Pieces
from backup_agent.storage.s3 import is_not_found
from backup_agent.storage.s3_direct import DirectS3, S3Unreachable, StreamBroken, direct_client
from backup_agent.storage.sigv4 import UNSIGNED, Signer, uri_encode
from backup_agent.storage.upload import upload_part

KEY = "node/job/large/dir with space/ünï cödé+&=~(1)!'*.bin"
WHEN = datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC)


@pytest.mark.parametrize(("method", "query", "headers", "payload"), [
    ("PUT", {}, {"x-amz-checksum-sha256": "abc=", "x-amz-storage-class": "STANDARD_IA",
                 "content-type": "application/gzip"}, UNSIGNED),
    ("PUT", {"partNumber": "3", "uploadId": "2~a/b+c=="}, {"x-amz-checksum-sha256": "abc="}, UNSIGNED),
    ("POST", {"uploads": ""}, {"x-amz-server-side-encryption": "aws:kms"}, hashlib.sha256(b"").hexdigest()),
])
def test_signature_is_the_one_botocore_makes(method: str, query: dict[str, str], headers: dict[str, str],
                                              payload: str) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok/en+=")
    host = "bucket.s3.eu-west-3.amazonaws.com"
    path = uri_encode("/" + KEY, path=True)
    ours = Signer(creds.access_key, creds.secret_key, creds.token, "eu-west-3").sign(
        method, host, path, query, headers, payload, now=WHEN.timestamp())
    url = f"https://{host}{path}" + ("?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query.items())
                                     if query else "")
    theirs = AWSRequest(method=method, url=url, headers=headers, data=b"")
    theirs.context["client_config"] = Config(s3={"payload_signing_enabled": payload != UNSIGNED})
    with mock.patch("botocore.auth.get_current_datetime", return_value=WHEN.replace(tzinfo=None)):
        S3SigV4Auth(creds, "s3", "eu-west-3").add_auth(theirs)
    assert ours["authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-security-token"] == "tok/en+="


def test_aws_addressing_is_virtual_hosted_unless_the_name_has_dots() -> None:
    client = DirectS3(None, Signer("a", "b", None, "eu-west-3"))
    assert client._where("my-bucket", "a b/c") == ("my-bucket.s3.eu-west-3.amazonaws.com", "/a%20b/c")
    assert client._where("my.bucket", "k") == ("s3.eu-west-3.amazonaws.com", "/my.bucket/k")
    seaweed = DirectS3("http://127.0.0.1:8333/base/", Signer("a", "b", None, "us-east-1"))
    assert seaweed._where("b", "k+1") == ("127.0.0.1:8333", "/base/b/k%2B1")


def _storage(**kw: object) -> Storage:
    return Storage(**{"bucket": "b", "prefix": "p", "region": "us-east-1", "access_key_id": "AK",
                      "secret_access_key": "SK", **kw})


def test_boto3_serves_what_the_direct_client_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BACKUP_AGENT_S3_CLIENT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTPS_PROXY",
                 "https_proxy", "HTTP_PROXY", "http_proxy", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(direct_client(_storage()), DirectS3)
    assert direct_client(_storage(access_key_id=None, secret_access_key=None)) is None  # instance profile
    assert direct_client(_storage(region="cn-north-1")) is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVAK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENVSK")
    from_env = direct_client(_storage(access_key_id=None, secret_access_key=None))
    assert from_env is not None and from_env.signer.access_key == "ENVAK"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert direct_client(_storage()) is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("BACKUP_AGENT_S3_CLIENT", "boto3")
    assert direct_client(_storage()) is None


@pytest.fixture
def bucket(seaweed) -> str:
    name = f"d-{uuid.uuid4().hex[:16]}"
    seaweed.client().create_bucket(Bucket=name)
    return name


def _direct(url: str, seaweed) -> DirectS3:
    return DirectS3(url, Signer(seaweed.access_key, seaweed.secret_key, None, "us-east-1"))


def test_objects_written_directly_read_back_with_boto3(seaweed, bucket: str) -> None:
    s3, direct = seaweed.client(), _direct(seaweed.endpoint_url, seaweed)
    body = os.urandom(70_000)
    direct.put_object(Bucket=bucket, Key=KEY, Body=body, ContentType="application/gzip",
                      ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())
    assert s3.get_object(Bucket=bucket, Key=KEY)["Body"].read() == body
    assert direct.head_object(Bucket=bucket, Key=KEY)["ContentLength"] == len(body)
    parts_data = [os.urandom(5 << 20), os.urandom(1000)]
    upload_id = direct.create_multipart_upload(Bucket=bucket, Key=KEY + ".mp", ChecksumAlgorithm="SHA256")["UploadId"]
    parts = [upload_part(direct, Bucket=bucket, Key=KEY + ".mp", UploadId=upload_id, PartNumber=n, Body=data)
             for n, data in enumerate(parts_data, 1)]
    direct.complete_multipart_upload(Bucket=bucket, Key=KEY + ".mp", UploadId=upload_id,
                                     MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key=KEY + ".mp")["Body"].read() == b"".join(parts_data)
    assert direct.get_bucket_versioning(Bucket=bucket) == {}
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert direct.get_bucket_versioning(Bucket=bucket) == {"Status": "Enabled"}


def test_packs_and_file_ranges_are_sent_without_copies_and_arrive_whole(seaweed, bucket: str,
                                                                        tmp_path: Path) -> None:
    """A pack goes out with sendmsg over its pieces (more of them than one call takes, some
    empty), a file range with sendfile from its offset; both arrive byte for byte, also when a
    reset makes the client send them again, and through boto3, which reads them instead."""
    rng = random.Random(5)
    pieces = [rng.randbytes(rng.choice((0, 1, 700, 9000))) for _ in range(3000)]
    whole = b"".join(pieces)
    path = tmp_path / "big.bin"
    path.write_bytes(rng.randbytes(3 << 20))
    with FaultProxy(seaweed.endpoint_url) as proxy:
        direct = _direct(proxy.url, seaweed)
        proxy.inject(lambda r: r.method == "PUT", "reset_after", times=2)
        fd = os.open(path, os.O_RDONLY)
        try:
            direct.put_object(Bucket=bucket, Key="pack", Body=Pieces(pieces), ChecksumSHA256=_b64sha(whole))
            direct.put_object(Bucket=bucket, Key="range", Body=FileRange(fd, 1000, 2 << 20, str(path)),
                              ChecksumSHA256=_b64sha(path.read_bytes()[1000:1000 + (2 << 20)]))
            assert proxy.faulted() == 2
            seaweed.client().put_object(Bucket=bucket, Key="pack-boto3", Body=Pieces(pieces),
                                        ChecksumSHA256=_b64sha(whole))
            os.truncate(path, 1 << 20)  # copytruncate: the range now ends early
            with pytest.raises(FileShrank):
                direct.put_object(Bucket=bucket, Key="shrunk", Body=FileRange(fd, 0, 2 << 20, str(path)))
        finally:
            os.close(fd)
    s3 = seaweed.client()
    assert s3.get_object(Bucket=bucket, Key="pack")["Body"].read() == whole
    assert s3.get_object(Bucket=bucket, Key="pack-boto3")["Body"].read() == whole
    assert len(s3.get_object(Bucket=bucket, Key="range")["Body"].read()) == 2 << 20
    assert "shrunk" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_errors_are_botocore_errors_with_s3_codes(seaweed, bucket: str) -> None:
    direct = _direct(seaweed.endpoint_url, seaweed)
    with pytest.raises(ClientError) as missing:
        direct.head_object(Bucket=bucket, Key="nothing-here")
    assert is_not_found(missing.value)
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as corrupt:  # the server checks the body against the header
        direct.put_object(Bucket=bucket, Key="k", Body=b"these bytes", ChecksumSHA256=wrong)
    assert corrupt.value.response["Error"]["Code"] == "BadDigest"
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    forged = DirectS3(seaweed.endpoint_url, Signer(seaweed.access_key, "not-the-secret", None, "us-east-1"))
    with pytest.raises(ClientError) as denied:
        forged.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_transient_faults_are_retried_and_a_dead_endpoint_is_named(seaweed, bucket: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("backup_agent.storage.s3_direct.time.sleep", lambda _s: None)
    with FaultProxy(seaweed.endpoint_url) as proxy:
        direct = _direct(proxy.url, seaweed)
        for kind in ("500", "503", "reset", "reset_after", "truncate"):
            proxy.inject(lambda r: r.method == "PUT", kind)
        direct.put_object(Bucket=bucket, Key="k", Body=b"payload")
        assert proxy.faulted() == 5
        assert seaweed.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"payload"
        proxy.down("503")
        with pytest.raises(ClientError) as slow:
            direct.put_object(Bucket=bucket, Key="k2", Body=b"payload")
        assert slow.value.response["Error"]["Code"] == "SlowDown"
        url = proxy.url
    with pytest.raises(S3Unreachable, match=f"PutObject: no answer from {url} after 10 attempts"):
        _direct(url, seaweed).put_object(Bucket=bucket, Key="k3", Body=b"payload")


def test_a_rerun_lists_nothing_and_does_without_boto3(agent, seaweed, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_text(str(i) * 100)
    agent.job("data", type="files", paths=[str(src)])
    with FaultProxy(seaweed.endpoint_url) as proxy:
        agent.data["storage"]["endpoint_url"] = proxy.url
        agent.write()
        assert agent.run("run", "data").returncode == 0
        (src / "f1").write_text("changed")
        since = len(proxy.requests())
        code = ("import sys; from backup_agent.cli import main; rc = main(); "
                "sys.exit(rc if rc else 9 if 'boto3' in sys.modules else 0)")
        env = {k: v for k, v in os.environ.items() if k != "BACKUP_AGENT_S3_CLIENT"}
        rerun = subprocess.run([sys.executable, "-c", code, "-c", str(agent.path), "run", "data"],
                               capture_output=True, text=True, env=env, timeout=120)
        assert rerun.returncode == 0, (rerun.returncode, rerun.stderr)
        seen = [f"{s.method} {s.path}?{'&'.join(s.query)}" for s in proxy.requests()[since:]]
        assert not [s for s in seen if s.startswith("GET") and "versioning" not in s], seen
        puts = [s for s in seen if s.startswith("PUT")]
        assert len(puts) == 2, seen  # the pack holding the changed file, and the manifest
        assert agent.json("check", "data", "--read-data")["status"] == "ok"


def test_listing_pages_and_keys_that_need_escaping(seaweed, bucket: str) -> None:
    s3, direct = seaweed.client(), _direct(seaweed.endpoint_url, seaweed)
    keys = [*sorted(f"p/{i} a&b<c>'\"ü+%20\nz" for i in range(7)), "q/outside"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * i)
    pages = list(direct.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/",
                                                                   PaginationConfig={"PageSize": 3}))
    assert [len(p.get("Contents", [])) for p in pages] == [3, 3, 1], [[o["Key"] for o in p["Contents"]] for p in pages]
    listed = [o for p in pages for o in p["Contents"]]
    assert [(o["Key"], o["Size"]) for o in listed] == [(k, i) for i, k in enumerate(keys[:7])]
    assert all(o["LastModified"].tzinfo is not None for o in listed)


def test_a_body_that_breaks_off_is_an_error_to_retry_not_short_content(seaweed, bucket: str,
                                                                        tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    seaweed.client().put_object(Bucket=bucket, Key="obj", Body=data)
    with FaultProxy(seaweed.endpoint_url) as proxy:
        direct = _direct(proxy.url, seaweed)
        assert direct.get_object(Bucket=bucket, Key="obj", Range="bytes=5-9")["Body"].read() == data[5:10]
        proxy.inject(lambda r: r.method == "GET", "truncate")
        body = direct.get_object(Bucket=bucket, Key="obj")["Body"]
        with pytest.raises(StreamBroken):
            while body.read(1 << 20):
                pass
        proxy.inject(lambda r: r.method == "GET", "truncate", times=2)
        with (tmp_path / "copy").open("w+b") as f:
            direct.download_fileobj(bucket, "obj", f)  # fetched again from the start
            f.seek(0)
            assert f.read() == data
        assert proxy.faulted() == 3


def test_an_unknown_client_choice_is_refused_in_one_line(agent, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    agent.job("data", type="files", paths=[str(src)])
    bad = agent.run("run", "data", env={"BACKUP_AGENT_S3_CLIENT": "botocore"})
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("backup-agent:")]
    assert lines == ["backup-agent: BACKUP_AGENT_S3_CLIENT=botocore: expected auto or boto3"], bad.stderr
    assert not agent.object_keys(), "a refused run stored something"
