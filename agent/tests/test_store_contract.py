"""One behaviour for every Store implementation: what a job may rely on, whoever holds the bytes.

`STORES` lists the implementations under test as (id, factory): a factory takes pytest's
`request` and returns a `Made` (a fresh, empty bucket's store, and what it can do). To run the
contract against another implementation (MemoryStore, BotoStore, a database), add one line.

CrtStore runs three ways: on SeaweedFS (static keys), on moto server with signature checking
(an IAM user's keys), and on the same moto with an instance profile's assume-role credentials
served by a loopback IMDSv2 (awscrt's default chain, AWS_EC2_METADATA_SERVICE_ENDPOINT).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from store_servers import REGION, CredentialImds, SigMoto, sig_moto
from support.seaweedfs import SeaweedFS

from backup_agent.config import Storage
from backup_agent.storage.bodies import FileShrank, Pieces
from backup_agent.storage.s3_crt import CrtStore
from backup_agent.storage.store import Archived, NotFound, Store, StoreError

PART = 5 << 20  # the smallest part size S3 allows: multipart paths without big test data


@dataclass
class Made:
    store: Store
    admin: Any  # a boto3 S3 client on the same bucket, for setup the interface does not offer
    bucket: str
    archive: bool = False  # GLACIER semantics (moto), not SeaweedFS
    # The server checks x-amz-checksum-sha256 against the body (SeaweedFS, AWS); moto 5.2 stores
    # whatever it is sent, so a wrong checksum cannot be refused there.
    verifies: bool = True


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _storage(bucket: str, endpoint: str, **keys: Any) -> Storage:
    return Storage(bucket=bucket, prefix="", region=REGION, endpoint_url=endpoint,
                   multipart_chunk_size=PART, concurrency=4, **keys)


@pytest.fixture(scope="module")
def moto_sig() -> Iterator[SigMoto]:
    with sig_moto() as m:
        yield m


def crt_seaweedfs(request: pytest.FixtureRequest) -> Made:
    sw: SeaweedFS = request.getfixturevalue("seaweed")
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    admin = sw.client()
    admin.create_bucket(Bucket=bucket)
    store = CrtStore.from_storage(_storage(bucket, sw.endpoint_url, access_key_id=sw.access_key,
                                           secret_access_key=sw.secret_key))
    return Made(store, admin, bucket)


def crt_moto_static(request: pytest.FixtureRequest) -> Made:
    m: SigMoto = request.getfixturevalue("moto_sig")
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    admin = m.s3()
    admin.create_bucket(Bucket=bucket)
    store = CrtStore.from_storage(_storage(bucket, m.url, access_key_id=m.user.access_key,
                                           secret_access_key=m.user.secret_key))
    return Made(store, admin, bucket, archive=True, verifies=False)


def crt_moto_instance_profile(request: pytest.FixtureRequest) -> Made:
    m: SigMoto = request.getfixturevalue("moto_sig")
    mp: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    bucket = f"c-{uuid.uuid4().hex[:16]}"
    admin = m.s3()
    admin.create_bucket(Bucket=bucket)
    imds = CredentialImds(m.role_name, m.assume_role)
    ctx = imds.serve()
    url = ctx.__enter__()
    request.addfinalizer(lambda: ctx.__exit__(None, None, None))
    no_creds_but_imds(mp, url, request.getfixturevalue("tmp_path"))
    store = CrtStore.from_storage(_storage(bucket, m.url))
    return Made(store, admin, bucket, archive=True, verifies=False)


def no_creds_but_imds(mp: pytest.MonkeyPatch, imds_url: str, tmp: Path) -> None:
    """An EC2 node's environment: no keys anywhere, an IMDSv2 at `imds_url`."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
    mp.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds_url)


STORES: list[tuple[str, Callable[[pytest.FixtureRequest], Made]]] = [
    ("crt-seaweedfs", crt_seaweedfs),
    ("crt-moto-static", crt_moto_static),
    ("crt-moto-instance-profile", crt_moto_instance_profile),
]


@pytest.fixture(params=[f for _, f in STORES], ids=[i for i, _ in STORES])
def made(request: pytest.FixtureRequest) -> Made:
    return request.param(request)  # type: ignore[no-any-return]


# --- objects: put, stat, get ---------------------------------------------------------------------

def test_put_stat_get_round_trip(made: Made) -> None:
    s = made.store
    data = os.urandom(1000)
    before = datetime.now(UTC) - timedelta(minutes=5)
    s.put("job/a b+c%d/é.bin", data, sha256=_sha(data))
    info = s.stat("job/a b+c%d/é.bin")
    assert (info.key, info.size, info.storage_class) == ("job/a b+c%d/é.bin", 1000, "STANDARD")
    assert info.last_modified.tzinfo is not None and info.last_modified > before
    assert s.get("job/a b+c%d/é.bin").read() == data
    assert s.get("job/a b+c%d/é.bin", 10, 20).read() == data[10:20]
    assert s.get("job/a b+c%d/é.bin", 990).read() == data[990:]
    assert s.get("job/a b+c%d/é.bin", 1000).read() == b""


def test_empty_object(made: Made) -> None:
    made.store.put("empty", b"", sha256=_sha(b""))
    assert made.store.stat("empty").size == 0
    assert made.store.get("empty").read() == b""


def test_missing_key_is_not_found(made: Made) -> None:
    with pytest.raises(NotFound):
        made.store.stat("nope")
    with pytest.raises(NotFound) as err:
        made.store.get("nope")
    assert "nope" in str(err.value) and "\n" not in str(err.value)


def test_wrong_checksum_is_refused_and_nothing_is_stored(made: Made) -> None:
    if not made.verifies:
        pytest.skip("this server does not verify checksums")
    with pytest.raises(StoreError):
        made.store.put("bad", b"hello", sha256=_sha(b"other"))
    with pytest.raises(NotFound):
        made.store.stat("bad")


def test_large_put_goes_in_parts_and_reads_back_in_small_pieces(made: Made) -> None:
    data = os.urandom(2 * PART + 12345)
    made.store.put("big", data, sha256=_sha(data))
    assert made.store.stat("big").size == len(data)
    body = made.store.get("big")
    got = bytearray()
    while chunk := body.read(300_000):
        got += chunk
    assert got == data
    assert made.store.get("big", PART - 5, PART + 5).read() == data[PART - 5 : PART + 5]


def test_put_of_a_pack_of_pieces(made: Made) -> None:
    # Parts of every size around the stores' read sizes (awscrt copies them into its buffer,
    # botocore reads them joined): each byte where it belongs.
    parts = [os.urandom(n) for n in (1, 5000, 0, 70000, 65536, 3, 1 << 20, 0, 12345)]
    whole = b"".join(parts)
    made.store.put("pack", Pieces(parts), sha256=_sha(whole))
    assert made.store.get("pack").read() == whole


def test_put_file_reads_the_descriptor(made: Made, tmp_path: Path) -> None:
    data = os.urandom(2 * PART + 100)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        made.store.put_file("f", fd, len(data), sha256=_sha(data), name=str(path))
        made.store.put_file("small", fd, 100, sha256=_sha(data[:100]), name=str(path))
    finally:
        os.close(fd)
    assert made.store.get("f").read() == data
    assert made.store.get("small").read() == data[:100]


@pytest.mark.parametrize("size", [100, 2 * PART + 100], ids=["single", "multipart"])
def test_put_file_of_a_shrinking_file_raises_file_shrank(made: Made, tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (size // 2))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(FileShrank, match=str(path)):
            made.store.put_file("shrank", fd, size, sha256=_sha(b"x" * size), name=str(path))
    finally:
        os.close(fd)
    with pytest.raises(NotFound):
        made.store.stat("shrank")


def test_a_multipart_body_that_changed_since_hashing_is_not_completed(made: Made) -> None:
    data = os.urandom(2 * PART + 100)  # multipart: one PUT below two parts
    with pytest.raises(StoreError):
        made.store.put("changed", data, sha256=_sha(b"what it was"))
    with pytest.raises(NotFound):
        made.store.stat("changed")


def test_storage_class_is_written(made: Made) -> None:
    made.store.put("ia", b"x", sha256=_sha(b"x"), storage_class="STANDARD_IA")
    assert made.store.stat("ia").storage_class == "STANDARD_IA"


# --- listing ---------------------------------------------------------------------------------------

def test_list_in_key_order_with_prefix_and_start_after(made: Made) -> None:
    keys = ["p/b", "p/a", "p/c d", "p/ä", "q/x", "p/sub/e", "p/e+f%20"]
    for k in keys:
        made.store.put(k, k.encode(), sha256=_sha(k.encode()))
    listed = list(made.store.list("p/"))
    assert [o.key for o in listed] == sorted(k for k in keys if k.startswith("p/"))
    assert {o.key: o.size for o in listed}["p/c d"] == len(b"p/c d")
    assert all(o.last_modified.tzinfo is not None for o in listed)
    assert [o.key for o in made.store.list("p/", start_after="p/b")] == ["p/c d", "p/e+f%20", "p/sub/e", "p/ä"]
    assert list(made.store.list("nothing/")) == []


def test_list_follows_pages(made: Made) -> None:
    if not isinstance(made.store, CrtStore):
        pytest.skip("page size is CrtStore's knob")
    made.store.list_page_size = 2
    for i in range(5):
        made.store.put(f"k/{i}", b"", sha256=_sha(b""))
    assert [o.key for o in made.store.list("k/")] == [f"k/{i}" for i in range(5)]


# --- streamed multipart uploads ----------------------------------------------------------------------

def test_streamed_multipart_upload(made: Made) -> None:
    one, two = os.urandom(PART), os.urandom(1000)
    up = made.store.start_multipart("dump.zst")
    assert up.key == "dump.zst"
    with pytest.raises(NotFound):
        made.store.stat("dump.zst")  # nothing visible before complete()
    up.upload_part(1, one, _sha(one))
    up.upload_part(2, two, _sha(two))
    up.complete()
    assert made.store.get("dump.zst").read() == one + two


def test_a_part_with_a_wrong_checksum_is_refused(made: Made) -> None:
    if not made.verifies:
        pytest.skip("this server does not verify checksums")
    up = made.store.start_multipart("dump2")
    with pytest.raises(StoreError):
        up.upload_part(1, b"data", _sha(b"other"))
    up.abort()
    with pytest.raises(NotFound):
        made.store.stat("dump2")


# --- delete, versioning, archives ----------------------------------------------------------------------

def test_delete_missing_keys_are_not_failures(made: Made) -> None:
    for k in ("d/1", "d/2"):
        made.store.put(k, b"x", sha256=_sha(b"x"))
    assert made.store.delete(iter(["d/1", "d/2", "d/never"])) == []
    assert list(made.store.list("d/")) == []


def test_versioning(made: Made) -> None:
    assert made.store.versioning() is None
    made.admin.put_bucket_versioning(Bucket=made.bucket, VersioningConfiguration={"Status": "Enabled"})
    assert made.store.versioning() == "Enabled"


def test_archived_object_needs_a_restore(made: Made) -> None:
    if not made.archive:
        pytest.skip("this server has no archive storage classes")
    made.store.put("cold", b"frozen", sha256=_sha(b"frozen"), storage_class="GLACIER")
    assert made.store.stat("cold").storage_class == "GLACIER"
    with pytest.raises(Archived):
        made.store.get("cold").read()
    assert made.store.request_restore("cold", days=2, tier="Bulk") is True
    assert made.store.stat("cold").restore is not None
