"""Local state under state_dir: per-job locks, last-run status, and the change-detection cache.

Everything here is a cache or a record: losing state_dir costs a rescan and re-hash, never a
wrong backup (the bucket is the truth).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from backup_agent.errors import JobFailed, Locked

log = logging.getLogger(__name__)

T = TypeVar("T")
PRELOAD_LIMIT = 100_000


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise JobFailed(f"state_dir: cannot create {path}: {exc.strerror}") from None
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class JobLock:
    """An exclusive flock per job. The kernel drops it when the holder dies, so no stale locks."""

    def __init__(self, state_dir: Path, job: str) -> None:
        self.path = ensure_dir(state_dir / "locks") / f"{job}.lock"
        self.job = job
        self._fd: int | None = None

    def __enter__(self) -> JobLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only or foreign state_dir
            raise JobFailed(f"state_dir: cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Locked(f"job {self.job} is locked by another run (pid {holder}); try again later") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def status_path(state_dir: Path, job: str) -> Path:
    return state_dir / "status" / f"{job}.json"


def read_record(path: Path) -> dict[str, Any]:
    """A JSON record the agent keeps per job (status, prune, drill, cost); {} when it is missing
    or unreadable: a lost record is a fresh start, never a failure."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(state_dir: Path, job: str) -> dict[str, Any]:
    return read_record(status_path(state_dir, job))


def write_status(state_dir: Path, job: str, status: dict[str, Any]) -> None:
    atomic_write(status_path(state_dir, job), json.dumps(status, indent=2, sort_keys=True).encode())


def record_snapshot_count(state_dir: Path, job: str, count: int) -> None:
    """After prune or a listing: the true count, for status and metrics."""
    status = read_status(state_dir, job)
    if status and status.get("snapshots") != count:
        status["snapshots"] = count
        try:
            write_status(state_dir, job, status)
        except OSError as exc:
            log.warning("cannot update status for job %s: %s", job, exc)


def prune_path(state_dir: Path, job: str) -> Path:
    # Its own file, not a field of status/<job>.json: runs rewrite that record whole.
    return state_dir / "prune" / f"{job}.json"


def read_prune(state_dir: Path, job: str) -> dict[str, Any]:
    """The job's last prune record (prune.py writes it); {} when there is none."""
    return read_record(prune_path(state_dir, job))


def damage_path(state_dir: Path, job: str) -> Path:
    # Beside the cache, not in it: deleting the cache must not forget what `check` found.
    return state_dir / "damage" / f"{job}.json"


def read_damage(state_dir: Path, job: str) -> set[str]:
    """Objects (relative keys) that `check` found missing, short or corrupt."""
    try:
        data = json.loads(damage_path(state_dir, job).read_text())
    except (OSError, ValueError):
        return set()
    objects = data.get("objects") if isinstance(data, dict) else None
    return {o for o in objects if isinstance(o, str)} if isinstance(objects, list) else set()


def save_damage(state_dir: Path, job: str, objects: set[str]) -> None:
    """Add to the record; the next run forgets them and uploads their content again."""
    known = read_damage(state_dir, job)
    if objects <= known:
        return
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # `check` may be the first verb run
    damage_path(state_dir, job).parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write(damage_path(state_dir, job), json.dumps({"objects": sorted(known | objects)}, indent=1).encode())


def clear_damage(state_dir: Path, job: str, healed: set[str]) -> None:
    """After a snapshot that no longer uses `healed` is complete."""
    if not healed:
        return
    left = read_damage(state_dir, job) - healed
    if left:
        atomic_write(damage_path(state_dir, job), json.dumps({"objects": sorted(left)}, indent=1).encode())
    else:
        with contextlib.suppress(FileNotFoundError):
            damage_path(state_dir, job).unlink()


_UNDECODED = "hex:"  # no scanned path starts so: they are all absolute


def _db_path(path: str) -> str:
    """SQLite's text is UTF-8; a name that is not (held as surrogate escapes since the scan) is
    stored as its bytes in hex, so its file is found unchanged next time instead of making
    every commit fail after the manifest was stored."""
    try:
        path.encode()
        return path
    except UnicodeEncodeError:
        return _UNDECODED + os.fsencode(path).hex()


def _py_path(key: str) -> str:
    return os.fsdecode(bytes.fromhex(key[len(_UNDECODED) :])) if key.startswith(_UNDECODED) else key


def _db_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(_db_path(r[0]), *r[1:]) for r in rows]


# A file's row: its stat keys, its content's sha256 and where that lives: `object`/`offset`/`stored`
# (its encoded length) for one piece in a pack; `chunks` the manifest's chunk list as JSON for a
# big file cut in pieces (object ''). An empty file has none of them.
_FILES_COLUMNS = ("path TEXT PRIMARY KEY, size INT, mtime_ns INT, ino INT, ctime_ns INT, sha256 TEXT, object TEXT, "
                  "offset INT, chunks TEXT, stored INT")
_FILES_SELECT = "size, mtime_ns, ino, ctime_ns, sha256, object, offset, chunks, stored"
# A cache of the agent before the `stored` column: format 3's fields were one JSON `ref`
# ({"stored": n} or {"chunks": [...]}). Moved into the columns in place: the cache keeps its
# baseline and its blobs, so the upgrade's first run neither re-reads nor re-uploads anything.
_FILES_FROM_REF = """
    ALTER TABLE files ADD COLUMN stored INT;
    UPDATE files SET stored = json_extract(ref, '$.stored'), ref = json_extract(ref, '$.chunks') WHERE ref IS NOT NULL;
    ALTER TABLE files RENAME COLUMN ref TO chunks;
    DROP TABLE IF EXISTS files_next;
"""


# The Bloom filter over content ids (FileCache._build_blob_filter): 2 MiB, two probes of 24
# bits each from the sha256 (uniform already); at 100k ids about 1 lookup in 6,000 is queried in
# vain, at the limit of 1M about 1 in 70.
BLOB_FILTER_BITS = 1 << 24
BLOB_FILTER_LIMIT = 1_000_000


def _probes(sha256: str) -> tuple[int, int]:
    return int(sha256[:6], 16), int(sha256[6:12], 16)


def _filter_add(bits: bytearray, sha256: str) -> None:
    for probe in _probes(sha256):
        bits[probe >> 3] |= 1 << (probe & 7)


def _filter_has(bits: bytearray, sha256: str) -> bool:
    a, b = _probes(sha256)  # unrolled: once per piece a scan stores
    return bool(bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7)))


def _locked(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def wrapper(self: FileCache, *args: Any, **kwargs: Any) -> T:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class FileCache:
    """What the last complete snapshot held (stat keys → content), and where content lives.

    `files` answers "did this path change?" without reading it; `blobs` answers "is this content
    already stored?" so nothing is uploaded twice. Both are tied to one storage target: a
    different bucket/prefix/endpoint starts from empty.
    """

    def __init__(self, state_dir: Path, job: str, target: str) -> None:
        path = ensure_dir(state_dir / "cache") / f"{job}.sqlite"
        # Upload threads record blobs while the scan thread looks them up: one lock serialises both.
        self.lock = threading.RLock()
        self.target = target
        self._files: dict[str, tuple[Any, ...]] | None = None
        self._preload_tried = False
        self._changed: list[tuple[Any, ...]] = []  # the in-memory baseline's staging (begin_files)
        # Built on the first lookup_blob (see _build_blob_filter); empty: no filter.
        self._blob_filter: bytearray | None = None
        self._seen: set[str] = set()
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # A cache: losing the last writes to a crash costs a re-hash, so skip the fsyncs.
            self.db.execute("PRAGMA synchronous=OFF")
            # A cache from before format 3 has no `ref`/`stored` columns: it is rebuilt (a rescan
            # and re-hash; what it described is raw content format 3 does not reuse anyway).
            cols = self._file_columns()
            if "ref" in cols and self._columns_from_ref():
                cols = self._file_columns()
            if cols and "chunks" not in cols:
                self.db.executescript("DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS blobs; "
                                      "DROP TABLE IF EXISTS files_next; DELETE FROM meta;")
            self.db.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
                CREATE TABLE IF NOT EXISTS files ({_FILES_COLUMNS});
                CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, object TEXT, offset INT, size INT,
                    stored INT);
                DROP TABLE IF EXISTS unconfirmed;
                CREATE INDEX IF NOT EXISTS blobs_object ON blobs (object);
                """
            )
        except sqlite3.DatabaseError as exc:
            raise JobFailed(f"state_dir: cache {path} is unusable ({exc}); delete it to rebuild") from None
        if self.get_meta("target") != target:
            self.reset()

    def _file_columns(self) -> set[str]:
        return {r[1] for r in self.db.execute("PRAGMA table_info(files)")}

    def _columns_from_ref(self) -> bool:
        """The `ref` of an older cache moved into its columns; False (nothing changed) when a row's
        JSON is unreadable: then the cache is rebuilt, as any cache can be."""
        try:
            self.db.executescript(f"BEGIN; {_FILES_FROM_REF} COMMIT;")
            return True
        except sqlite3.DatabaseError:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return False

    def _tx(self, statements: list[tuple[str, Any]]) -> None:
        self.db.execute("BEGIN")
        try:
            for sql, params in statements:
                if isinstance(params, list):
                    self.db.executemany(sql, params)
                else:
                    self.db.execute(sql, params)
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk): keep the real one.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    @_locked
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_locked
    def reset(self) -> None:
        self._files, self._preload_tried = None, False
        self._tx([("DELETE FROM files", ()), ("DELETE FROM blobs", ()), ("DELETE FROM meta", ()),
                  ("INSERT INTO meta VALUES ('target', ?)", (self.target,))])

    def lookup_file(self, path: str) -> tuple[Any, ...] | None:
        if not self._preload_tried:
            self._files, self._preload_tried = self._preload_files(), True
        if self._files is not None:
            return self._files.get(path)
        with self.lock:
            return self.db.execute(  # type: ignore[no-any-return]
                f"SELECT {_FILES_SELECT} FROM files WHERE path=?",
                (_db_path(path),)
            ).fetchone()

    @_locked
    def _preload_files(self) -> dict[str, tuple[Any, ...]] | None:
        """One query instead of one per file, when the baseline is small enough to hold in memory
        (about 200 bytes a row); huge trees keep per-path lookups so memory stays bounded."""
        (count,) = self.db.execute("SELECT COUNT(*) FROM files").fetchone()
        if count > PRELOAD_LIMIT:
            return None
        rows = self.db.execute(f"SELECT path, {_FILES_SELECT} FROM files")
        return {_py_path(r[0]): r[1:] for r in rows}

    def lookup_blob(self, sha256: str) -> tuple[str, int, int] | None:
        """Where content with this sha256 is stored: (object, offset, encoded length)."""
        if self._blob_filter is None:
            self._build_blob_filter()
        if self._blob_filter and not _filter_has(self._blob_filter, sha256):
            return None  # new content, the common case of a first run: no query, no lock
        with self.lock:
            row = self.db.execute("SELECT object, offset, stored FROM blobs WHERE sha256=? AND stored IS NOT NULL",
                                  (sha256,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    @_locked
    def _build_blob_filter(self) -> None:
        """A Bloom filter of the content ids in `blobs` (BLOB_FILTER_BITS bits, two probes), so
        content that is new costs no query: one per piece was a fifth of a first run's scan on
        a tree of small files. Empty (no filter) above BLOB_FILTER_LIMIT rows, where building it
        would cost more than the queries it saves on a run that changes little."""
        if self._blob_filter is not None:
            return  # another thread built it while this one waited for the lock
        (count,) = self.db.execute("SELECT COUNT(*) FROM blobs").fetchone()
        if count > BLOB_FILTER_LIMIT:
            self._blob_filter = bytearray()
            return
        bits = bytearray(BLOB_FILTER_BITS // 8)
        for (sha,) in self.db.execute("SELECT sha256 FROM blobs"):
            _filter_add(bits, sha)
        self._blob_filter = bits

    @_locked
    def add_blobs(self, rows: list[tuple[str, str, int, int, int]]) -> None:
        """Record content that is durably stored, even if the run later fails (reused next time,
        until a complete snapshot leaves its object out: see commit_files).
        Rows: (sha256, object, offset, size, stored)."""
        self._tx([("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?)", rows)])
        if self._blob_filter:
            for row in rows:
                _filter_add(self._blob_filter, row[0])

    @_locked
    def begin_files(self) -> None:
        """Start the next baseline; the old one stays valid until `commit_files`.

        While the baseline fits in memory (PRELOAD_LIMIT files), only new, changed and vanished
        paths are written, at commit (docs/PERFORMANCE.md, "The file cache writes only what
        changed"). Larger trees stage the whole next baseline in a table swapped in at commit, so
        memory stays bounded."""
        if not self._preload_tried:
            self._files, self._preload_tried = self._preload_files(), True
        self._changed, self._seen = [], set()
        if self._files is None:
            self._create_next()

    def _create_next(self) -> None:
        self._tx([("DROP TABLE IF EXISTS files_next", ()),
                  (f"CREATE TABLE files_next ({_FILES_COLUMNS})", ())])

    @_locked
    def stage_files(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows (path, size, mtime_ns, ino, ctime_ns, sha256, object, offset, chunks, stored) of this snapshot."""
        if self._files is not None:
            old = self._files
            for row in rows:
                self._seen.add(row[0])
                if old.get(row[0]) != row[1:]:
                    self._changed.append(row)
            if len(self._seen) <= PRELOAD_LIMIT:
                return
            # The tree outgrew an in-memory baseline (a first run of a huge tree): stage what
            # was seen so far in a table and carry on there; lookups go to SQLite from now on.
            changed = {r[0] for r in self._changed}
            rows = self._changed + [(p, *old[p]) for p in self._seen - changed]
            self._files, self._changed, self._seen = None, [], set()
            self._create_next()
        self._tx([("INSERT OR REPLACE INTO files_next VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _db_rows(rows))])

    @_locked
    def commit_files(self, snapshot_id: str, referenced: set[str]) -> None:
        """After a snapshot is complete: it becomes the baseline for the next run's change detection.

        Content is reused afterwards only from objects this snapshot references. Any other
        object (an older snapshot's, or stored by a run that failed) may be deleted by a prune
        from anywhere once it is unreferenced, which this cache cannot see; the newest snapshot's
        objects are kept by every retention policy, and the next run checks that this snapshot
        is still there. Content that comes back later is uploaded again, not pointed at."""
        mark = ("INSERT OR REPLACE INTO meta VALUES ('last_snapshot', ?)", (snapshot_id,))
        stale = [row for row in self.db.execute("SELECT DISTINCT object FROM blobs") if row[0] not in referenced]
        confirm = [("DELETE FROM blobs WHERE object=?", stale), mark]
        if self._files is not None:
            gone = [(_db_path(p),) for p in self._files.keys() - self._seen]
            self._tx([("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _db_rows(self._changed)),
                      ("DELETE FROM files WHERE path=?", gone), *confirm])
        else:
            self._tx([("DROP TABLE files", ()), ("ALTER TABLE files_next RENAME TO files", ()), *confirm])
        self._files, self._preload_tried = None, False

    @_locked
    def forget_objects(self, objects: set[str]) -> None:
        """These objects are deleted or damaged (prune, or `check`): content that lived there must
        be uploaded again, and files stored there are read again."""
        self._files, self._preload_tried = None, False
        params = [(o,) for o in objects]
        # A chunked file's objects are in its `chunks` (pack keys are 32 random hex digits: a
        # substring match names exactly that pack).
        self._tx([("DELETE FROM blobs WHERE object=?", params),
                  ("DELETE FROM files WHERE object=?1 OR (object='' AND instr(chunks, ?1) > 0)", params)])

    def close(self) -> None:
        self.db.close()


# Restore drills (drill.py) and the cost view (cost.py) keep their last result here.
def drill_path(state_dir: Path, job: str) -> Path:
    return state_dir / "drill" / f"{job}.json"


def read_drill(state_dir: Path, job: str) -> dict[str, Any]:
    return read_record(drill_path(state_dir, job))


def cost_path(state_dir: Path, job: str) -> Path:
    return state_dir / "cost" / f"{job}.json"


def read_cost(state_dir: Path, job: str) -> dict[str, Any]:
    return read_record(cost_path(state_dir, job))

