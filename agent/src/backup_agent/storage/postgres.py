"""A PostgreSQL database as a storage destination (`storage.type: postgresql`): the seed's
"dedicated database in RDS", for sites whose backup software may only write to a database.

Layout (schema `backup_agent`, created on first use, versioned in `meta`):

    objects(key PK, id, size, sha256, etag, requested_class, last_modified)   one row per object
    chunks(id, part, n, start, data bytea)                                    its bytes, CHUNK each
    uploads(id, key, requested_class, started), parts(id, part, size, sha256) multipart in progress

Why chunks of bytea rather than one bytea per object or large objects, with figures:
- One bytea per object caps an object at 1 GB, and a value is materialised whole on the server
  and in the client when it is sent: a 500 MiB dump costs 500 MiB of RAM on both sides (twice
  that in text format), and a 64 KiB ranged get of a pack reads the whole pack.
- Large objects (pg_largeobject) store 2 KiB pages in one shared catalog table (a 1 GiB object is
  524,288 rows there), are not deleted with the row that names them (orphans need vacuumlo), carry
  their own privileges, and are awkward in logical dumps and on RDS.
- Rows of CHUNK (4 MiB) bytea with STORAGE EXTERNAL (the agent's data is already compressed or
  encrypted, so pglz would only burn CPU): a 1 GiB object is 256 rows, nothing ever holds more
  than one chunk in memory, and `substring()` of an uncompressed external value fetches only the
  2 KiB TOAST slices it covers, so a ranged get reads about what it returns.

A write is visible only when complete: a put is one transaction; multipart parts are written as
chunks under the upload's own id, which no `objects` row names until `complete()` points one at it
in one transaction (an UPDATE that leaves `data` alone reuses its TOAST value: nothing is copied).

No storage class exists in a database: the class a job asks for is recorded (`requested_class`)
but nothing is ever archived, so every object reports STANDARD and is always readable. There is
no versioning either: an overwrite or a delete is final.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from backup_agent.storage.bodies import FileShrank
from backup_agent.storage.store import (
    Denied,
    NotFound,
    ObjectInfo,
    Readable,
    StoreError,
    Unreachable,
)

if TYPE_CHECKING:
    from backup_agent.config import Storage

T = TypeVar("T")

SCHEMA_VERSION = 1
CHUNK = 4 << 20
LIST_PAGE = 1000
DELETE_BATCH = 1000
# libpq's words for a TLS setup that cannot work; retrying would not change it. (A dropped TLS
# connection, "SSL connection has been closed unexpectedly", is retried like any other.)
TLS_PROBLEMS = ("does not support SSL", "certificate", "sslmode")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` cannot be used, or None. Never quotes the string: it may hold a password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "not a libpq connection string (key=value pairs or a postgresql:// URI)"
    if "password" in params:
        return "must not contain a password; set storage.password (the data bag item's db_password)"
    return None


def label_of(dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', 'localhost')}{port}/{p.get('dbname', '')}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[0].split())
    return text or type(err).__name__


def _upper_bound(prefix: str) -> str | None:
    """The smallest string above every key starting with `prefix` in byte (C collation) order."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


class PostgresStore:
    """The Store interface on psycopg 3; one connection per thread, opened on first use."""

    def __init__(self, dsn: str, *, password: str | None = None, sslmode: str | None = None,
                 sslrootcert: str | None = None, schema: str = "backup_agent", attempts: int = 5,
                 retry_delay: float = 0.5, connect_timeout: int = 10, abort_multipart_days: int = 7) -> None:
        if problem := dsn_problem(dsn):
            raise StoreError(f"storage.dsn: {problem}", code="BadConfig")
        self.label = label_of(dsn)
        self._dsn = dsn
        # Kept off the environment and argv (no PGPASSWORD): libpq gets it as a connection parameter.
        self._kwargs: dict[str, Any] = {"connect_timeout": connect_timeout, "application_name": "backup-agent"}
        if password:
            self._kwargs["password"] = password
        if sslmode:
            self._kwargs["sslmode"] = sslmode
        if sslrootcert:
            self._kwargs["sslrootcert"] = sslrootcert
        self.schema = schema
        self.attempts = max(1, attempts)
        self.retry_delay = retry_delay
        self.abort_multipart_days = abort_multipart_days
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._ready = False

    def __repr__(self) -> str:
        return f"PostgresStore({self.label!r})"

    # --- connections, retries, errors ------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn
        conn = psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def _error(self, err: psycopg.Error, what: str, key: str) -> tuple[bool, StoreError]:
        """(retry?, the StoreError to raise). Only failures of the connection are retried: the
        statements below are idempotent, and a statement the server refused fails the same again."""
        where = f"{self.label}: {what} {key}".rstrip()
        msg = f"{where}: {_one_line(err)}"
        state = err.sqlstate or ""
        if isinstance(err, pgerr.InsufficientPrivilege) or state.startswith("28") \
                or "password authentication failed" in str(err) or "no password supplied" in str(err):
            return False, Denied(msg, code=state or "AccessDenied", key=key)
        if any(s in str(err) for s in TLS_PROBLEMS):
            return False, Unreachable(f"{msg} (check storage.sslmode/sslrootcert)", code="TLS", key=key)
        if isinstance(err, pgerr.SerializationFailure | pgerr.DeadlockDetected):
            return True, StoreError(msg, code=state, key=key)
        if isinstance(err, psycopg.OperationalError):
            return True, Unreachable(msg, code=state or "ConnectionFailed", key=key)
        return False, StoreError(msg, code=state, key=key)

    def _call(self, what: str, key: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """The one retry layer: reconnect and run `fn` again when the connection failed."""
        delay = self.retry_delay
        for attempt in range(self.attempts):
            try:
                conn = self._conn()
                if not self._ready:
                    self._ensure_schema(conn)
                return fn(conn)
            except psycopg.Error as e:
                retry, err = self._error(e, what, key)
                conn_gone = getattr(self._local, "conn", None)
                if conn_gone is not None and (conn_gone.broken or conn_gone.closed):
                    self._drop()
                if not retry or attempt == self.attempts - 1:
                    raise err from None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        try:
            row = conn.execute(self._q("SELECT max(version) FROM {s}.meta")).fetchone()
        except (pgerr.UndefinedTable, pgerr.InvalidSchemaName):
            row = None
        if row is None or row[0] is None:
            self._create_schema(conn)
        elif row[0] > SCHEMA_VERSION:
            raise StoreError(f"{self.label}: schema {self.schema} is version {row[0]}, newer than this agent "
                             f"knows ({SCHEMA_VERSION}): upgrade the agent", code="SchemaVersion")
        # Uploads a crashed run left behind, as S3's abort-incomplete-multipart lifecycle rule does.
        # A role that may only read (a restore host) leaves them to the writers.
        try:
            with conn.transaction():
                stale = conn.execute(self._q("DELETE FROM {s}.uploads WHERE started < now()"
                                             " - make_interval(days => %s) RETURNING id"),
                                     (self.abort_multipart_days,)).fetchall()
                if stale:
                    ids = [r[0] for r in stale]
                    conn.execute(self._q("DELETE FROM {s}.chunks WHERE id = ANY(%s)"), (ids,))
                    conn.execute(self._q("DELETE FROM {s}.parts WHERE id = ANY(%s)"), (ids,))
        except pgerr.InsufficientPrivilege:
            pass
        self._ready = True

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        # Created only when missing: CREATE ... IF NOT EXISTS still needs the CREATE privilege, and
        # a DBA may have created the schema for a user that lacks it. The advisory lock makes
        # agents that start together create it once.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('backup_agent schema', 0))")
            conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {s}"))
            for stmt in (
                "CREATE TABLE IF NOT EXISTS {s}.meta (version int NOT NULL,"
                " created timestamptz NOT NULL DEFAULT now())",
                "CREATE SEQUENCE IF NOT EXISTS {s}.ids",
                # C collation: keys sort by their UTF-8 bytes, the order S3 lists them in.
                "CREATE TABLE IF NOT EXISTS {s}.objects (key text COLLATE \"C\" PRIMARY KEY, id bigint NOT NULL UNIQUE,"
                " size bigint NOT NULL, sha256 text, etag text NOT NULL, requested_class text NOT NULL,"
                " last_modified timestamptz NOT NULL)",
                "CREATE TABLE IF NOT EXISTS {s}.chunks (id bigint NOT NULL, part int NOT NULL, n int NOT NULL,"
                " start bigint, data bytea NOT NULL, PRIMARY KEY (id, part, n))",
                "ALTER TABLE {s}.chunks ALTER COLUMN data SET STORAGE EXTERNAL",
                "CREATE INDEX IF NOT EXISTS chunks_start ON {s}.chunks (id, start)",
                "CREATE TABLE IF NOT EXISTS {s}.uploads (id bigint PRIMARY KEY, key text COLLATE \"C\" NOT NULL,"
                " requested_class text NOT NULL, started timestamptz NOT NULL DEFAULT now())",
                "CREATE TABLE IF NOT EXISTS {s}.parts (id bigint NOT NULL, part int NOT NULL, size bigint NOT NULL,"
                " sha256 text NOT NULL, PRIMARY KEY (id, part))",
            ):
                conn.execute(self._q(stmt))
            if conn.execute(self._q("SELECT count(*) FROM {s}.meta")).fetchone() == (0,):
                conn.execute(self._q("INSERT INTO {s}.meta (version) VALUES (%s)"), (SCHEMA_VERSION,))

    # --- reading ---------------------------------------------------------------------------------

    def _info(self, row: tuple[Any, ...]) -> ObjectInfo:
        key, size, etag, modified = row
        return ObjectInfo(key=key, size=size, last_modified=modified.astimezone(UTC), etag=etag)

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        # Keyset pagination rather than a server-side cursor: a page is one short statement, and
        # after a dropped connection the listing resumes after the last key it returned.
        upper = _upper_bound(prefix)
        after = start_after
        while True:
            def page(conn: psycopg.Connection[Any], after: str = after) -> builtins.list[tuple[Any, ...]]:
                return conn.execute(self._q(
                    "SELECT key, size, etag, last_modified FROM {s}.objects WHERE key >= %s AND key > %s"
                    " AND (%s::text IS NULL OR key < %s) AND starts_with(key, %s) ORDER BY key LIMIT %s"),
                    (prefix, after, upper, upper, prefix, LIST_PAGE)).fetchall()

            rows = self._call("list", prefix, page)
            for row in rows:
                yield self._info(row)
            if len(rows) < LIST_PAGE:
                return
            after = rows[-1][0]

    def _row(self, conn: psycopg.Connection[Any], key: str) -> tuple[Any, ...]:
        row = conn.execute(self._q("SELECT key, size, etag, last_modified, id FROM {s}.objects WHERE key = %s"),
                           (key,)).fetchone()
        if row is None:
            raise NotFound(f"{self.label}: {key}: no such key", code="NoSuchKey", key=key)
        return tuple(row)

    def stat(self, key: str) -> ObjectInfo:
        return self._info(self._call("stat", key, lambda c: self._row(c, key))[:4])

    def get(self, key: str, start: int = 0, end: int | None = None) -> _ChunkBody:
        row = self._call("get", key, lambda c: self._row(c, key))
        size, oid = row[1], row[4]
        stop = size if end is None else min(end, size)
        return _ChunkBody(self, key, oid, min(start, stop), stop)

    def _read_at(self, key: str, oid: int, pos: int, n: int) -> bytes:
        def fetch(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute(self._q(
                "SELECT substring(data FROM (%s::bigint - start + 1)::int FOR %s::int) FROM {s}.chunks"
                " WHERE id = %s AND start <= %s ORDER BY start DESC LIMIT 1"),
                (pos, n, oid, pos), binary=True).fetchone()
            return bytes(row[0]) if row else b""

        data = self._call("get", key, fetch)
        if not data:
            raise NotFound(f"{self.label}: {key}: replaced or deleted while it was read", code="NoSuchKey", key=key)
        return data

    # --- writing ---------------------------------------------------------------------------------

    def _write_chunks(self, conn: psycopg.Connection[Any], oid: int, part: int, read: Callable[[int], bytes],
                      size: int | None, *, with_start: bool) -> tuple[int, str]:
        """Insert the body as chunks of `oid`/`part`; (bytes written, their sha256)."""
        digest = hashlib.sha256()
        written, n = 0, 0
        with conn.cursor() as cur:
            while size is None or written < size:
                want = CHUNK if size is None else min(CHUNK, size - written)
                data = read(want)
                if not data:
                    break
                digest.update(data)
                cur.execute(self._q("INSERT INTO {s}.chunks (id, part, n, start, data) VALUES (%s, %s, %s, %s, %s)"),
                            (oid, part, n, written if with_start else None, data), binary=True)
                written += len(data)
                n += 1
        return written, digest.hexdigest()

    def _replace(self, conn: psycopg.Connection[Any], key: str, oid: int, size: int, sha: str | None, etag: str,
                 storage_class: str | None) -> None:
        """Point `key` at the chunks of `oid` and drop what it named before; inside a transaction."""
        # Writers of one key queue here, so neither leaves the other's chunks behind unnamed.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (key,))
        old = conn.execute(self._q("SELECT id FROM {s}.objects WHERE key = %s"), (key,)).fetchone()
        conn.execute(self._q(
            "INSERT INTO {s}.objects (key, id, size, sha256, etag, requested_class, last_modified)"
            " VALUES (%s, %s, %s, %s, %s, %s, now()) ON CONFLICT (key) DO UPDATE SET id = excluded.id,"
            " size = excluded.size, sha256 = excluded.sha256, etag = excluded.etag,"
            " requested_class = excluded.requested_class, last_modified = excluded.last_modified"),
            (key, oid, size, sha, etag, storage_class or "STANDARD"))
        if old is not None:
            conn.execute(self._q("DELETE FROM {s}.chunks WHERE id = %s"), (old[0],))

    def _new_id(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(self._q("SELECT nextval('{s}.ids')")).fetchone()
        assert row is not None
        return int(row[0])

    def _put(self, key: str, read: Callable[[int], bytes], size: int | None, rewind: Callable[[], None],
             sha256: str, storage_class: str | None) -> None:
        def write(conn: psycopg.Connection[Any]) -> None:
            rewind()
            with conn.transaction():
                oid = self._new_id(conn)
                written, got = self._write_chunks(conn, oid, 1, read, size, with_start=True)
                if got != sha256.lower():
                    # Raised inside the transaction: nothing of it stays.
                    raise StoreError(f"{self.label}: put {key}: sha256 of the {written} bytes received is {got}, "
                                     f"not {sha256}", code="BadDigest", key=key)
                self._replace(conn, key, oid, written, got, got, storage_class)

        self._call("put", key, write)

    def put(self, key: str, data: bytes | Readable, *, sha256: str, storage_class: str | None = None) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data)
            pos = 0

            def read(n: int) -> bytes:
                nonlocal pos
                chunk = bytes(view[pos:pos + n])
                pos += len(chunk)
                return chunk

            def rewind() -> None:
                nonlocal pos
                pos = 0

            self._put(key, read, len(view), rewind, sha256, storage_class)
        else:
            body = data

            def seek0() -> None:
                body.seek(0)

            self._put(key, body.read, len(body), seek0, sha256, storage_class)

    def put_file(self, key: str, fd: int, size: int, *, sha256: str, name: str,
                 storage_class: str | None = None) -> None:
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            chunk = os.pread(fd, n, pos)
            if not chunk:
                raise FileShrank(f"{name}: ended at {pos} bytes while being uploaded")
            pos += len(chunk)
            return chunk

        def rewind() -> None:
            nonlocal pos
            pos = 0

        self._put(key, read, size, rewind, sha256, storage_class)

    def start_multipart(self, key: str, *, storage_class: str | None = None) -> PgMultipart:
        def start(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                oid = self._new_id(conn)
                conn.execute(self._q("INSERT INTO {s}.uploads (id, key, requested_class) VALUES (%s, %s, %s)"),
                             (oid, key, storage_class or "STANDARD"))
            return oid

        # Not idempotent, but harmless to repeat: an upload nobody completes is removed after
        # abort_multipart_days.
        return PgMultipart(self, key, self._call("start multipart", key, start))

    def delete(self, keys: Iterable[str]) -> builtins.list[StoreError]:
        failures: builtins.list[StoreError] = []
        batch: builtins.list[str] = []

        def flush() -> None:
            todo = builtins.list(batch)
            batch.clear()

            def run(conn: psycopg.Connection[Any]) -> None:
                with conn.transaction():
                    ids = [r[0] for r in conn.execute(self._q(
                        "DELETE FROM {s}.objects WHERE key = ANY(%s) RETURNING id"), (todo,)).fetchall()]
                    if ids:
                        conn.execute(self._q("DELETE FROM {s}.chunks WHERE id = ANY(%s)"), (ids,))

            try:
                self._call("delete", f"({len(todo)} keys from {todo[0]})", run)
            except StoreError as e:
                failures.extend(type(e)(f"{self.label}: delete {k}: {e}", code=e.code, key=k) for k in todo)

        for key in keys:
            batch.append(key)
            if len(batch) >= DELETE_BATCH:
                flush()
        if batch:
            flush()
        return failures

    def request_restore(self, key: str, *, days: int | None, tier: str) -> bool:
        """Nothing is archived in a database: every object is readable now. Answers True (asked)
        for an existing key so a caller that asks anyway goes on to read it."""
        self.stat(key)
        return True

    def versioning(self) -> str | None:
        """None: a database destination keeps no earlier versions (like a bucket where versioning
        was never enabled); an overwrite or a delete is final."""
        return None


class PgMultipart:
    """Parts are chunks under the upload's id; `complete()` names them in one transaction."""

    def __init__(self, store: PostgresStore, key: str, upload_id: int) -> None:
        self.store = store
        self.key = key
        self.upload_id = upload_id

    def upload_part(self, number: int, data: bytes, sha256: str) -> None:
        st, oid = self.store, self.upload_id
        got = hashlib.sha256(data).hexdigest()
        if got != sha256.lower():
            raise StoreError(f"{st.label}: part {number} of {self.key}: sha256 of the bytes received is {got}, "
                             f"not {sha256}", code="BadDigest", key=self.key)
        view = memoryview(data)

        def write(conn: psycopg.Connection[Any]) -> None:
            pos = 0

            def read(n: int) -> bytes:
                nonlocal pos
                chunk = bytes(view[pos:pos + n])
                pos += len(chunk)
                return chunk

            with conn.transaction():
                if conn.execute(st._q("SELECT 1 FROM {s}.uploads WHERE id = %s FOR SHARE"), (oid,)).fetchone() is None:
                    raise NotFound(f"{st.label}: {self.key}: no such upload (aborted or completed)",
                                   code="NoSuchUpload", key=self.key)
                # A retried part replaces what an earlier attempt wrote.
                conn.execute(st._q("DELETE FROM {s}.chunks WHERE id = %s AND part = %s"), (oid, number))
                st._write_chunks(conn, oid, number, read, len(view), with_start=False)
                conn.execute(st._q("INSERT INTO {s}.parts (id, part, size, sha256) VALUES (%s, %s, %s, %s)"
                                   " ON CONFLICT (id, part) DO UPDATE SET size = excluded.size,"
                                   " sha256 = excluded.sha256"), (oid, number, len(view), got))

        st._call("upload part", self.key, write)

    def complete(self) -> None:
        st, oid = self.store, self.upload_id

        def finish(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                up = conn.execute(st._q("DELETE FROM {s}.uploads WHERE id = %s RETURNING requested_class"),
                                  (oid,)).fetchone()
                if up is None:
                    # A retry after a commit whose answer was lost finds its own object in place.
                    if conn.execute(st._q("SELECT 1 FROM {s}.objects WHERE id = %s"), (oid,)).fetchone():
                        return
                    raise NotFound(f"{st.label}: {self.key}: no such upload (aborted or completed)",
                                   code="NoSuchUpload", key=self.key)
                parts = conn.execute(st._q("DELETE FROM {s}.parts WHERE id = %s RETURNING part, size, sha256"),
                                     (oid,)).fetchall()
                parts.sort()
                if [p[0] for p in parts] != builtins.list(range(1, len(parts) + 1)):
                    raise StoreError(f"{st.label}: complete {self.key}: parts {[p[0] for p in parts]} are not "
                                     "numbered 1..N", code="InvalidPart", key=self.key)
                # Offsets now that every part's size is known; `data` is not rewritten.
                conn.execute(st._q(
                    "UPDATE {s}.chunks c SET start = o.start FROM (SELECT part, n, sum(octet_length(data))"
                    " OVER (ORDER BY part, n) - octet_length(data) AS start FROM {s}.chunks WHERE id = %s) o"
                    " WHERE c.id = %s AND c.part = o.part AND c.n = o.n"), (oid, oid))
                size = sum(p[1] for p in parts)
                etag = hashlib.sha256("".join(p[2] for p in parts).encode()).hexdigest() + f"-{len(parts)}"
                st._replace(conn, self.key, oid, size, None, etag, up[0])

        st._call("complete", self.key, finish)

    def abort(self) -> None:
        st, oid = self.store, self.upload_id

        def drop(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(st._q("DELETE FROM {s}.uploads WHERE id = %s"), (oid,))
                conn.execute(st._q("DELETE FROM {s}.parts WHERE id = %s"), (oid,))
                if conn.execute(st._q("SELECT 1 FROM {s}.objects WHERE id = %s"), (oid,)).fetchone() is None:
                    conn.execute(st._q("DELETE FROM {s}.chunks WHERE id = %s"), (oid,))

        st._call("abort", self.key, drop)


class _ChunkBody:
    """[pos, end) of an object, fetched a chunk's slice at a time; a dropped connection is
    reconnected by the store's retry layer and the read goes on from `pos`."""

    def __init__(self, store: PostgresStore, key: str, oid: int, pos: int, end: int) -> None:
        self.store, self.key, self.oid, self.pos, self.end = store, key, oid, pos, end
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        want = len(self.buf) + self.end - self.pos if n is None or n < 0 else n
        out: builtins.list[bytes] = []
        while want > 0 and (self.buf or self.pos < self.end):
            if not self.buf:
                self.buf = self.store._read_at(self.key, self.oid, self.pos, min(CHUNK, self.end - self.pos))
                self.pos += len(self.buf)
            take, self.buf = self.buf[:want], self.buf[want:]
            out.append(take)
            want -= len(take)
        return b"".join(out)

    def close(self) -> None:
        self.buf = b""


def from_config(storage: Storage) -> PostgresStore:
    """The store a config's `storage` (type: postgresql) names; what `open_store` calls."""
    assert storage.dsn is not None  # the loader requires it for this type
    return PostgresStore(storage.dsn, password=storage.password, sslmode=storage.sslmode,
                         sslrootcert=storage.sslrootcert, abort_multipart_days=storage.abort_multipart_days)
