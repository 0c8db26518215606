"""CrtStore against what the hand-written client got wrong (issue #19), each a user-visible case:
pooled connections the server closed, a PUT refused before its body was read, region
redirects, AWS_SECURITY_TOKEN, odd dates, wrong keys, broken downloads, where credentials and
endpoint settings come from."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from store_servers import REGION, CredentialImds, SigMoto, sig_moto
from support.faultproxy import FaultProxy
from support.seaweedfs import SeaweedFS
from test_store_contract import no_creds_but_imds

from backup_agent.config import Storage
from backup_agent.errors import ConfigError
from backup_agent.storage import crt_credentials
from backup_agent.storage.bodies import BodyReleased, Pieces
from backup_agent.storage.crt_body import UploadStream
from backup_agent.storage.s3_crt import CrtStore, endpoint_for
from backup_agent.storage.store import Denied, NotFound, StoreError

SECRET = "not-the-right-secret-0000000000000000000"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _storage(bucket: str, endpoint: str | None, **kw: Any) -> Storage:
    return Storage(bucket=bucket, prefix="", region=kw.pop("region", REGION), endpoint_url=endpoint,
                   multipart_chunk_size=5 << 20, **kw)


@pytest.fixture(scope="module")
def moto_sig() -> Iterator[SigMoto]:
    with sig_moto() as m:
        yield m


@pytest.fixture
def moto_bucket(moto_sig: SigMoto) -> str:
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    moto_sig.s3().create_bucket(Bucket=bucket)
    return bucket


def _clean_env(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    no_creds_but_imds(mp, "http://127.0.0.1:9", tmp)
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_CA_BUNDLE", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        mp.delenv(name, raising=False)


# --- connections -----------------------------------------------------------------------------------

def test_idle_pooled_connections_closed_by_the_server_do_not_cost_retries() -> None:
    """12 keep-alive connections that SeaweedFS closed after 2 s idle: the next HEAD is answered
    at once (the hand-written pool burnt its 10 attempts on dead sockets: 8.3 s, then failed)."""
    with SeaweedFS(extra_args=("-s3.idleTimeout=2",)) as sw:
        bucket = f"c-{uuid.uuid4().hex[:16]}"
        sw.client().create_bucket(Bucket=bucket)
        store = CrtStore.from_storage(_storage(bucket, sw.endpoint_url, access_key_id=sw.access_key,
                                               secret_access_key=sw.secret_key, concurrency=12))
        store.put("k", b"v", sha256=_sha(b"v"))
        threads = [threading.Thread(target=store.stat, args=("k",)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(3)  # every pooled connection is now closed by the server
        started = time.monotonic()
        assert store.stat("k").size == 1
        assert time.monotonic() - started < 1.0


@contextmanager
def refusing_server(status: int = 403, code: str = "AccessDenied",
                    message: str = "Uploads to this bucket are not allowed") -> Iterator[tuple[str, list[str]]]:
    """Answers every request with an S3 error as soon as its headers arrive, body unread, then
    closes: what S3 does to a PUT it refuses up front."""
    seen: list[str] = []
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                seen.append(head.split(b"\r\n", 1)[0].decode())
                body = (f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message>"
                        f"<RequestId>r1</RequestId></Error>").encode()
                try:
                    conn.sendall(f"HTTP/1.1 {status} Refused\r\nContent-Type: application/xml\r\n"
                                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                    conn.shutdown(socket.SHUT_WR)
                    time.sleep(0.05)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_a_put_refused_before_its_body_is_read_shows_the_servers_error(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    data = os.urandom(4 << 20)
    with refusing_server() as (url, seen):
        store = CrtStore.from_storage(_storage("bucket-x", url, access_key_id="AKIDEXAMPLE", secret_access_key=SECRET))
        started = time.monotonic()
        with pytest.raises(Denied) as err:
            store.put("big", data, sha256=_sha(data))
    assert "AccessDenied: Uploads to this bucket are not allowed" in str(err.value)
    assert "pipe" not in str(err.value).lower()
    assert len(seen) == 1, seen  # a refusal is final: the body is not sent again
    assert time.monotonic() - started < 5


# --- regions ----------------------------------------------------------------------------------------

STORED: list[bytes] = []  # bodies regional_server stored


@contextmanager
def regional_server(home: str) -> Iterator[tuple[str, list[str]]]:
    """Answers 301 PermanentRedirect, the region only in the error body, to requests signed for
    another region than `home`; 200 to HEADs signed for `home`."""
    regions: list[str] = []
    puts = STORED

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _redirected(self) -> bool:
            auth = self.headers.get("Authorization", "")
            region = auth.split("Credential=")[1].split("/")[2] if "Credential=" in auth else "?"
            regions.append(f"{self.command} {region}")
            if region == home:
                return False
            body = (f"<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access "
                    f"must be addressed using the specified endpoint.</Message><Region>{home}</Region>"
                    "</Error>").encode()
            self.send_response(301)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return True

        def do_HEAD(self) -> None:
            if self._redirected():
                return
            self.send_response(200)
            for k, v in (("Content-Length", "7"), ("ETag", '"abc"'),
                         ("Last-Modified", "Wed, 02 Dec 2026 10:00:00 GMT")):
                self.send_header(k, v)
            self.end_headers()

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self._redirected():
                return
            puts.append(body)
            self.send_response(200)
            self.send_header("ETag", '"e"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self._redirected():
                return
            body = (b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>7</Size>"
                    b"<LastModified>2026-12-02T10:00:00.000Z</LastModified></Contents></ListBucketResult>")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", regions
    finally:
        server.shutdown()
        server.server_close()


def test_a_region_redirect_in_the_error_body_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    with regional_server("eu-west-1") as (url, regions):
        store = CrtStore.from_storage(_storage("bucket-x", url, access_key_id="AKIDEXAMPLE", secret_access_key=SECRET))
        assert [o.key for o in store.list("")] == ["k"]
        assert store.region == "eu-west-1"
        assert store.stat("k").size == 7
    assert regions == ["GET us-east-1", "GET eu-west-1", "HEAD eu-west-1"]


def test_a_pack_redirected_on_the_stores_first_request_is_sent_again_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until a request has been answered the region is unproven: a pack is kept after awscrt
    copied it, so the redirect's second attempt can read it again (a rerun's first PUTs race the
    preflight's requests)."""
    _clean_env(monkeypatch, tmp_path)
    STORED.clear()
    parts = [os.urandom(n) for n in (50_000, 3, 200_000)]
    whole = b"".join(parts)
    with regional_server("eu-west-1") as (url, regions):
        store = CrtStore.from_storage(_storage("bucket-x", url, access_key_id="AKIDEXAMPLE", secret_access_key=SECRET))
        body = Pieces(list(parts))
        store.put("packs/p1", body, sha256=_sha(whole))
        assert not body.released
        later = Pieces(list(parts))
        store.put("packs/p2", later, sha256=_sha(whole))
        assert later.released  # answered once: the region is right, the copy is let go
    assert regions == ["PUT us-east-1", "PUT eu-west-1", "PUT eu-west-1"]
    stored = list(STORED)
    assert stored == [whole, whole]


def test_a_head_redirected_without_a_region_header_finds_the_region(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    with regional_server("ap-south-1") as (url, regions):
        store = CrtStore.from_storage(_storage("bucket-x", url, access_key_id="AKIDEXAMPLE", secret_access_key=SECRET))
        assert store.stat("k").etag == "abc"
    assert regions == ["HEAD us-east-1", "GET us-east-1", "HEAD ap-south-1"]


def test_aws_endpoints_follow_the_region_and_profile_settings() -> None:
    plain = crt_credentials.Settings()
    assert endpoint_for("my-bucket", "eu-west-1", None, plain).host == "my-bucket.s3.eu-west-1.amazonaws.com"
    assert endpoint_for("my.bucket", "eu-west-1", None, plain).host == "s3.eu-west-1.amazonaws.com"
    fips = crt_credentials.Settings(fips=True, addressing_style="path")
    ep = endpoint_for("my-bucket", "us-gov-west-1", None, fips)
    assert (ep.host, ep.path_style) == ("s3-fips.us-gov-west-1.amazonaws.com", True)
    assert endpoint_for("b-1", "cn-north-1", None, plain).host == "b-1.s3.cn-north-1.amazonaws.com.cn"
    assert endpoint_for("b-1", "us-east-1", "http://127.0.0.1:9000", plain).path_style


# --- credentials ---------------------------------------------------------------------------------------

def test_aws_security_token_is_honoured(moto_sig: SigMoto, moto_bucket: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    role = moto_sig.assume_role()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", role.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", role.secret_key)
    monkeypatch.setenv("AWS_SECURITY_TOKEN", role.token or "")
    store = CrtStore.from_storage(_storage(moto_bucket, moto_sig.url))
    store.put("k", b"v", sha256=_sha(b"v"))
    assert store.stat("k").size == 1
    monkeypatch.delenv("AWS_SECURITY_TOKEN")
    with pytest.raises(Denied):  # the same keys without their token: refused, so the token was used
        CrtStore.from_storage(_storage(moto_bucket, moto_sig.url)).stat("k")


def test_wrong_keys_are_denied_in_one_line_without_the_secret(moto_sig: SigMoto, moto_bucket: str) -> None:
    store = CrtStore.from_storage(_storage(moto_bucket, moto_sig.url, access_key_id=moto_sig.user.access_key,
                                           secret_access_key=SECRET))
    for call in (lambda: list(store.list("")), lambda: store.stat("k"),
                 lambda: store.put("k", b"v", sha256=_sha(b"v")), lambda: store.get("k")):
        with pytest.raises(Denied) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and SECRET not in text and moto_bucket in text


def test_no_credentials_anywhere_is_denied_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       moto_sig: SigMoto, moto_bucket: str) -> None:
    _clean_env(monkeypatch, tmp_path)
    with pytest.raises(Denied, match="no usable credentials") as err:
        CrtStore.from_storage(_storage(moto_bucket, moto_sig.url)).stat("k")
    assert "\n" not in str(err.value)


def test_shared_profile_credentials(moto_sig: SigMoto, moto_bucket: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    creds = tmp_path / "credentials"
    creds.write_text(f"[backup]\naws_access_key_id = {moto_sig.user.access_key}\n"
                     f"aws_secret_access_key = {moto_sig.user.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    store = CrtStore.from_storage(_storage(moto_bucket, moto_sig.url))
    with pytest.raises(NotFound):
        store.stat("nothing-here")  # signed with the profile's keys: moto checked and answered


def test_instance_profile_credentials_are_fetched_once_not_per_request(
        moto_sig: SigMoto, moto_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imds = CredentialImds(moto_sig.role_name, moto_sig.assume_role)
    with imds.serve() as url:
        no_creds_but_imds(monkeypatch, url, tmp_path)
        store = CrtStore.from_storage(_storage(moto_bucket, moto_sig.url))
        store.put("k", b"v", sha256=_sha(b"v"))
        for _ in range(30):
            store.stat("k")
    assert 1 <= len(imds.fetches) <= 3  # role name + credentials, cached until near expiry


def test_profile_settings_that_cannot_apply_are_refused_in_one_line(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    cfg = tmp_path / "config"
    cfg.write_text("[default]\nuse_fips_endpoint = true\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    with pytest.raises(ConfigError, match="FIPS") as err:
        CrtStore.from_storage(_storage("b-1", "http://127.0.0.1:9000", access_key_id="a", secret_access_key="b"))
    assert "\n" not in str(err.value)
    cfg.write_text(f"[default]\nca_bundle = {tmp_path / 'missing.pem'}\n")
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        CrtStore.from_storage(_storage("b-1", "https://127.0.0.1:9000", access_key_id="a", secret_access_key="b"))
    cfg.write_text("[profile ops]\ns3 =\n  addressing_style = path\nuse_fips_endpoint = true\n")
    monkeypatch.setenv("AWS_PROFILE", "ops")
    s = crt_credentials.settings(_storage("b-1", None))
    assert (s.addressing_style, s.fips) == ("path", True)


# --- answers and streams ------------------------------------------------------------------------------

@contextmanager
def listing_server(body: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_listing_with_non_iso_dates_does_not_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch, tmp_path)
    body = (b"<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated>"
            b"<Contents><Key>a</Key><Size>1</Size><LastModified>Wed, 02 Dec 2026 10:00:00 GMT</LastModified></Contents>"
            b"<Contents><Key>b</Key><Size>2</Size><LastModified>2026-12-02 10:00:00</LastModified></Contents>"
            b"<Contents><Key>c</Key><Size>3</Size><LastModified>yesterday</LastModified></Contents>"
            b"</ListBucketResult>")
    with listing_server(body) as url:
        store = CrtStore.from_storage(_storage("b-1", url, access_key_id="a", secret_access_key="b"))
        listed = list(store.list(""))
    assert [(o.key, o.last_modified.isoformat()) for o in listed] == [
        ("a", "2026-12-02T10:00:00+00:00"), ("b", "2026-12-02T10:00:00+00:00"), ("c", "1970-01-01T00:00:00+00:00")]


def test_a_download_that_breaks_off_is_resumed_where_it_broke(seaweed: SeaweedFS) -> None:
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    seaweed.client().create_bucket(Bucket=bucket)
    data = os.urandom(3 << 20)
    seaweed.client().put_object(Bucket=bucket, Key="k", Body=data)
    with FaultProxy(seaweed.endpoint_url) as proxy:
        store = CrtStore.from_storage(_storage(bucket, proxy.url, access_key_id=seaweed.access_key,
                                               secret_access_key=seaweed.secret_key))
        store.get_window = 256 << 10
        body = store.get("k")
        first = body.read(1000)
        is_get: Callable[[Any], bool] = lambda r: r.method == "GET" and r.path.endswith("/k")  # noqa: E731
        proxy.inject(is_get, "truncate", times=2)
        with body:
            rest = b""
            while chunk := body.read(1 << 16):
                rest += chunk
        assert proxy.faulted() == 2
    assert first + rest == data


@pytest.mark.parametrize("fault", ["503", "500", "reset"])
def test_a_pack_let_go_after_awscrt_copied_it_is_still_resent_whole_on_retries(seaweed: SeaweedFS,
                                                                                fault: str) -> None:
    """A pack's pieces are released once awscrt has them in its buffer (one copy per upload in
    flight instead of two): its retries must resend that buffer, never read the pack again."""
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    seaweed.client().create_bucket(Bucket=bucket)
    parts = [os.urandom(n) for n in (70_000, 1, 300_000, 5_000) * 8]
    whole = b"".join(parts)
    with FaultProxy(seaweed.endpoint_url) as proxy:
        store = CrtStore.from_storage(_storage(bucket, proxy.url, access_key_id=seaweed.access_key,
                                               secret_access_key=seaweed.secret_key))
        list(store.list(""))  # answered: the region is proven, so packs are let go
        proxy.inject(lambda r: r.method == "PUT", fault, times=2)
        body = Pieces(list(parts))
        store.put("pack", body, sha256=_sha(whole))
        assert proxy.faulted() == 2
    assert body.released and body.parts == []
    assert len(body) == len(whole)
    assert seaweed.client().get_object(Bucket=bucket, Key="pack")["Body"].read() == whole


def test_a_released_pack_is_never_sent_again_short() -> None:
    body = Pieces([b"abc", b"defg"])
    stream = UploadStream(body, release=True)
    buf = bytearray(16)
    assert stream.readinto(memoryview(buf)) == 7 and bytes(buf[:7]) == b"abcdefg"
    assert stream.readinto(memoryview(buf)) == 0  # the end, asked again: no error
    assert body.released
    with pytest.raises(BodyReleased, match="cannot be sent again") as err:
        body.seek(0)  # what a region redirect's second attempt does first
    assert isinstance(err.value, StoreError)  # the run fails as an upload failure, never sends it short


# --- settings on every write -------------------------------------------------------------------------

def test_object_lock_retention_is_put_on_every_write(moto_sig: SigMoto) -> None:
    """Single PUTs (moto 5.2 drops retention given to CreateMultipartUpload, where awscrt does
    send it: not checkable here)."""
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    moto_sig.s3().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    store = CrtStore.from_storage(_storage(bucket, moto_sig.url, access_key_id=moto_sig.user.access_key,
                                           secret_access_key=moto_sig.user.secret_key),
                                  object_lock=("GOVERNANCE", 3))
    store.put("locked", b"data", sha256=_sha(b"data"))
    info = store.stat("locked")
    assert info.lock_mode == "GOVERNANCE"
    assert info.lock_until is not None
    assert 2.9 < (info.lock_until - datetime.now(UTC)).total_seconds() / 86400 < 3.1



def test_instance_profile_credentials_are_fetched_again_when_they_expire(
        moto_sig: SigMoto, moto_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    role = moto_sig.assume_role()

    def short_lived() -> Any:  # what the instance profile says: valid for 5 more seconds
        expires = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return replace(role, expiration=expires)

    imds = CredentialImds(moto_sig.role_name, short_lived)
    with imds.serve() as url:
        no_creds_but_imds(monkeypatch, url, tmp_path)
        store = CrtStore.from_storage(_storage(moto_bucket, moto_sig.url))
        store.put("k", b"v", sha256=_sha(b"v"))
        first = len(imds.fetches)
        time.sleep(6)
        assert store.stat("k").size == 1
    assert len(imds.fetches) > first
