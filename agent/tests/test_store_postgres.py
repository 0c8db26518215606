"""PostgresStore (storage.type: postgresql) against a real PostgreSQL from Debian, started once per
module by tests/support/databases.py; every test gets a database of its own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.databases import Postgres, postgres_server

from backup_agent import config
from backup_agent.storage import postgres as pgmod
from backup_agent.storage.bodies import FileShrank
from backup_agent.storage.postgres import PostgresStore, dsn_problem
from backup_agent.storage.store import Denied, NotFound, StoreError, Unreachable

AGENT = str(Path(sys.executable).parent / "backup-agent")
PASSWORD = "s3cr3t:pw'with\\odd chars"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with postgres_server(PASSWORD) as pg:
        yield pg


@pytest.fixture
def db(server: Postgres) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.sql(f"CREATE DATABASE {name}")
    return name


def dsn(server: Postgres, db: str, user: str = "postgres") -> str:
    return f"host=127.0.0.1 port={server.port} dbname={db} user={user}"


@pytest.fixture
def store(server: Postgres, db: str) -> Iterator[PostgresStore]:
    s = PostgresStore(dsn(server, db), password=PASSWORD, retry_delay=0.05)
    yield s
    s.close()


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    # Objects of a few KiB then span many chunks, as a large pack does with the real size.
    monkeypatch.setattr(pgmod, "CHUNK", 1000)
    return 1000


def rows(server: Postgres, db: str, table: str) -> int:
    return int(server.sql(f"SELECT count(*) FROM backup_agent.{table}", db))


def kill_store_connections(server: Postgres, db: str) -> int:
    return int(server.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                          f"WHERE datname = '{db}' AND application_name = 'backup-agent'"))


def test_put_get_stat_and_ranges_across_chunks(store: PostgresStore, small_chunks: int) -> None:
    data = os.urandom(5500)
    store.put("n/j/data/a", data, sha256=sha(data))
    info = store.stat("n/j/data/a")
    assert (info.key, info.size, info.storage_class) == ("n/j/data/a", 5500, "STANDARD")
    assert info.last_modified.tzinfo is not None
    assert store.get("n/j/data/a").read() == data
    for start, end in [(0, 10), (995, 1005), (999, 3001), (5499, None), (1000, 2000), (0, 99999)]:
        body = store.get("n/j/data/a", start, end)
        assert body.read() == data[start:end], (start, end)
    # Small reads of a body come back in order, never more than asked.
    body = store.get("n/j/data/a", 100)
    got = b""
    while piece := body.read(333):
        assert len(piece) <= 333
        got += piece
    assert got == data[100:]
    with pytest.raises(NotFound):
        store.stat("n/j/data/missing")
    with pytest.raises(NotFound):
        store.get("n/j/data/missing")


def test_wrong_sha256_is_refused_and_leaves_the_old_object(store: PostgresStore, server: Postgres, db: str) -> None:
    store.put("k", b"old", sha256=sha(b"old"))
    with pytest.raises(StoreError) as e:
        store.put("k", b"new bytes", sha256=sha(b"something else"))
    assert e.value.code == "BadDigest" and "\n" not in str(e.value)
    assert store.get("k").read() == b"old"
    with pytest.raises(StoreError):
        store.put("fresh", b"x", sha256="0" * 64)
    with pytest.raises(NotFound):
        store.stat("fresh")
    assert rows(server, db, "chunks") == 1


def test_put_file_and_a_file_that_shrank(store: PostgresStore, tmp_path: Any, small_chunks: int) -> None:
    path = tmp_path / "f"
    data = os.urandom(4321)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        store.put_file("f", fd, 4321, sha256=sha(data), name=str(path))
        assert store.get("f").read() == data
        with pytest.raises(FileShrank):
            store.put_file("g", fd, 5000, sha256=sha(data), name=str(path))
    finally:
        os.close(fd)
    with pytest.raises(NotFound):
        store.stat("g")


def test_overwrite_replaces_and_frees_the_old_bytes(store: PostgresStore, server: Postgres, db: str,
                                                    small_chunks: int) -> None:
    store.put("k", b"a" * 3000, sha256=sha(b"a" * 3000))
    store.put("k", b"b" * 1500, sha256=sha(b"b" * 1500))
    assert store.get("k").read() == b"b" * 1500
    assert rows(server, db, "chunks") == 2


def test_list_is_in_byte_order_with_prefix_start_after_and_pages(store: PostgresStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgmod, "LIST_PAGE", 3)
    keys = ["p/a", "p/B", "p/b", "p/a/x", "p/é", "p/z", "p/\U0001f600", "p/~", "q/a", "o/z", "p"]
    for k in keys:
        store.put(k, k.encode(), sha256=sha(k.encode()))
    listed = [o.key for o in store.list("p/")]
    assert listed == sorted((k for k in keys if k.startswith("p/")), key=lambda k: k.encode())
    assert [o.key for o in store.list("p/", start_after="p/b")] == [k for k in listed if k.encode() > b"p/b"]
    assert [o.key for o in store.list("")] == sorted(keys, key=lambda k: k.encode())
    assert [o.size for o in store.list("q/")] == [3]
    assert list(store.list("nothing/")) == []


def test_multipart_visible_only_at_complete(store: PostgresStore, server: Postgres, db: str,
                                            small_chunks: int) -> None:
    parts = [os.urandom(2500), os.urandom(2500), os.urandom(700)]
    up = store.start_multipart("dump", storage_class="GLACIER")
    for i in (3, 1, 2):  # parts may arrive in any order
        up.upload_part(i, parts[i - 1], sha(parts[i - 1]))
    up.upload_part(2, parts[1], sha(parts[1]))  # a retried part replaces the first attempt
    assert list(store.list("")) == []
    with pytest.raises(NotFound):
        store.stat("dump")
    up.complete()
    whole = b"".join(parts)
    info = store.stat("dump")
    assert info.size == len(whole)
    # Nothing is ever archived in a database: the class asked for is recorded, the object readable.
    assert info.storage_class == "STANDARD"
    assert store.request_restore("dump", days=1, tier="Standard") is True
    assert store.get("dump").read() == whole
    assert store.get("dump", 2400, 5100).read() == whole[2400:5100]
    assert server.sql("SELECT requested_class FROM backup_agent.objects", db) == "GLACIER"
    assert rows(server, db, "uploads") == rows(server, db, "parts") == 0
    up.complete()  # a retry after a lost answer is not an error


def test_multipart_part_with_wrong_sha_and_abort_leave_nothing(store: PostgresStore, server: Postgres,
                                                               db: str) -> None:
    up = store.start_multipart("dump")
    up.upload_part(1, b"x" * 100, sha(b"x" * 100))
    with pytest.raises(StoreError) as e:
        up.upload_part(2, b"y", sha(b"z"))
    assert e.value.code == "BadDigest"
    up.abort()
    up.abort()
    assert list(store.list("")) == []
    for table in ("objects", "chunks", "uploads", "parts"):
        assert rows(server, db, table) == 0, table
    with pytest.raises(NotFound):
        up.upload_part(1, b"x", sha(b"x"))
    with pytest.raises(NotFound):
        up.complete()


def test_delete_in_batches(store: PostgresStore, server: Postgres, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgmod, "DELETE_BATCH", 2)
    for i in range(5):
        store.put(f"d/{i}", b"x" * i, sha256=sha(b"x" * i))
    store.put("keep", b"k", sha256=sha(b"k"))
    statements: list[str] = []
    real = pgmod.PostgresStore._call

    def spy(self: PostgresStore, what: str, key: str, fn: Any) -> Any:
        statements.append(what)
        return real(self, what, key, fn)

    monkeypatch.setattr(pgmod.PostgresStore, "_call", spy)
    assert store.delete(iter([*(f"d/{i}" for i in range(5)), "never-there"])) == []
    assert statements.count("delete") == 3
    assert [o.key for o in store.list("")] == ["keep"]
    assert rows(server, db, "chunks") == 1


def test_a_dropped_connection_is_reconnected_mid_read_and_mid_list(store: PostgresStore, server: Postgres, db: str,
                                                                   small_chunks: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgmod, "LIST_PAGE", 2)
    data = os.urandom(4000)
    store.put("big", data, sha256=sha(data))
    for i in range(5):
        store.put(f"l/{i}", b"", sha256=sha(b""))
    body = store.get("big")
    first = body.read(1500)
    assert kill_store_connections(server, db) == 1
    assert first + body.read() == data
    listing = store.list("l/")
    got = [next(listing).key, next(listing).key, next(listing).key]
    kill_store_connections(server, db)
    got += [o.key for o in listing]
    assert got == [f"l/{i}" for i in range(5)]
    kill_store_connections(server, db)
    store.put("after", b"1", sha256=sha(b"1"))
    kill_store_connections(server, db)
    assert store.delete(["after"]) == []


def test_several_threads_at_once(store: PostgresStore, server: Postgres, db: str, small_chunks: int) -> None:
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(10):
                data = os.urandom(2500) + bytes([t, i])
                store.put(f"t/{t}/{i}", data, sha256=sha(data))
                store.put("shared", data, sha256=sha(data))  # writers of one key queue, none leaks chunks
                assert store.get(f"t/{t}/{i}", 1000, 2600).read() == data[1000:2600]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(list(store.list("t/"))) == 60
    assert rows(server, db, "objects") == 61
    # Every chunk belongs to a live object: 60 x 3 chunks + "shared"'s 3.
    assert rows(server, db, "chunks") == 183


def test_password_stays_out_of_messages_args_and_environment(server: Postgres, db: str) -> None:
    bad = PostgresStore(dsn(server, db), password="wrong-" + PASSWORD, retry_delay=0.01)
    with pytest.raises(Denied) as e:
        bad.stat("k")
    text = str(e.value)
    assert "password authentication failed" in text and "\n" not in text
    assert "wrong-" not in text and PASSWORD not in text and "wrong-" not in repr(bad)
    good = PostgresStore(dsn(server, db), password=PASSWORD)
    with pytest.raises(NotFound):
        good.stat("k")
    assert PASSWORD not in repr(good) and PASSWORD not in good.label
    assert PASSWORD.encode() not in Path("/proc/self/cmdline").read_bytes()
    assert "PGPASSWORD" not in os.environ
    # What the server shows of the session, and what ps shows of its backend.
    activity = server.sql(f"SELECT application_name, query FROM pg_stat_activity WHERE datname = '{db}'")
    assert "backup-agent" in activity and PASSWORD not in activity
    ps = os.popen("ps axww -o args").read()
    assert PASSWORD not in ps
    good.close()


def test_dsn_with_a_password_is_refused_without_echoing_it() -> None:
    for text in ("host=h user=u password=hunter2x", "postgresql://u:hunter2x@h/db"):
        problem = dsn_problem(text)
        assert problem and "password" in problem and "hunter2x" not in problem
        with pytest.raises(StoreError) as e:
            PostgresStore(text)
        assert "hunter2x" not in str(e.value)
    assert dsn_problem("host=h user=u dbname=d sslmode=verify-full") is None
    assert dsn_problem("host=h 'unbalanced") is not None


def test_sslmode_require_against_a_server_without_tls_fails_at_once(server: Postgres, db: str) -> None:
    s = PostgresStore(dsn(server, db), password=PASSWORD, sslmode="require", retry_delay=2)
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as e:
        s.stat("k")
    assert time.monotonic() - t0 < 2, "a TLS setup that cannot work is not retried"
    text = str(e.value)
    assert "\n" not in text and "SSL" in text and "storage.sslmode" in text and e.value.code == "TLS"
    # The root certificate option reaches libpq: verify-full with a missing bundle fails naming it.
    s = PostgresStore(dsn(server, db), password=PASSWORD, sslmode="verify-full",
                      sslrootcert="/nonexistent/rds-global-bundle.pem", retry_delay=2)
    with pytest.raises(Unreachable) as e:
        s.stat("k")
    assert "\n" not in str(e.value) and e.value.code == "TLS"


def test_nobody_listening_is_unreachable_after_retries() -> None:
    from support.databases import free_port

    s = PostgresStore(f"host=127.0.0.1 port={free_port()} dbname=x user=u", password="p", attempts=3,
                      retry_delay=0.05, connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(Unreachable) as e:
        list(s.list(""))
    assert time.monotonic() - t0 >= 0.15  # 0.05 + 0.1 of backoff between the three attempts
    assert "\n" not in str(e.value) and "refused" in str(e.value)


def test_a_role_without_rights_is_denied(store: PostgresStore, server: Postgres, db: str) -> None:
    store.put("k", b"v", sha256=sha(b"v"))  # creates the schema as its owner
    server.sql(f"CREATE ROLE reader LOGIN PASSWORD '{PASSWORD.replace(chr(39), chr(39) * 2)}';"
               "GRANT USAGE ON SCHEMA backup_agent TO reader; GRANT SELECT ON ALL TABLES IN SCHEMA backup_agent"
               " TO reader;", db)
    try:
        ro = PostgresStore(dsn(server, db, "reader"), password=PASSWORD, retry_delay=0.01)
        assert ro.get("k").read() == b"v"  # reading works with SELECT only
        with pytest.raises(Denied) as e:
            ro.put("k2", b"v", sha256=sha(b"v"))
        assert "permission denied" in str(e.value)
        assert ro.delete(["k"])[0].key == "k"
        ro.close()
    finally:
        server.sql("DROP OWNED BY reader; DROP ROLE reader;", db)


def test_a_newer_schema_is_refused(store: PostgresStore, server: Postgres, db: str) -> None:
    with pytest.raises(NotFound):  # creates the schema
        store.stat("k")
    server.sql("UPDATE backup_agent.meta SET version = 99", db)
    other = PostgresStore(dsn(server, db), password=PASSWORD)
    with pytest.raises(StoreError) as e:
        other.stat("k")
    assert "version 99" in str(e.value) and "upgrade the agent" in str(e.value)


def test_an_abandoned_upload_is_removed_after_abort_multipart_days(store: PostgresStore, server: Postgres,
                                                                    db: str) -> None:
    up = store.start_multipart("dump")
    up.upload_part(1, b"x" * 100, sha(b"x" * 100))
    fresh = store.start_multipart("dump2")
    fresh.upload_part(1, b"y", sha(b"y"))
    server.sql(f"UPDATE backup_agent.uploads SET started = now() - interval '8 days' WHERE id = {up.upload_id}", db)
    later = PostgresStore(dsn(server, db), password=PASSWORD, abort_multipart_days=7)
    assert list(later.list("")) == []
    assert server.sql("SELECT key FROM backup_agent.uploads", db) == "dump2"
    assert rows(server, db, "chunks") == rows(server, db, "parts") == 1
    later.close()


def write_config(tmp_path: Path, storage: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"node": "n", "state_dir": str(tmp_path / "state"), "storage": storage,
                                    "jobs": {}}))
    return path


def test_config_refuses_a_dsn_with_a_password_in_one_line(tmp_path: Path) -> None:
    for text in ("host=db user=backup password=hunter2x dbname=b", "postgresql://backup:hunter2x@db/b"):
        path = write_config(tmp_path, {"type": "postgresql", "dsn": text})
        proc = subprocess.run([AGENT, "-c", str(path), "validate"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "storage.dsn: must not contain a password" in proc.stderr
        assert "hunter2x" not in proc.stderr + proc.stdout
    path = write_config(tmp_path, {"type": "postgresql"})
    proc = subprocess.run([AGENT, "-c", str(path), "validate"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr.strip()) == (2, f"backup-agent: {path}: storage.dsn: required key is "
                                                         "missing")


def test_a_config_names_a_working_store(server: Postgres, db: str, tmp_path: Path) -> None:
    path = write_config(tmp_path, {"type": "postgresql", "dsn": dsn(server, db), "password": PASSWORD,
                                   "sslmode": "prefer"})
    cfg = config.load(str(path))
    assert cfg.storage.type == "postgresql" and PASSWORD not in repr(cfg.storage)
    s = pgmod.from_config(cfg.storage)
    s.put("n/j/x", b"hello", sha256=sha(b"hello"))
    assert s.get("n/j/x", 1).read() == b"ello"
    s.close()


class KillingBody:
    """A re-readable body that kills the store's connection on its first pass, mid-transaction."""

    def __init__(self, data: bytes, kill: Any) -> None:
        self.data, self.pos, self.kill, self.passes = data, 0, kill, 0

    def __len__(self) -> int:
        return len(self.data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset
        self.passes += 1
        return offset

    def read(self, n: int = -1) -> bytes:
        if self.passes == 1 and self.pos >= 2000:
            self.kill()
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_a_put_whose_connection_drops_mid_transaction_is_repeated_whole(store: PostgresStore, server: Postgres,
                                                                        db: str, small_chunks: int) -> None:
    store.put("k", b"old", sha256=sha(b"old"))
    data = os.urandom(5000)
    body = KillingBody(data, lambda: kill_store_connections(server, db))
    store.put("k", body, sha256=sha(data))
    assert body.passes == 2
    assert store.get("k").read() == data
    assert rows(server, db, "chunks") == 5  # the first attempt's chunks went with its transaction
