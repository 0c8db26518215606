"""The Store interface as jobs see it, on both implementations: MemoryStore (unit tests' stand-in)
and BotoStore against a real SeaweedFS. The same assertions hold for both, so a job test that
passes on MemoryStore says something about S3."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backup_agent.config import Storage
from backup_agent.storage.bodies import FileShrank
from backup_agent.storage.memory import MemoryStore
from backup_agent.storage.s3_boto import BotoStore
from backup_agent.storage.store import Archived, Denied, Incomplete, Locked, NotFound, Store, StoreError, Unreachable


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["memory", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    agent = request.getfixturevalue("agent")
    st = agent.data["storage"]
    return BotoStore(Storage(bucket=agent.bucket, prefix="p", region="us-east-1", endpoint_url=st["endpoint_url"],
                             access_key_id=st["access_key_id"], secret_access_key=st["secret_access_key"],
                             multipart_chunk_size=5 << 20))


def test_put_get_ranges_stat_list(store: Store) -> None:
    store.put("a/1", b"hello world", sha256=sha(b"hello world"))
    store.put("a/2", b"x" * 10, sha256=sha(b"x" * 10))
    store.put("b/1", b"", sha256=sha(b""))
    assert store.get("a/1").read() == b"hello world"
    assert store.get("a/1", 6).read() == b"world"
    assert store.get("a/1", 0, 5).read() == b"hello"
    info = store.stat("a/1")
    assert info.size == 11 and info.last_modified.tzinfo is not None
    assert [o.key for o in store.list("a/")] == ["a/1", "a/2"]
    assert [o.key for o in store.list("a/", start_after="a/1")] == ["a/2"]
    assert [o.size for o in store.list("")] == [11, 10, 0]


def test_missing_keys_raise_not_found_and_delete_of_nothing_is_no_failure(store: Store) -> None:
    with pytest.raises(NotFound):
        store.stat("nope")
    with pytest.raises(NotFound):
        store.get("nope").read()
    assert store.delete(["nope"]) == []


def test_a_body_that_does_not_match_its_sha256_is_refused(store: Store) -> None:
    with pytest.raises(StoreError) as err:
        store.put("k", b"abc", sha256=sha(b"abd"))
    assert err.value.code == "BadDigest"
    with pytest.raises(NotFound):
        store.stat("k")


def test_multipart_is_invisible_until_complete_and_gone_after_abort(store: Store) -> None:
    part1, part2 = os.urandom(5 << 20), b"tail"
    up = store.start_multipart("m")
    up.upload_part(2, part2, sha(part2))
    up.upload_part(1, part1, sha(part1))
    with pytest.raises(NotFound):
        store.stat("m")
    up.complete()
    assert store.get("m").read() == part1 + part2
    up = store.start_multipart("n")
    up.upload_part(1, b"x", sha(b"x"))
    up.abort()
    with pytest.raises(NotFound):
        store.stat("n")


def test_put_file_in_parts_and_a_file_that_shrinks(store: Store, tmp_path: Path) -> None:
    data = os.urandom((11 << 20) + 3)  # three parts of 5 MiB at multipart_chunk_size 5 MiB
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        store.put_file("big", fd, len(data), sha256=sha(data), name=str(path))
        assert store.get("big").read() == data
        with pytest.raises(FileShrank):
            store.put_file("bigger", fd, len(data) + 10, sha256=sha(data), name=str(path))
    finally:
        os.close(fd)


def test_delete_many(store: Store) -> None:
    for i in range(5):
        store.put(f"d/{i}", b"x", sha256=sha(b"x"))
    assert store.delete([f"d/{i}" for i in range(4)]) == []
    assert [o.key for o in store.list("d/")] == ["d/4"]


# --- MemoryStore's test controls --------------------------------------------------------------

def test_memory_archived_objects_need_a_restore_then_time() -> None:
    store = MemoryStore()
    store.add("cold", b"frozen", storage_class="GLACIER")
    with pytest.raises(Archived):
        store.get("cold")
    assert store.stat("cold").restore is None
    assert store.request_restore("cold", days=1, tier="Bulk") is True
    assert store.request_restore("cold", days=1, tier="Bulk") is False  # already under way
    assert store.stat("cold").restore == 'ongoing-request="true"'
    with pytest.raises(Archived):
        store.get("cold")
    store.finish_restore("cold")
    assert 'ongoing-request="false"' in (store.stat("cold").restore or "")
    assert store.get("cold").read() == b"frozen"


def test_memory_locked_keys_refuse_delete_and_clock_sets_times() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = MemoryStore(clock=lambda: now[0], versioning=None)
    store.put("a", b"1", sha256=sha(b"1"))
    now[0] += timedelta(days=3)
    store.put("b", b"2", sha256=sha(b"2"), storage_class="STANDARD_IA")
    store.locked.add("a")
    failures = store.delete(["a", "b"])
    assert [type(f) for f in failures] == [Locked] and failures[0].key == "a"
    assert [(o.key, o.last_modified.day, o.storage_class) for o in store.list("")] == [("a", 1, "STANDARD")]
    assert store.versioning() is None


def test_boto_store_resumes_a_body_that_breaks(agent: Any) -> None:
    st = agent.data["storage"]
    store = BotoStore(Storage(bucket=agent.bucket, prefix="p", region="us-east-1", endpoint_url=st["endpoint_url"],
                              access_key_id=st["access_key_id"], secret_access_key=st["secret_access_key"]))
    data = os.urandom(3 << 20)
    store.put("r", data, sha256=sha(data))
    body = store.get("r", 10)
    first = body.read(1 << 20)

    class Broken:
        def read(self, n: int | None = None) -> bytes:
            raise ConnectionResetError("reset by peer")

        def close(self) -> None:
            pass

    body.stream = Broken()  # type: ignore[attr-defined]
    rest = body.read()
    while chunk := body.read():
        rest += chunk
    assert first + rest == data[10:]
    assert store.versioning() in (None, "Enabled", "Suspended")


def test_keys_that_need_escaping_round_trip(store: Store) -> None:
    keys = ["sp ace/a+b=c&d", "ünï/cödé?x#y", "p%20q/~tilde*'()"]
    for k in keys:
        store.put(k, k.encode(), sha256=sha(k.encode()))
    assert sorted(o.key for o in store.list("")) == sorted(keys)
    for k in keys:
        assert store.get(k).read() == k.encode() and store.stat(k).size == len(k.encode())
    assert store.delete(keys) == [] and list(store.list("")) == []


def test_job_modules_load_without_an_s3_client_library() -> None:
    """Jobs know the Store only: loading them costs no botocore import (the slow part of a start);
    the store implementation is imported when a job first opens its store."""
    import subprocess
    import sys

    code = ("import sys, backup_agent.jobs.files, backup_agent.jobs.command, backup_agent.jobs.browse; "
            "print(sorted(m for m in ('botocore', 'boto3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- BotoStore's translation of S3's answers (botocore's Stubber: no network) ---------------------

def stubbed() -> tuple[BotoStore, Any]:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    storage = Storage(bucket="b", prefix="p", region="us-east-1")
    return BotoStore(storage, client=client), Stubber(client)


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("NoSuchKey", 404, NotFound), ("InvalidObjectState", 403, Archived), ("AccessDenied", 403, Denied),
    ("SignatureDoesNotMatch", 403, Denied), ("ExpiredToken", 400, Denied), ("InvalidAccessKeyId", 403, Denied),
    ("SlowDown", 503, Unreachable), ("XAmzContentChecksumMismatch", 400, StoreError)])
def test_s3_error_codes_become_store_errors(code: str, status: int, kind: type[StoreError]) -> None:
    store, stub = stubbed()
    stub.add_client_error("get_object", service_error_code=code, http_status_code=status, service_message="no")
    with stub, pytest.raises(kind) as err:
        store.get("k")
    assert type(err.value) is kind and code in str(err.value) and "\n" not in str(err.value)


def test_a_put_answered_without_an_etag_is_sent_again_then_incomplete() -> None:
    store, stub = stubbed()
    stub.add_response("put_object", {})
    stub.add_response("put_object", {"ETag": '"e"'})
    for _ in range(3):
        stub.add_response("put_object", {})
    with stub:
        store.put("k", b"x", sha256=sha(b"x"))  # the second answer names the object
        with pytest.raises(Incomplete):
            store.put("k", b"x", sha256=sha(b"x"))


def test_object_lock_refusals_are_locked_and_every_write_carries_retention() -> None:
    store, stub = stubbed()
    store.object_lock = ("COMPLIANCE", 30)
    # Under a lock every version is deleted by its id (a plain DELETE would only hide it).
    stub.add_response("list_object_versions", {"Versions": [
        {"Key": "a", "VersionId": "va"}, {"Key": "b", "VersionId": "vb"}, {"Key": "ab", "VersionId": "other"}]},
        {"Bucket": store.bucket, "Prefix": ""})
    stub.add_response("delete_objects", {"Errors": [
        {"Key": "a", "Code": "AccessDenied", "Message": "Access Denied because object protected by object lock."},
        {"Key": "b", "Code": "NoSuchKey", "Message": "gone"}]},
        {"Bucket": store.bucket, "Delete": {"Objects": [{"Key": "a", "VersionId": "va"},
                                                        {"Key": "b", "VersionId": "vb"}], "Quiet": True}})
    seen: list[dict[str, Any]] = []
    store.client.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: seen.append(params))
    stub.add_response("put_object", {"ETag": '"e"'})
    with stub:
        failures = store.delete(["a", "b"])
        store.put("k", b"x", sha256=sha(b"x"))
    assert [(type(f), f.key) for f in failures] == [(Locked, "a")]
    until = seen[0]["ObjectLockRetainUntilDate"]
    assert seen[0]["ObjectLockMode"] == "COMPLIANCE" and until - datetime.now(UTC) > timedelta(days=29)


def test_a_range_past_the_end_gives_what_there_is(store: Store) -> None:
    store.put("short", b"hello", sha256=sha(b"hello"))
    assert store.get("short", 0, 100).read() == b"hello"
    body = store.get("short", 2, 100)
    assert body.read(2) == b"ll" and body.read(10) == b"o" and body.read(10) == b""
