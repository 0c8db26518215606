"""What every job type shares: the verbs' result shapes and, for S3-stored jobs, snapshot
listing, selection, retention and verification over manifests."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

from backup_agent import retention
from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, ConfigError, IntegrityError, JobFailed, NotReady
from backup_agent.immutability import DeleteDenied
from backup_agent.storage import codec, cold, encoding, layout
from backup_agent.storage.codec import CodecError
from backup_agent.storage.encoding import Encoding, WrongKey
from backup_agent.storage.manifest import Entry, ManifestError, read, read_header
from backup_agent.storage.store import Denied, Locked, NotFound, ObjectInfo, Store, StoreError

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# What manifest_passes yields: each call reads the spooled manifest again (header, entries, trailer).
Passes = Callable[[], tuple[dict[str, Any], Iterator[Entry], dict[str, Any]]]


def _checked(entries: Iterator[Entry]) -> Iterator[Entry]:
    """A manifest's entries, its problems raised as IntegrityError wherever they are read."""
    try:
        yield from entries
    except ManifestError as exc:
        raise IntegrityError(str(exc)) from None


def stored_entries(entries: Iterator[Entry], sizes: dict[str, int], sid: str, problems: list[str],
                   damaged: set[str]) -> Iterator[Entry]:
    """The files with bytes whose objects the listing shows whole (every range a file's content
    needs, chunks included); the others go to `problems` (one line per file), their missing or
    short objects to `damaged`."""
    for e in entries:
        if e.type != "file" or e.size == 0:
            continue
        first: str | None = None
        for obj, offset, length in e.ranges():
            have = sizes.get(obj)
            if have is not None and have >= offset + length:
                continue
            if first is None:
                first = (f"object {obj} is missing" if have is None
                         else f"object {obj} is {have} bytes, needs {offset + length}")
            damaged.add(obj)
        if first is None:
            yield e
        else:
            problems.append(f"snapshot {sid}: {e.path}: {first}")


def download(store: Store, key: str, out: IO[bytes]) -> None:
    """A whole object into a file (a manifest into its spool)."""
    body = store.get(key)
    try:
        while chunk := body.read(1 << 20):
            out.write(chunk)
    finally:
        body.close()


def spool_dir(cfg: Config) -> str | None:
    """Where temporary copies go: state_dir/tmp when it exists (the run made it), else the default."""
    tmp = cfg.state_dir / "tmp"
    return str(tmp) if tmp.is_dir() else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_precise(t: datetime) -> str:
    """With the microseconds when there are any: a snapshot's time, which orders snapshots."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if t.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at: '{text}' is not an RFC 3339 time (e.g. 2026-11-27T02:00:00Z)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass
class RunResult:
    job: str
    snapshot: str | None
    status: str = "success"
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_failed: int = 0
    bytes_uploaded: int = 0
    bytes_total: int = 0
    duration_s: float = 0.0
    failed: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["duration_s"] = round(self.duration_s, 3)
        return {**d, **self.extra}


@dataclass
class Snapshot:
    id: str
    time: datetime
    size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "time": rfc3339_precise(self.time), "manifest_bytes": self.size, **self.extra}


S = TypeVar("S", bound=Snapshot)


def pick_snapshot(snaps: list[S], snapshot: str | None, at: str | None, job: str, where: str,
                  also: Callable[[S, str], bool] = lambda _s, _id: False) -> S:
    """--snapshot ID (or a unique-enough prefix, or what `also` accepts), --at TIME, or the latest."""
    if not snaps:
        raise JobFailed(f"job {job} has no snapshots in {where}")
    if snapshot:
        for s in snaps:
            if s.id == snapshot or also(s, snapshot) or (len(snapshot) >= 8 and s.id.startswith(snapshot)):
                return s
        raise JobFailed(f"job {job}: no snapshot {snapshot}")
    if at:
        when = parse_time(at)
        if "." not in at:  # a time to the second names all of that second, as with whole-second ids
            when = when.replace(microsecond=999_999)
        earlier = [s for s in snaps if s.time <= when]
        if not earlier:
            raise JobFailed(f"job {job}: no snapshot at or before {rfc3339(when)}")
        return earlier[-1]
    return snaps[-1]


class JobRunner:
    """The interface cli.py and the scheduler use; each job type implements it."""

    def __init__(self, cfg: Config, job: Job, clock: Clock = utcnow) -> None:
        self.cfg = cfg
        self.job = job
        self.clock = clock

    def run(self) -> RunResult:
        raise NotImplementedError

    def snapshots(self) -> list[Snapshot]:
        raise NotImplementedError

    def describe_snapshots(self) -> list[Snapshot]:
        """What `snapshots` prints; may read more than snapshots() needs for selecting."""
        return self.snapshots()

    def restore(self, *, snapshot: str | None, at: str | None, target: str, paths: list[str],
                wait: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def prune(self, *, dry_run: bool, collect_garbage: bool = True) -> dict[str, Any]:
        """Apply the job's retention. `collect_garbage=False` only forgets snapshots and leaves
        deleting data no kept snapshot references for a later prune (job types that store no
        such data ignore it)."""
        raise NotImplementedError

    def check(self, *, read_data: bool) -> dict[str, Any]:
        raise NotImplementedError


class S3Job(JobRunner):
    """Jobs whose snapshots are manifests under `<prefix>/<job>/snapshots/` in the bucket."""

    def __init__(self, cfg: Config, job: Job, clock: Clock = utcnow, store: Store | None = None) -> None:
        super().__init__(cfg, job, clock)
        self._store = store  # a store given by the caller (tests) serves every request
        self._making = threading.Lock()
        self.bucket = cfg.storage.bucket
        self.root = layout.job_root(cfg.storage.prefix, job.name)
        self.foreign_snapshot_keys: list[str] = []  # seen under snapshots/, not ours: reported, skipped
        self._encoding: Encoding | None = None
        self._plain_manifests: set[str] = set()  # snapshots read with storage.read_unencrypted_snapshots

    @property
    def encoding(self) -> Encoding:
        """Codecs for what this job stores (compression, encryption), made on first use: deriving
        the keys costs 0.2 s, which verbs that never read data do not pay."""
        if self._encoding is None:
            self._encoding = encoding.for_storage(self.cfg.storage)
        return self._encoding

    def data_encoding(self, sid: str) -> Encoding:
        """What opens the data of snapshot `sid` (once its manifest was read): the job's encoding,
        or, for a snapshot taken before encryption was turned on (its manifest not sealed, read
        because storage.read_unencrypted_snapshots allows it), the same without keys: its pieces
        were never sealed, and such a manifest vouches for them by their sha256 alone."""
        enc = self.encoding
        if sid not in self._plain_manifests or not enc.sealed:
            return enc
        data = codec.Codec(None, codec.PURPOSE_DATA, level=enc.data.level, compress=enc.data.compress)
        return dataclasses.replace(enc, data=data, key_id=None)

    @property
    def store(self) -> Store:
        """Where this job's snapshots live, opened on first use."""
        with self._making:
            if self._store is None:
                from backup_agent.storage.open import open_store

                self._store = open_store(self.cfg.storage)
            return self._store

    # --- listing and selecting -----------------------------------------------------------------

    def list_keys(self, sub: str) -> Iterator[ObjectInfo]:
        try:
            yield from self.store.list(self.root + sub)
        except StoreError as exc:
            raise JobFailed(f"cannot list s3://{self.bucket}/{self.root}{sub}: {exc}") from None

    def snapshots(self) -> list[Snapshot]:
        """Complete snapshots, oldest first by creation. An object under snapshots/ whose name is
        not a snapshot id of ours is reported (once per process) and skipped, never fatal."""
        out = []
        for obj in self.list_keys("snapshots/"):
            rel = obj.key[len(self.root) :]
            sid = layout.snapshot_id_from_key(rel)
            if sid:
                out.append(Snapshot(sid, layout.snapshot_time(sid), obj.size))
            elif rel not in self.foreign_snapshot_keys:
                self.foreign_snapshot_keys.append(rel)
                log.warning("s3://%s/%s%s is not a snapshot manifest of this agent: skipped", self.bucket,
                            self.root, rel)
        return sorted(out, key=lambda s: layout.snapshot_order(s.id))

    def describe_snapshots(self) -> list[Snapshot]:
        """Snapshots with the class their data was written in (manifest header) and whether they
        restore without a Glacier retrieval: one LIST says which objects are archived; only then
        are manifests read for what each references (cached: a manifest never changes)."""
        snaps = self.snapshots()
        archived = {}
        for obj in self.list_keys(""):
            rel = obj.key[len(self.root) :]
            if layout.is_owned(rel) and cold.is_archived(obj.storage_class):
                archived[rel] = obj.size
        infos = self._snapshot_infos([s.id for s in snaps], with_objects=bool(archived))
        refs: dict[str, set[str] | None] = {}
        for sid, info in infos.items():
            objs = info.get("objects")
            refs[sid] = set(objs) if objs is not None else (None if archived else set())
        verdict = cold.restorability(refs, archived)
        for s in snaps:
            s.extra.update(storage_class=infos[s.id].get("storage_class"), **verdict[s.id])
        return snaps

    def _snapshot_infos(self, ids: list[str], *, with_objects: bool) -> dict[str, dict[str, Any]]:
        path = self.cfg.state_dir / "cache" / f"{self.job.name}.snapshots.json"
        try:
            cached = json.loads(path.read_text())
            cached = cached if isinstance(cached, dict) else {}
        except (OSError, ValueError):
            cached = {}
        infos = {sid: cached[sid] for sid in ids if isinstance(cached.get(sid), dict)
                 and (not with_objects or cached[sid].get("objects") is not None)}
        todo = [sid for sid in ids if sid not in infos]

        def fetch(sid: str) -> dict[str, Any]:
            try:
                if with_objects:
                    with self.open_manifest(sid) as (header, entries, _):
                        objs = sorted({o for e in entries if e.type == "file" for o in e.objects()})
                    return {"storage_class": header.get("storage_class", "STANDARD"), "objects": objs}
                return {"storage_class": self._manifest_header(sid).get("storage_class", "STANDARD")}
            except (AgentError, StoreError, ManifestError) as exc:
                log.warning("snapshot %s: cannot read its manifest: %s", sid, exc)
                return {"storage_class": None, "unreadable": True}

        if todo:
            with ThreadPoolExecutor(max_workers=min(len(todo), self.cfg.storage.concurrency)) as pool:
                infos.update(zip(todo, pool.map(fetch, todo), strict=True))
            keep = {sid: i for sid, i in {**cached, **infos}.items() if sid in ids and not i.get("unreadable")}
            try:
                from backup_agent.state import atomic_write

                atomic_write(path, json.dumps(keep, separators=(",", ":")).encode())
            except OSError as exc:  # e.g. a user without write access to state_dir: only slower
                log.debug("cannot cache snapshot details in %s: %s", path, exc)
        return infos

    def _manifest_header(self, sid: str) -> dict[str, Any]:
        # The header is the first line: a ranged GET spares reading a manifest of millions of entries.
        key = self.root + layout.manifest_key(sid)
        body = self.store.get(key, 0, 65536)
        try:
            head = body.read()
        finally:
            body.close()
        if head.startswith(encoding.MAGIC):  # sealed: opened only whole (its tags cover all of it)
            with self.open_manifest(sid) as (header, _, _):
                return header
        try:
            return read_header(io.BytesIO(head), f"snapshot {sid}")
        except (EOFError, OSError):
            with self.open_manifest(sid) as (header, _, _):
                return header

    def select(self, snapshot: str | None, at: str | None) -> Snapshot:
        return pick_snapshot(self.snapshots(), snapshot, at, self.job.name, f"s3://{self.bucket}/{self.root}")

    @contextmanager
    def open_manifest(self, sid: str) -> Iterator[tuple[dict[str, Any], Iterator[Entry], dict[str, Any]]]:
        """Spool the manifest to a temp file (not memory) and stream its entries."""
        with self.manifest_passes(sid) as passes:
            yield passes()

    @contextmanager
    def manifest_passes(self, sid: str) -> Iterator[Callable[[], tuple[dict[str, Any], Iterator[Entry],
                                                                         dict[str, Any]]]]:
        """Spool the manifest once; each call of what this yields reads it again from the start
        (a restore reads it in passes instead of holding millions of entries)."""
        with tempfile.TemporaryFile() as spool:
            self.spool_manifest(sid, spool)

            def again() -> tuple[dict[str, Any], Iterator[Entry], dict[str, Any]]:
                spool.seek(0)
                try:
                    header, entries, trailer = read(spool, f"snapshot {sid}")
                except ManifestError as exc:
                    raise IntegrityError(str(exc)) from None
                return header, _checked(entries), trailer

            yield again

    def spool_manifest(self, sid: str, out: IO[bytes]) -> None:
        """The manifest of `sid` into `out` as gzip'd JSON lines (opened first when sealed).

        With an encryption key set, a manifest that is not sealed is refused unless
        `storage.read_unencrypted_snapshots` allows it: anyone who can write to the bucket could
        otherwise add a snapshot of their own making."""
        key = self.root + layout.manifest_key(sid)
        start = out.tell()
        try:
            download(self.store, key, out)
        except StoreError as exc:
            raise JobFailed(f"snapshot {sid}: cannot read manifest: {exc}") from None
        out.flush()
        out.seek(start)
        first = out.read(len(encoding.MAGIC))
        enc = self.encoding
        if not first.startswith(encoding.MAGIC):
            if enc.sealed and not enc.read_unencrypted:
                raise WrongKey(f"snapshot {sid}: its manifest is not encrypted but storage.encryption_key is set "
                               "(taken before encryption was turned on, or not made by this agent); set "
                               "storage.read_unencrypted_snapshots: true to read such snapshots")
            if enc.sealed:
                self._plain_manifests.add(sid)
            out.seek(0, os.SEEK_END)
            return
        # Sealed: opened from a copy into `out` (only sealed manifests cost the second file).
        with tempfile.TemporaryFile() as raw:
            out.seek(start)
            while chunk := out.read(1 << 20):
                raw.write(chunk)
            out.seek(start)
            out.truncate()
            raw.seek(0)
            parts = iter(lambda: raw.read(1 << 20), b"")
            try:
                for part in enc.manifest.decode_iter(parts, enc.manifest_aad(self.root, sid)):
                    out.write(part)
            except codec.WrongKeyError as exc:
                raise WrongKey(f"snapshot {sid}: storage.encryption_key does not open its manifest: {exc}") from None
            except CodecError as exc:
                raise IntegrityError(f"snapshot {sid}: manifest is damaged: {exc}") from None
        out.flush()

    def upload_manifest(self, sid: str, spool: IO[bytes]) -> None:
        spool.flush()
        enc = self.encoding
        with contextlib.ExitStack() as stack:
            if enc.sealed:
                spool.seek(0)
                sealed = stack.enter_context(tempfile.TemporaryFile(dir=spool_dir(self.cfg)))
                for part in enc.manifest.encode_iter(iter(lambda: spool.read(1 << 20), b""),
                                                     enc.manifest_aad(self.root, sid)):
                    sealed.write(part)
                sealed.flush()
                spool = sealed
            spool.seek(0)
            sha256 = hashlib.file_digest(spool, "sha256").hexdigest()  # type: ignore[arg-type]
            # Manifests stay in an instantly readable class (no storage_class) whatever the data's is.
            self.store.put_file(self.root + layout.manifest_key(sid), spool.fileno(),
                                os.fstat(spool.fileno()).st_size, sha256=sha256, name=f"manifest of {sid}")

    def thaw(self, tier: str | None = None, days: int | None = None) -> cold.Thaw:
        """Glacier restores for this job, with its restore_tier/restore_days unless overridden."""
        return cold.Thaw(self.store, self.root, self.cfg.state_dir, self.job.name,
                         tier=tier or self.job.options.get("restore_tier", "Standard"),
                         days=days or self.job.options.get("restore_days", 7),
                         concurrency=self.cfg.storage.concurrency, clock=self.clock)

    def manifest_exists(self, sid: str) -> bool:
        try:
            self.store.stat(self.root + layout.manifest_key(sid))
            return True
        except NotFound:
            return False

    def warn_if_unversioned(self, result: RunResult) -> None:
        try:
            status = self.store.versioning()
        except StoreError as exc:
            log.debug("cannot read bucket versioning: %s", exc)
            return
        if status != "Enabled":
            msg = (f"bucket {self.bucket} has versioning off: a deleted or overwritten object cannot be "
                   "recovered; run `backup-agent bucket setup`")
            log.warning(msg)
            result.warnings.append(msg)

    # --- prune ---------------------------------------------------------------------------------

    def referenced_objects(self, sid: str) -> set[str]:
        with self.open_manifest(sid) as (_, entries, _):
            return {o for e in entries if e.type == "file" for o in e.objects()}

    def forget_cached(self, objects: set[str]) -> None:
        """Hook for jobs with a local cache of stored content."""

    def record_damage(self, objects: set[str]) -> bool:
        """Hook for jobs that reuse stored content: `check` found these objects missing or corrupt.
        True when the next run will store their content again."""
        return False

    def prune(self, *, dry_run: bool, collect_garbage: bool = True) -> dict[str, Any]:
        if dry_run:
            return self._prune(dry_run=True)
        # A run uploads its data before its manifest, so until it ends nothing references that
        # data and a prune would delete it as garbage: prune holds the run's lock (exit 75).
        from backup_agent.state import JobLock

        with JobLock(self.cfg.state_dir, self.job.name):
            return self._prune(dry_run=False, collect_garbage=collect_garbage)

    def _prune(self, *, dry_run: bool, collect_garbage: bool = True) -> dict[str, Any]:
        snaps = self.snapshots()
        decision = retention.apply([(s.id, s.time) for s in snaps], self.job.retention)
        result: dict[str, Any] = {
            "job": self.job.name,
            "dry_run": dry_run,
            "keep": [{"id": s, "reasons": decision.reasons[s]} for s in decision.keep],
            "forget": decision.forget,
            "objects_deleted": 0,
            "bytes_freed": 0,
            "foreign_keys": len(self.foreign_snapshot_keys),
        }
        if not self.job.retention:
            result["note"] = f"jobs.{self.job.name}.retention is not set: every snapshot is kept"
        if dry_run or (not decision.forget and not snaps):
            return result
        referencing: dict[str, set[str]] = {}  # what kept snapshots reference, when read already
        if decision.forget:
            # A key that does not open this job's snapshots (WrongKey: exit 2) must delete
            # nothing: retention decided by names alone would otherwise forget snapshots, then
            # fail to read the kept ones.
            last = max([*decision.keep, *decision.forget], key=layout.snapshot_order)
            if collect_garbage and last in decision.keep:
                # Read below anyway, and a sealed manifest opens only whole, its header too: once.
                # Unreadable: the header alone decides here, the garbage step reports it.
                with contextlib.suppress(IntegrityError):
                    referencing[last] = self.referenced_objects(last)
            if last not in referencing:
                self._manifest_header(last)
        # Manifests first: a snapshot disappears whole before any of its data does.
        locked = self._delete([self.root + layout.manifest_key(s) for s in decision.forget])
        # A forgotten snapshot whose manifest is still under Object Lock stays whole: its data is
        # kept with it (the data's lock may pass first), and a later prune deletes both.
        still_there = [s for s in decision.forget if self.root + layout.manifest_key(s) in locked]
        result["locked_skipped"] = len(locked)
        result["locked_snapshots"] = still_there  # forgotten, but still stored and listed until their date
        result["garbage_collected"] = collect_garbage
        if not collect_garbage:
            # The costly half (every kept manifest read, every object listed) is left for later:
            # what the forgotten snapshots alone referenced stays stored until then.
            return result
        referenced: set[str] = set()
        unreadable: list[str] = []
        for sid in [*decision.keep, *still_there]:
            try:
                referenced |= referencing[sid] if sid in referencing else self.referenced_objects(sid)
            except IntegrityError as exc:
                unreadable.append(str(exc))
        if unreadable:
            # What an unreadable manifest references is unknown: deleting any data could take
            # some of it. Retention is applied to manifests; data waits for a readable bucket.
            log.warning("prune %s: no data deleted: %s", self.job.name, "; ".join(unreadable[:3]))
            result.update(unreadable_manifests=unreadable, objects_deleted_early=0,
                          note=f"{len(unreadable)} kept snapshot(s) have an unreadable manifest: no data deleted")
            return result
        garbage: list[str] = []
        freed = early = 0
        now = self.clock()
        listing = list(self.list_keys(""))
        # Data stored after the newest complete snapshot may belong to a run still uploading
        # (from another machine pruning this job, our lock does not keep it out) or to a failed
        # run whose uploads the next run reuses: it is left for a prune after a later snapshot.
        # Compared with the store's own times, not this machine's clock.
        newest = max((o.last_modified for o in listing
                      if layout.snapshot_id_from_key(o.key[len(self.root) :])), default=None)
        result["objects_newer_than_snapshots"] = 0
        for obj in listing:
            rel = obj.key[len(self.root) :]
            if rel.startswith("snapshots/"):
                continue
            if not layout.is_owned(rel):
                result["foreign_keys"] += 1
                continue
            if rel in referenced:
                continue
            if newest is not None and obj.last_modified > newest:
                result["objects_newer_than_snapshots"] += 1
            else:
                garbage.append(obj.key)
                freed += obj.size
                early += cold.early_deletion(obj.storage_class, obj.last_modified, now)
        # Forget first: a prune killed between the two must not leave the cache pointing at
        # deleted content (the next run would reuse it instead of uploading it again).
        self.forget_cached({k[len(self.root) :] for k in garbage})
        locked_data = self._delete(garbage)
        if locked_data:
            sizes = {o.key: o.size for o in listing}
            freed -= sum(sizes.get(k, 0) for k in locked_data)
        result["locked_skipped"] += len(locked_data)
        # S3 bills cold objects deleted before their class's minimum duration for the rest of it.
        result.update(objects_deleted=len(garbage) - len(locked_data), bytes_freed=freed,
                      objects_deleted_early=early)
        if result["locked_skipped"]:
            result["note"] = (f"{result['locked_skipped']} object(s) are under Object Lock and were kept; "
                              "a prune after their lock date deletes them")
        return result

    def _delete(self, keys: list[str]) -> set[str]:
        """Delete keys; returns those Object Lock kept (skipped, never an error: a later prune
        deletes them after their date). With `storage.object_lock` the store deletes every
        version of a key by its id (a plain DELETE would only add a delete marker, which no lock
        refuses, and the locked version would live on unseen)."""
        hint = "if this node is write-only, set storage.pruned_by: maintenance"
        try:
            failures = self.store.delete(keys)
        except Denied as exc:
            raise DeleteDenied(f"prune: these credentials may not delete ({exc}); {hint}") from None
        except StoreError as exc:
            raise JobFailed(f"prune: delete failed: {exc}") from None
        locked: set[str] = set()
        for failure in failures:
            if isinstance(failure, Locked):
                locked.add(failure.key)
            elif isinstance(failure, Denied):
                raise DeleteDenied(f"prune: cannot delete {failure.key}: {failure}; {hint}")
            else:
                raise JobFailed(f"prune: cannot delete {failure.key}: {failure}")
        return locked

    # --- check ---------------------------------------------------------------------------------

    def _thaw_for_reading(self, snaps: list[Snapshot], archived: set[str]) -> None:
        """`check --read-data` on archived data asks for restores the way `restore` does."""
        if not archived:
            return
        needed: set[str] = set()
        for snap in snaps:
            try:
                needed |= {self.root + o for o in self.referenced_objects(snap.id)} & archived
            except (IntegrityError, JobFailed):
                continue  # the check itself reports the unreadable manifest
        if not needed:
            return
        thaw = self.thaw()
        survey = thaw.prepare(sorted(needed))
        if survey.waiting:
            raise NotReady(thaw.pending_message(survey, f"check --read-data {self.job.name}"),
                           {"job": self.job.name, **thaw.pending_details(survey)})

    def verify_data(self, sid: str, passes: Passes, sizes: dict[str, int], damaged: set[str]) -> list[str]:
        """`check --read-data` of one snapshot whose listing is whole: every file's content read
        and verified; returns the problems, adds the objects at fault to `damaged`."""
        from backup_agent.storage.reader import Piece, hashing, read_all

        def verify(piece: Piece, chunks: Iterator[bytes]) -> str | None:
            problem = hashing(chunks, piece, lambda _c: None)
            if problem:
                # The object a piece failed to decode in, else all the content's objects.
                damaged.update(piece.damaged or piece.objects())
            return problem

        whole = stored_entries(passes()[1], sizes, sid, [], set())
        bad = read_all(self.store, self.root, whole, self.cfg.storage, verify, self.data_encoding(sid))
        return [f"snapshot {sid}: {p}" for p in bad]

    def check(self, *, read_data: bool) -> dict[str, Any]:
        damaged: set[str] = set()
        listing = [o for o in self.list_keys("") if layout.is_owned(o.key[len(self.root) :])]
        sizes = {o.key[len(self.root) :]: o.size for o in listing}
        problems: list[str] = []
        checked = 0
        snaps = self.snapshots()
        if read_data:
            self._thaw_for_reading(snaps, {o.key for o in listing if cold.is_archived(o.storage_class)})
        for snap in snaps:
            found: list[str] = []
            with contextlib.ExitStack() as stack:
                try:
                    passes = stack.enter_context(self.manifest_passes(snap.id))
                    for _ in stored_entries(passes()[1], sizes, snap.id, found, damaged):  # all of it before any data
                        pass
                except (IntegrityError, JobFailed) as exc:
                    problems.append(str(exc))
                    continue
                if read_data:
                    found += self.verify_data(snap.id, passes, sizes, damaged)
            problems += found
            checked += 1
        healing = bool(damaged) and self.record_damage(damaged)
        result = {"job": self.job.name, "snapshots_checked": checked, "read_data": read_data,
                  "errors": problems, "status": "ok" if not problems else "error",
                  "damaged_objects": sorted(damaged), "foreign_snapshot_keys": list(self.foreign_snapshot_keys)}
        if problems:
            heal = (f"; the next run stores the content of {len(damaged)} damaged object(s) again; older "
                    "snapshots stay damaged" if healing else "")
            raise IntegrityError("; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5
                                                            else "") + heal, result)
        return result
