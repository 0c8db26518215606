"""`files` jobs: incremental, deduplicated, point-in-time backups of directories.

Small files are packed into larger objects (fewer requests, cheaper cold storage); large files
are cut into content-defined chunks (storage/chunker.py) packed the same way, so a big file that
grows or changes in place uploads about what changed. Every piece is encoded (storage/codec.py:
zstd when it pays, AES-256-GCM with a key) and stored once per job and node. Change detection uses
the local cache, so an unchanged rerun reads no file contents and makes no LIST call; the
manifest is uploaded last.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from backup_agent.config import Config, Job
from backup_agent.errors import ConfigError, IntegrityError, JobFailed, NotReady
from backup_agent.jobs import fsmeta
from backup_agent.jobs.base import Clock, RunResult, S3Job, rfc3339, utcnow
from backup_agent.jobs.fsmeta import read_xattrs
from backup_agent.jobs.restore_files import lstat_inside, restore_entries
from backup_agent.jobs.scan import Excluder, Found, walk
from backup_agent.state import FileCache, JobLock, atomic_write, clear_damage, ensure_dir, read_damage, save_damage
from backup_agent.storage import codec, cold, layout
from backup_agent.storage.bodies import Pieces
from backup_agent.storage.manifest import Chunk, Entry, ManifestWriter
from backup_agent.storage.store import Store, StoreError

log = logging.getLogger(__name__)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STAGE_BATCH = 2000
# A restore's first pass keeps up to this many entries for the next (about 25 MB), so a usual
# snapshot's manifest is parsed once; a larger one is read again in each pass instead of held.
HOLD_ENTRIES = 50_000
# New and changed small files are read, hashed, encoded and packed on the encoder threads, this
# many (or this many bytes) per hand-off: the scan thread only walks, stats and writes entries, and
# a hand-off per file would cost more than zstd takes on most of them.
BATCH_FILES = 32
BATCH_BYTES = 1 << 20
# Files smaller than this are read on the scan thread: their read, hash and zstd take less than
# the GIL hand-offs of a worker doing it (a tree of 100,000 files of 0-2 bytes: 8 % slower batched).
READ_INLINE = 2 << 10
# Bytes of a big file's chunks cut but not yet encoded and packed (memory: about twice this).
CHUNKS_AHEAD = 4 << 20
# Above this many files with xattrs the memo of which ones have them is not kept (each file is asked).
XATTR_MEMO_LIMIT = 200_000
# A large file's manifest entry and its cache row; None when it vanished.
LargeResult = tuple[Entry, tuple[Any, ...]] | None
# Where a piece of content is stored: (object, offset, encoded length).
Loc = tuple[str, int, int]
T = TypeVar("T")


class _LastSnapshotGone(Exception):
    """The snapshot the cache describes is no longer in the bucket."""


class PackUploader:
    """Collects encoded pieces (small files, chunks of big files) into a pack and uploads full
    packs in the background. The scan thread and the big-file workers add to it at once.

    At most `in_flight` packs wait for upload at once (`slots`: a count shared with another
    packer), each held once meanwhile: by its pieces until the store has copied them, then by
    the store's copy (awscrt; bodies.Pieces.release). botocore rereads on retries: twice there.
    """

    def __init__(self, job: FilesJob, pool: ThreadPoolExecutor, in_flight: int,
                 encoders: ThreadPoolExecutor | None = None, slots: threading.Semaphore | None = None) -> None:
        self.job = job
        self.pool = pool
        self.encoders = encoders
        self.slots = slots or threading.Semaphore(in_flight)
        # The files' bytes as read, never copied into one buffer (bodies.Pieces): a growing
        # bytearray is copied over and over (docs/PERFORMANCE.md, "Packs are a list").
        self.pieces: list[bytes] = []
        self.size = 0
        self.key = layout.new_pack_key()
        self.blobs: list[tuple[str, str, int, int, int]] = []
        self.known: dict[str, Loc] = {}  # content packed in this run, not yet in the cache
        self.futures: list[Future[int]] = []
        self.lock = threading.Lock()
        # Where big files' chunks go: packs of their own (see _scan).
        self.for_big: PackUploader = self
        # Held while one big file's chunks are placed: a file's chunks then sit back to back, in
        # order, in its packs, and a restore reads them with one GET per pack.
        self.one_file = threading.Lock()

    def find(self, sha256: str) -> Loc | None:
        """Where this content is stored already: by an earlier run (the cache) or this one."""
        return self.job.cache.lookup_blob(sha256) or self.known.get(sha256)

    def store(self, data: bytes, sha256: str) -> tuple[Loc, int]:
        """Where the content is, and the bytes this call added to a pack (0: it was there)."""
        loc = self.find(sha256)
        if loc is not None:
            return loc, 0
        # Encoded outside the lock: zstd and AES release the GIL, so both cores work.
        return self._encode_place(data, sha256)

    def place(self, piece: bytes, sha256: str, size: int) -> tuple[Loc, int]:
        """An encoded piece into the current pack (unless this run placed its content already)."""
        with self.lock:
            if (loc := self.known.get(sha256)) is not None:
                return loc, 0
            loc = (self.key, self.size, len(piece))
            self.pieces.append(piece)
            self.size += len(piece)
            self.blobs.append((sha256, self.key, loc[1], size, len(piece)))
            self.known[sha256] = loc
            if self.size >= self.job.cfg.storage.pack_size:
                self._seal()
        return loc, len(piece)

    def _encode_place(self, data: bytes, sha256: str) -> tuple[Loc, int]:
        return self.place(self.job.encoding.seal_data(data, sha256), sha256, len(data))

    def seal(self) -> None:
        with self.lock:
            self._seal()

    def _seal(self) -> None:
        if not self.pieces:
            return
        self.slots.acquire()
        body, key, blobs = Pieces(self.pieces), self.key, self.blobs
        self.pieces, self.size, self.key, self.blobs = [], 0, layout.new_pack_key(), []
        self.futures.append(self.pool.submit(self._upload, key, body, blobs))

    def _upload(self, key: str, body: Pieces, blobs: list[tuple[str, str, int, int, int]]) -> int:
        try:
            digest = hashlib.sha256()
            for part in body.parts:
                digest.update(part)
            self.job.store.put(self.job.root + key, body, sha256=digest.hexdigest(),
                               storage_class=self.job.storage_class)
            self.job.cache.add_blobs(blobs)
            for sha, *_ in blobs:  # the cache answers for them now; keeps `known` small on huge trees
                self.known.pop(sha, None)
            return len(body)
        finally:
            self.slots.release()


class InOrder:
    """Manifest entries in scan order while some wait for their file to be read and packed.

    An entry whose content is being stored waits in a queue with everything after it; the
    queue is written as far as its head is ready. Memory: the small files queued (at most
    QUEUED_BYTES; then the scan waits for the oldest). `before_wait` runs before the scan waits:
    it hands over the batch still being filled, which the oldest entry may be waiting for."""

    QUEUED_BYTES = 32 << 20
    # Entries, whatever their size: a million tiny files must not all wait here (about 1 KB each).
    QUEUED_ENTRIES = 4096

    def __init__(self, writer: ManifestWriter, before_wait: Callable[[], None] = lambda: None) -> None:
        self.writer = writer
        self.before_wait = before_wait
        self.queue: deque[tuple[Future[Any] | None, Entry | Callable[[Any], Entry | None], int]] = deque()
        self.queued = 0
        self._done: Future[Any] | None = None  # the newest future whose result was taken, and that result
        self._outcome: Any = None

    def add(self, entry: Entry) -> None:
        if self.queue:
            self.queue.append((None, entry, 0))
            if len(self.queue) > self.QUEUED_ENTRIES:
                self.pump(wait=True)
        else:
            self.writer.add(entry)

    def later(self, fut: Future[T], make: Callable[[T], Entry | None], size: int) -> None:
        """`make(fut.result())` is the entry (None: no entry, the file is gone or failed)."""
        self.queue.append((fut, make, size))
        self.queued += size
        self.pump(wait=self.queued > self.QUEUED_BYTES or len(self.queue) > self.QUEUED_ENTRIES)

    def pump(self, wait: bool = False) -> None:
        """Write the queue's ready head; with `wait`, wait for the oldest piece first."""
        while self.queue:
            fut, item, size = self.queue[0]
            if fut is not None and fut is not self._done:
                if not fut.done():
                    if not wait:
                        return
                    self.before_wait()
                # A batch's files share its future: its lock is taken once, not once a file.
                self._done, self._outcome = fut, fut.result()
            self.queue.popleft()
            if fut is None:
                assert isinstance(item, Entry)
                self.writer.add(item)
                continue
            wait = False
            self.queued -= size
            assert callable(item)
            entry = item(self._outcome)
            if entry is not None:
                self.writer.add(entry)

    def flush(self) -> None:
        while self.queue:
            self.pump(wait=True)


class SmallBatches:
    """New and changed small files for the encoder threads, handed over BATCH_FILES (or
    BATCH_BYTES) at a time. Each file's outcome is `future.result()[index]`; the future of the
    batch still being filled is done once `hand_over` has been called and the batch has run."""

    def __init__(self, work: Callable[[list[Any]], list[Any]], pool: ThreadPoolExecutor) -> None:
        self.work, self.pool = work, pool
        self._start()

    def _start(self) -> None:
        self.items: list[Any] = []
        self.size = 0
        self.future: Future[list[Any]] = Future()

    def add(self, item: Any, size: int) -> tuple[Future[list[Any]], int]:
        fut, index = self.future, len(self.items)
        self.items.append(item)
        self.size += size
        if len(self.items) >= BATCH_FILES or self.size >= BATCH_BYTES:
            self.hand_over()
        return fut, index

    def hand_over(self) -> None:
        if self.items:
            items, fut = self.items, self.future
            self._start()
            self.pool.submit(self._run, items, fut)

    def _run(self, items: list[Any], fut: Future[list[Any]]) -> None:
        try:
            fut.set_result(self.work(items))
        except BaseException as exc:  # handed to the scan thread, which raises it
            fut.set_exception(exc)


class FilesJob(S3Job):
    def __init__(self, cfg: Config, job: Job, clock: Clock = utcnow, store: Store | None = None) -> None:
        super().__init__(cfg, job, clock, store)
        self.opts = job.options
        self.storage_class: str = self.opts["storage_class"]
        self._cache: FileCache | None = None
        # Per run: the first path of each multiply linked inode, and its entry once stored.
        self._inodes: dict[tuple[int, int], str] = {}
        self._linked: dict[tuple[int, int], Entry] = {}
        self._xattr_memo: set[str] | None = None
        self._xattr_now: set[str] = set()

    @property
    def cache(self) -> FileCache:
        if self._cache is None:
            st = self.cfg.storage
            # Content is reused only as it was encoded: format 3, under the same key (or none).
            target = f"{st.endpoint_url or 'aws'}|{self.bucket}|{self.root}|v3|{self.encoding.key_id or 'plain'}"
            self._cache = FileCache(self.cfg.state_dir, self.job.name, target)
        return self._cache

    def forget_cached(self, objects: set[str]) -> None:
        self.cache.forget_objects(objects)

    def record_damage(self, objects: set[str]) -> bool:
        """What `check` found missing or corrupt: the next run stores that content again."""
        try:
            save_damage(self.cfg.state_dir, self.job.name, objects)
            return True
        except OSError as exc:  # e.g. check run by a user who cannot write state_dir
            log.warning("job %s: cannot record damaged objects in %s: %s; the next run will not know "
                        "to upload their content again", self.job.name, self.cfg.state_dir, exc.strerror or exc)
            return False

    # --- run -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.monotonic()
        ensure_dir(self.cfg.state_dir)
        with JobLock(self.cfg.state_dir, self.job.name):
            try:
                try:
                    return self._run(started)
                except _LastSnapshotGone as gone:
                    # Someone removed our last snapshot: the cache may have pointed that scan at
                    # deleted data. What it uploaded is unreferenced now; prune removes it.
                    log.warning("last snapshot %s is gone from the bucket: rescanning from scratch", gone)
                    self.cache.reset()
                    return self._run(started)
            except (OSError, sqlite3.OperationalError) as exc:
                # Errors reading the tree are handled per file; these come from local state.
                if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise JobFailed(f"job {self.job.name}: state_dir {self.cfg.state_dir}: {why}; "
                                "no snapshot made") from None
            finally:
                if self._cache is not None:
                    self._cache.close()
                    self._cache = None

    def _run(self, started: float) -> RunResult:
        now = self.clock()
        result = RunResult(job=self.job.name, snapshot=None)
        damaged, last, preflight = self._begin(result)
        sid = layout.new_snapshot_id(now, after=last)
        tmp_dir = ensure_dir(self.cfg.state_dir / "tmp")
        with tempfile.TemporaryFile(dir=tmp_dir) as spool:
            header = {"snapshot": sid, "job": self.job.name, "node": self.cfg.node, "type": "files",
                      "environment": self.cfg.environment, "time": rfc3339(now), "paths": self.opts["paths"],
                      "storage_class": self.opts["storage_class"], "encoding": self.encoding.header()}
            writer = ManifestWriter(spool, header)
            self.cache.begin_files()
            self._scan(writer, result, preflight, last)
            result.files_failed = len(result.failed)
            result.duration_s = time.monotonic() - started
            summary = {k: getattr(result, k) for k in ("files_new", "files_changed", "files_unchanged",
                                                       "files_failed", "bytes_uploaded", "bytes_total")}
            writer.close(summary)
            self._store_manifest(sid, spool, result)
        result.snapshot = sid
        self._record(sid, writer, damaged, result)
        result.status = "partial" if result.failed else "success"
        result.duration_s = time.monotonic() - started
        return result

    def _begin(self, result: RunResult) -> tuple[set[str], str | None, Future[bool] | None]:
        """Damage to store again, the newest snapshot, and (on a rerun) the check that it is
        still in the bucket, running beside the scan."""
        damaged = read_damage(self.cfg.state_dir, self.job.name)
        if damaged:
            # `check` found these objects missing or corrupt: the files stored there are read
            # and uploaded again, so this snapshot restores exactly.
            log.warning("job %s: %d damaged object(s) found by check: storing their content again",
                        self.job.name, len(damaged))
            self.cache.forget_objects(damaged)
        result.extra.update(files_skipped=0, skipped=[], changed_while_read=[])
        self._inodes, self._linked = {}, {}
        self._xattr_memo, self._xattr_now = self._load_xattr_memo(), set()
        last = self.cache.get_meta("last_snapshot")
        preflight: Future[bool] | None = None
        if last:
            # The usual rerun: S3's answers matter only before the manifest goes up, so their
            # round trips (tens of ms each on AWS) overlap with the scan.
            side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preflight")
            preflight = side.submit(self._preflight, last, result)
            side.shutdown(wait=False)
        else:
            try:
                last = self._seed_cache_from_bucket(damaged)
                self.warn_if_unversioned(result)
            except StoreError as exc:
                raise JobFailed(f"job {self.job.name}: cannot reach s3://{self.bucket}: {exc}") from None
        return damaged, last, preflight

    def _scan(self, writer: ManifestWriter, result: RunResult, preflight: Future[bool] | None,
              last: str | None) -> None:
        """Walk the paths, store new content and write every entry."""
        excluded = Excluder(self.opts["exclude"], [str(self.cfg.state_dir)])
        conc = self.cfg.storage.concurrency
        # Two workers cut big files into chunks (numpy, SHA-256, zstd and AES release the GIL)
        # while the scan packs small files; the packs go up on `conc` threads.
        with ThreadPoolExecutor(max_workers=conc, thread_name_prefix="upload") as pool, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="large") as big_pool, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode") as encoders:
            # Big files' chunks go to packs of their own: a pack is deleted only when no kept snapshot
            # needs any piece of it, and the chunks of a file that was replaced or deleted then
            # go together instead of staying with small files that are still there.
            packer = PackUploader(self, pool, in_flight=max(2, conc // 2), encoders=encoders)
            # One count of packs in flight for both: each costs pack_size until its PUT ends (twice
            # through botocore), and where uploads are slow, 2 more for big files' chunks cost that
            # much more again.
            packer.for_big = PackUploader(self, pool, in_flight=0, encoders=encoders, slots=packer.slots)
            large: list[tuple[Future[LargeResult], str]] = []
            staged: list[tuple[Any, ...]] = []
            self._small = SmallBatches(
                lambda items: [self._read_one(p, st, b, listed, packer, result) for p, st, b, listed in items],
                encoders)
            order = InOrder(writer, before_wait=self._small.hand_over)
            try:
                for found in walk(self.opts["paths"], excluded, self.opts["one_file_system"],
                                  self.opts["follow_symlinks"]):
                    self._one(found, order, packer, big_pool, large, staged, result)
                    if len(staged) >= STAGE_BATCH:
                        # Cleared, not replaced: entries still being encoded append to this list.
                        self.cache.stage_files(list(staged))
                        staged.clear()
                order.flush()
                # All chunks are cut before the last packs are sealed. bytes_uploaded counts
                # packs as sent (encoded).
                for lf, counter in large:
                    done = lf.result()
                    if done is not None:
                        entry, row = done
                        setattr(result, counter, getattr(result, counter) + 1)
                        result.bytes_total += entry.size
                        writer.add(entry)
                        staged.append(row)
                for p in (packer, packer.for_big):
                    p.seal()
                for fut in packer.futures + packer.for_big.futures:
                    result.bytes_uploaded += fut.result()
                self.cache.stage_files(staged)
                if preflight is not None and not preflight.result():
                    raise _LastSnapshotGone(str(last))
            except StoreError as exc:
                for f in packer.futures + packer.for_big.futures:
                    f.cancel()
                for lf, _ in large:
                    lf.cancel()
                if preflight is not None and preflight.done() and preflight.exception() is not None:
                    raise JobFailed(f"job {self.job.name}: cannot reach s3://{self.bucket}: "
                                    f"{preflight.exception()}") from None
                raise JobFailed(f"job {self.job.name}: upload failed, no snapshot made: {exc}") from None

    def _store_manifest(self, sid: str, spool: IO[bytes], result: RunResult) -> None:
        try:
            self.upload_manifest(sid, spool)
        except StoreError as exc:
            # The answer can be lost after S3 stored it: exit code and status must say
            # whether the snapshot exists, so ask.
            exists = self._manifest_stored(sid)
            if exists is not True:
                made = "no snapshot made" if exists is False else f"snapshot {sid} may or may not exist"
                raise JobFailed(f"job {self.job.name}: cannot store the manifest, {made}: "
                                f"{exc}") from None
            result.warnings.append(f"storing the manifest reported {exc}, but snapshot {sid} "
                                   "is stored and complete")

    def _record(self, sid: str, writer: ManifestWriter, damaged: set[str], result: RunResult) -> None:
        """The snapshot is complete: the local cache and the damage record learn of it."""
        try:
            self.cache.commit_files(sid, writer.objects)
            self._save_xattr_memo(sid)
        except Exception as exc:  # the snapshot is complete: say so, whatever failed here
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            msg = f"snapshot {sid} is complete, but the local cache could not record it ({why}): the next run rescans"
            log.warning("job %s: %s", self.job.name, msg)
            result.warnings.append(msg)
            with contextlib.suppress(Exception):
                self.cache.reset()  # a rescan and re-hash; never a baseline that disagrees with the bucket
        try:
            clear_damage(self.cfg.state_dir, self.job.name, damaged)
        except OSError as exc:  # the record only makes a later run forget objects already forgotten
            log.warning("job %s: cannot update %s: %s", self.job.name, self.cfg.state_dir, exc.strerror or exc)

    def _manifest_stored(self, sid: str) -> bool | None:
        """Is the manifest in the bucket? None when S3 does not say."""
        try:
            return self.manifest_exists(sid)
        except StoreError as exc:
            log.warning("job %s: cannot tell whether snapshot %s was stored: %s", self.job.name, sid, exc)
            return None

    def _preflight(self, last: str, result: RunResult) -> bool:
        """Is our last snapshot still in the bucket? Also warns when versioning is off."""
        found = self.manifest_exists(last)
        self.warn_if_unversioned(result)
        return found

    def _one(self, found: Found, writer: InOrder, packer: PackUploader, pool: ThreadPoolExecutor,
             large: list[tuple[Future[LargeResult], str]], staged: list[tuple[Any, ...]],
             result: RunResult) -> None:
        if found.st is None:
            result.failed.append({"path": found.path.rstrip("/"), "error": found.error or "unreadable"})
            log.warning("cannot read %s: %s", found.path, found.error)
            return
        st, path = found.st, found.path
        base: dict[str, Any] = dict(path=path, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                                    mtime_ns=st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode):
            self._xattrs(base, None, result)
        if stat.S_ISDIR(st.st_mode):
            writer.add(Entry(type="dir", **base))
            return
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                result.failed.append({"path": path, "error": exc.strerror or str(exc)})
                return
            writer.add(Entry(type="symlink", target=target, **base))
            return
        if not stat.S_ISREG(st.st_mode):
            self._special(writer, st, base, result)
            return
        key = _cache_key(path)
        row = self.cache.lookup_file(key)
        # Counted once stored: a file that vanishes or cannot be read is neither new nor changed.
        same = row is not None and tuple(row[:4]) == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        counter = "files_unchanged" if same else "files_changed" if row else "files_new"
        # Listed here when the checks below need them or no small-file read follows; else listed
        # with the read, on an encoder thread (_read_one), and only there.
        listed = same or st.st_nlink > 1 or st.st_blocks * 512 < st.st_size or st.st_size == 0 \
            or st.st_size >= self.cfg.storage.large_file_size
        if listed:
            self._xattrs(base, key if same else None, result)
        if st.st_nlink > 1 and self._hard_link(writer, staged, st, base, counter, result):
            return
        # Fewer blocks than bytes: holes, or a compressing file system (_sparse tells them apart).
        if st.st_blocks * 512 < st.st_size and self._sparse(writer, packer, pool, large, staged, st, base, counter,
                                                            result):
            return
        if same and row is not None:
            result.files_unchanged += 1
            result.bytes_total += st.st_size
            loc, chunks = _cached_location(row)
            self._add_file(writer, staged, base, st, row[4], st.st_size, loc, chunks)
            return
        if st.st_size == 0:
            setattr(result, counter, getattr(result, counter) + 1)
            self._add_file(writer, staged, base, st, EMPTY_SHA256, 0)
            return
        if st.st_size >= self.cfg.storage.large_file_size:
            # Its chunk list of last time (read on the big-file thread, not here: 16k chunks a GiB).
            large.append((pool.submit(self._store_large, path, st, base, result, packer.for_big,
                                      previous_listed=row[7] if row is not None else None), counter))
            return

        def finish(out: tuple[Any, ...]) -> Entry | None:
            """On the scan thread, in scan order: the file's entry from what _read_one found."""
            if out[0] == "stored":
                _, after, sha, size, loc = out
                setattr(result, counter, getattr(result, counter) + 1)
                result.bytes_total += size
                base["mtime_ns"] = after.st_mtime_ns
                return self._file_entry(staged, base, after, sha, size, loc)
            if out[0] == "large":  # grew past the large-file threshold while we looked
                large.append((pool.submit(self._store_large, path, out[1], base, result, packer.for_big), counter))
            elif out[0] == "failed":
                result.failed.append({"path": path, "error": out[1]})
                log.warning("cannot read %s: %s", path, out[1])
            return None

        if st.st_size < READ_INLINE:
            entry = finish(self._read_one(path, st, base, listed, packer, result))
            if entry is not None:
                writer.add(entry)
            return
        fut, index = self._small.add((path, st, base, listed), st.st_size)
        writer.later(fut, lambda outcomes: finish(outcomes[index]), st.st_size)

    def _read_one(self, path: str, st: os.stat_result, base: dict[str, Any], listed: bool,
                  packer: PackUploader, result: RunResult) -> tuple[Any, ...]:
        """On an encoder thread (the scan's, below READ_INLINE): a small file's attributes (unless
        `listed` already), bytes and hash, its content packed.
        ("stored", stat after, sha256, size, location), ("large", stat), ("failed", why) or ("gone",)."""
        if not listed:
            self._xattrs(base, None, result)
        try:
            data, st = self._read_small(path, st, result)
        except FileNotFoundError:
            log.info("%s vanished during the run", path)
            return ("gone",)
        except OSError as exc:
            return ("failed", exc.strerror or str(exc))
        if data is None:
            return ("large", st)
        sha = hashlib.sha256(data).hexdigest()
        return ("stored", st, sha, len(data), packer.store(data, sha)[0])

    def _xattrs(self, base: dict[str, Any], unchanged: str | None, result: RunResult) -> None:
        """Attributes into `base`. An unchanged file (cache key `unchanged`) that had none in the
        last snapshot has none now: setting or removing one changes the ctime the cache compared.
        That saves one llistxattr per unchanged file, most of what storing attributes costs."""
        memo = self._xattr_memo
        if unchanged is not None and memo is not None and unchanged not in memo:
            return
        path = base["path"]
        try:
            xattrs = read_xattrs(path, self.opts["follow_symlinks"])
        except OSError as exc:
            result.warnings.append(f"{path}: extended attributes not stored: {exc.strerror or exc}")
            # Listed as having some, so the next run asks again rather than trusting "none".
            self._xattr_now.add(_cache_key(path))
            return
        if xattrs:
            base["xattrs"] = xattrs
            self._xattr_now.add(_cache_key(path))

    def _load_xattr_memo(self) -> set[str] | None:
        """Cache keys of the last snapshot's files with attributes; None when unknown (no memo,
        or one written for another snapshot than the cache's baseline): then every file is asked."""
        last = self.cache.get_meta("last_snapshot")
        try:
            data = self._xattr_memo_path().read_bytes()
        except OSError:
            return None
        sid, _, keys = data.partition(b"\n")
        if not last or sid != last.encode():
            return None
        return set(keys.decode().split("\x00")) if keys else set()

    def _save_xattr_memo(self, sid: str) -> None:
        """After the cache committed `sid`. A memo that fails to be written stays the previous
        snapshot's and is ignored; a very long one (SELinux labels every file) is not kept."""
        path = self._xattr_memo_path()
        try:
            if len(self._xattr_now) > XATTR_MEMO_LIMIT:
                path.unlink(missing_ok=True)
                return
            atomic_write(path, sid.encode() + b"\n" + "\x00".join(sorted(self._xattr_now)).encode())
        except OSError as exc:
            log.info("cannot remember which files have xattrs (%s): the next run lists them all", exc.strerror)

    def _xattr_memo_path(self) -> Path:
        return self.cfg.state_dir / "cache" / f"{self.job.name}.xattr-paths"

    def _special(self, writer: InOrder, st: os.stat_result, base: dict[str, Any], result: RunResult) -> None:
        """FIFOs and device nodes are entries of their own; sockets cannot be made by anyone but
        the program that listens on them, so they are skipped, and counted and listed as such."""
        kind = _SPECIAL.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            why = "socket" if stat.S_ISSOCK(st.st_mode) else f"file type {stat.S_IFMT(st.st_mode):o}"
            result.extra["files_skipped"] = result.extra.get("files_skipped", 0) + 1
            result.extra.setdefault("skipped", []).append({"path": base["path"], "reason": why})
            log.warning("skipped %s: a %s cannot be restored", base["path"], why)
            return
        if kind != "fifo":
            base.update(major=os.major(st.st_rdev), minor=os.minor(st.st_rdev))
        writer.add(Entry(type=kind, **base))

    def _hard_link(self, writer: InOrder, staged: list[tuple[Any, ...]], st: os.stat_result,
                   base: dict[str, Any], counter: str, result: RunResult) -> bool:
        """Every path of one inode carries the first path's name as its `hardlink` key, so a
        restore links them again. A later path reuses the first one's stored content without
        reading it again; True when it was handled so."""
        ino = (st.st_dev, st.st_ino)
        first = self._inodes.setdefault(ino, base["path"])
        base["hardlink"] = first
        known = self._linked.get(ino)
        if first == base["path"] or known is None:
            return False  # the first path, or the first is still being read: read this one too
        setattr(result, counter, getattr(result, counter) + 1)
        result.bytes_total += known.size
        writer.add(Entry(type="file", size=known.size, sha256=known.sha256, object=known.object, offset=known.offset,
                         stored=known.stored, chunks=known.chunks, extents=known.extents, length=known.length, **base))
        staged.append(_cache_row(base["path"], st, known))
        return True

    def _sparse(self, writer: InOrder, packer: PackUploader, pool: ThreadPoolExecutor,
                large: list[tuple[Future[LargeResult], str]], staged: list[tuple[Any, ...]], st: os.stat_result,
                base: dict[str, Any], counter: str, result: RunResult) -> bool:
        """A file with holes stores only its data regions; True when it was handled so (False:
        no holes after all, e.g. a compressing file system; the usual path takes it).

        Its data is read on every run: the cache's row cannot say where the holes were."""
        path = base["path"]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError as exc:
            result.failed.append({"path": path, "error": exc.strerror or str(exc)})
            return True
        try:
            extents = fsmeta.data_extents(fd, st.st_size)
            if extents is None:
                return False
            if sum(n for _, n in extents) >= self.cfg.storage.large_file_size:
                large.append((pool.submit(self._store_large, path, st, base, result, packer.for_big, extents), counter))
                return True
            data = fsmeta.read_ranges(fd, extents)
            after = os.fstat(fd)
        except OSError as exc:
            result.failed.append({"path": path, "error": exc.strerror or str(exc)})
            return True
        finally:
            os.close(fd)
        self._note_changed(path, st, after, len(data), result)
        setattr(result, counter, getattr(result, counter) + 1)
        result.bytes_total += len(data)
        sha = hashlib.sha256(data).hexdigest()
        base.update(extents=_trim(extents, len(data)), length=st.st_size)
        self._add_file(writer, staged, base, st, sha, len(data), packer.store(data, sha)[0] if data else None)
        return True

    def _add_file(self, writer: InOrder, staged: list[tuple[Any, ...]], base: dict[str, Any],
                  st: os.stat_result, sha: str, size: int, loc: Loc | None = None,
                  chunks: list[Chunk] | None = None) -> None:
        writer.add(self._file_entry(staged, base, st, sha, size, loc, chunks))

    def _file_entry(self, staged: list[tuple[Any, ...]], base: dict[str, Any], st: os.stat_result, sha: str,
                    size: int, loc: Loc | None, chunks: list[Chunk] | None = None) -> Entry:
        """A file's entry, its content in one piece at `loc`, in `chunks`, or none (empty), and
        its cache row staged."""
        if chunks is not None:
            entry = Entry(type="file", size=size, sha256=sha, chunks=chunks, **base)
        elif loc is not None:
            entry = Entry(type="file", size=size, sha256=sha, object=loc[0], offset=loc[1], stored=loc[2], **base)
        else:
            entry = Entry(type="file", size=size, sha256=sha, object="", offset=0, **base)
        staged.append(_cache_row(base["path"], st, entry))
        if entry.hardlink is not None:
            self._linked[(st.st_dev, st.st_ino)] = entry
        return entry

    @staticmethod
    def _note_changed(path: str, st: os.stat_result, after: os.stat_result, stored: int, result: RunResult) -> None:
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return
        result.warnings.append(f"{path}: changed while read; stored {stored} bytes as read from the "
                               f"{st.st_size} the file had when the read began")
        result.extra.setdefault("changed_while_read", []).append(path)

    def _read_small(self, path: str, st: os.stat_result, result: RunResult) -> tuple[bytes | None, os.stat_result]:
        limit = self.cfg.storage.large_file_size
        for attempt in range(2):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                # One byte more than expected, to notice growth.
                data = _read_upto(fd, min(limit, st.st_size + 1), st.st_size)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            if len(data) >= limit:
                return None, after
            if after.st_size == len(data) and after.st_mtime_ns == st.st_mtime_ns:
                return data, after
            if attempt == 0:
                log.info("%s changed while read: reading it again", path)
                st = after
        # Still changing: what was there when the read began (a file being appended to keeps a
        # consistent prefix; one rewritten in place is stored as this one read saw it).
        data = data[: st.st_size]
        self._note_changed(path, st, after, len(data), result)
        return data, st

    def _store_large(self, path: str, st: os.stat_result, base: dict[str, Any], result: RunResult,
                     packer: PackUploader, extents: list[tuple[int, int]] | None = None,
                     previous_listed: str | None = None) -> LargeResult:
        """A big file (or a sparse file's data regions, `extents`) in content-defined chunks, each
        stored once: a file that grew or changed in place adds only the chunks around the change.

        One read: the bytes chunked are the bytes hashed and stored, whatever the file does
        meanwhile. A file that changed during the read is read once more (its unchanged chunks
        are found in this run's packs); if it changes again, what the read saw is kept, with a
        warning. Only the first st_size bytes are read: what grows meanwhile is the next run's."""
        for attempt in range(2):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            except OSError as exc:
                result.failed.append({"path": path, "error": exc.strerror or str(exc)})
                return None
            try:
                chunks, sha, size = self._chunk(fd, extents or [(0, st.st_size)], packer,
                                                _previous_chunks(previous_listed))
                after = os.fstat(fd)
            except OSError as exc:
                result.failed.append({"path": path, "error": exc.strerror or str(exc)})
                return None
            finally:
                os.close(fd)
            changed = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns,
                                                                                st.st_ctime_ns)
            if not changed or attempt or extents is not None:  # holes may have moved: no second read
                break
            log.info("%s changed while read: reading it again", path)
            st = after
        self._note_changed(path, st, after, size, result)
        fields: dict[str, Any] = {**base, "mtime_ns": st.st_mtime_ns}
        if extents is not None:
            fields.update(extents=_trim(extents, size), length=st.st_size)
        if size:
            entry = Entry(type="file", size=size, sha256=sha, chunks=chunks, **fields)
        else:  # emptied meanwhile
            entry = Entry(type="file", size=0, sha256=EMPTY_SHA256, object="", offset=0, **fields)
        return entry, _cache_row(path, st, entry)

    def _chunk(self, fd: int, ranges: list[tuple[int, int]], packer: PackUploader,
               previous: list[tuple[int, str]] | None = None) -> tuple[list[Chunk], str, int]:
        """The chunks of `ranges` of the file, stored: (chunks, sha256 of all, bytes). Chunks are
        encoded on the encoder threads while this one cuts the next ones (at most CHUNKS_AHEAD
        bytes wait) and placed in the pack in the file's order, one file at a time. With the
        file's chunks of last time (`previous`), those still there are found by their SHA-256
        instead of the gear hash (Chunker.guided: same chunks; a grown log or a database file
        changed in place costs its SHA-256 passes, no longer the gear hash's too)."""
        whole = hashlib.sha256()
        pending: deque[tuple[Future[bytes] | Loc, int, str]] = deque()
        chunks: list[Chunk] = []
        size = ahead = 0

        def settle(until: int) -> None:
            nonlocal ahead
            while pending and ahead > until:
                work, n, sha = pending.popleft()
                loc = packer.place(work.result(), sha, n)[0] if isinstance(work, Future) else work
                chunks.append((loc[0], loc[1], loc[2], n, sha))
                ahead -= n

        seal = self.encoding.seal_data
        raw = [False]  # the file's last chunk encoded stayed raw: the next ones probe first

        def encode(data: bytes | memoryview, sha: str) -> bytes:
            piece = seal(data, sha, raw[0])
            raw[0] = not codec.is_compressed(piece)
            return piece

        chunker = self.encoding.chunker()
        pieces: Iterator[tuple[bytes | memoryview, str | None]]
        if previous and len(ranges) == 1 and ranges[0][0] == 0:
            pieces = chunker.guided(partial(_pread_at, fd), ranges[0][1], previous)
        else:
            pieces = ((data, None) for data in chunker.chunks(_RangeReader(fd, ranges)))
        with packer.one_file:
            for data, known in pieces:
                whole.update(data)
                sha = known or hashlib.sha256(data).hexdigest()
                found = packer.find(sha)
                work: Future[bytes] | Loc = found if found is not None else \
                    packer.encoders.submit(encode, data, sha) if packer.encoders is not None else \
                    _done(encode(data, sha))
                pending.append((work, len(data), sha))
                size += len(data)
                ahead += len(data)
                settle(CHUNKS_AHEAD)
            settle(-1)
        return chunks, whole.hexdigest(), size

    def _seed_cache_from_bucket(self, damaged: set[str]) -> str | None:
        """A new disk or node has no cache: learn what content the newest snapshot already stores,
        so losing state_dir costs a rescan and re-hash, not a second upload of everything.

        Only content whose object one LIST of the job's prefix shows whole (and that `check` has
        not found damaged) is reused: the manifest says where content was put, not that it is
        still there. Only the newest snapshot: every retention policy keeps it (and so its
        objects), while an older one may be pruned, from any machine, during this run.
        Returns the newest snapshot's id (None without a readable one)."""
        snaps = self.snapshots()
        if not snaps:
            return None
        newest = snaps[-1].id
        sizes = {o.key[len(self.root) :]: o.size for o in self.list_keys("")}
        batch: list[tuple[str, str, int, int, int]] = []
        reused = skipped = 0
        try:
            with self.open_manifest(newest) as (header, entries, _):
                if not self._same_encoding(header):
                    log.info("job %s: snapshot %s was stored by an earlier version or under another "
                             "encryption key: its content is stored again", self.job.name, newest)
                    return newest
                for e in entries:
                    if e.type != "file" or e.size <= 0 or not e.sha256:
                        continue
                    pieces = e.chunks if e.chunks is not None else \
                        [(str(e.object), e.offset, e.stored, e.size, e.sha256)] if e.stored is not None else []
                    for obj, offset, stored, size, sha in pieces:
                        if obj in damaged or sizes.get(obj, -1) < offset + stored:
                            skipped += 1
                            continue
                        batch.append((sha, obj, offset, size, stored))
                        reused += 1
                    if len(batch) >= STAGE_BATCH:
                        self.cache.add_blobs(batch)
                        batch = []
        except (IntegrityError, JobFailed, ConfigError) as exc:
            log.warning("job %s: cannot reuse what snapshot %s stores (%s): uploading all content",
                        self.job.name, newest, exc)
            self.cache.reset()
            return None  # not ours, maybe: its name must not set the time of the snapshots to come
        self.cache.add_blobs(batch)
        log.info("no local cache: reusing content stored by snapshot %s (%d pieces)", newest, reused)
        if skipped:
            log.warning("job %s: snapshot %s: %d piece(s) point at missing, short or damaged objects: "
                        "storing their content again", self.job.name, newest, skipped)
        return newest

    def _same_encoding(self, header: dict[str, Any]) -> bool:
        """Whether a snapshot's content is encoded as this run would (format 3, the same key or
        none): only then may this run point at it."""
        enc = header.get("encoding")
        return (header.get("version") == 3 and isinstance(enc, dict)
                and enc.get("key_id") == self.encoding.key_id)

    # --- restore -------------------------------------------------------------------------------

    def restore(self, *, snapshot: str | None, at: str | None, target: str, paths: list[str],
                wait: bool = False, tier: str | None = None, days: int | None = None) -> dict[str, Any]:
        if target == "-":
            raise ConfigError("--target -: only command jobs can restore to stdout; give a directory")
        for p in paths:
            if not p.startswith("/"):
                raise ConfigError(f"--path {p}: must be an absolute path as backed up (e.g. /etc/hosts)")
        snap = self.select(snapshot, at)
        wanted = [(w, w.rstrip("/") + "/") for w in (p.rstrip("/") or "/" for p in paths)]
        with self.manifest_passes(snap.id) as passes:

            def selected() -> Iterator[Entry]:
                for e in passes()[1]:
                    if not wanted or any(e.path == w or e.path.startswith(under) for w, under in wanted):
                        yield e

            return self._restore_selected(snap.id, selected, paths, Path(target), wait=wait, tier=tier, days=days)

    def _first_pass(self, entries: Iterator[Entry], resumed: Callable[[Entry], bool]
                    ) -> tuple[int, int, int, dict[str, int], list[Entry] | None]:
        """Entries, files with content, files an earlier run restored, bytes left to fetch by
        object key (plaintext: what the progress bar counts), and the entries themselves unless
        there are more than HOLD_ENTRIES."""
        count = content = skipped = 0
        object_bytes: dict[str, int] = {}
        held: list[Entry] | None = []
        for e in entries:
            count += 1
            if held is not None:
                held.append(e)
                if len(held) > HOLD_ENTRIES:
                    held = None
            if e.type == "file" and e.size > 0:
                content += 1
                if resumed(e):
                    skipped += 1
                elif e.chunks is not None:  # a big file: its chunks may live in several packs
                    for c in e.chunks:
                        key = self.root + c[0]
                        object_bytes[key] = object_bytes.get(key, 0) + c[3]
                else:
                    key = self.root + str(e.object)
                    object_bytes[key] = object_bytes.get(key, 0) + e.size
        return count, content, skipped, object_bytes, held

    def _restore_selected(self, sid: str, selected: Callable[[], Iterator[Entry]], paths: list[str], target: Path,
                          *, wait: bool, tier: str | None, days: int | None) -> dict[str, Any]:
        """Readable content is restored at once; archived objects are requested from Glacier and
        restored as they arrive (--wait) or by a rerun, which skips what an earlier run wrote.
        Directory metadata and symlinks come last, once all content is in place.

        A first pass reads and checks all of the manifest and counts before anything is written;
        then one pass per batch of objects that became readable, over the entries the first pass
        kept or, for a snapshot above HOLD_ENTRIES, over the manifest read again."""
        started = time.monotonic()
        root = os.path.realpath(target)
        progress_key = f"{sid}|{root}"
        thaw = self.thaw(tier, days)
        done = set(thaw.record.progress.get(progress_key, []))

        def resumed(e: Entry) -> bool:
            return all(o in done for o in e.objects()) and _already_restored(root, e)

        count, content, skipped, object_bytes, held = self._first_pass(selected(), resumed)
        if paths and not count:
            raise JobFailed(f"snapshot {sid}: no entry matches {', '.join(paths)}")
        kept = held
        entries: Callable[[], Iterable[Entry]] = selected if kept is None else (lambda: kept)
        needed = sorted(object_bytes)
        survey = thaw.prepare(needed)
        totals = {"files": skipped, "dirs": 0, "symlinks": 0, "specials": 0, "hardlinks": 0, "bytes": 0}
        finished: set[str] = set()  # object keys whose files this run restored
        while True:
            final = not survey.waiting
            readable = set(survey.ready)
            ready = readable - finished

            def batch(ready: set[str] = ready, readable: set[str] = readable, final: bool = final) -> Iterator[Entry]:
                # A file is restored in the first batch that finds all its objects readable
                # (a chunked file's may be several packs, arriving from Glacier one by one).
                for e in entries():
                    if e.type != "file" or e.size == 0:
                        if final:
                            yield e
                        continue
                    keys = [self.root + o for o in e.objects()]
                    if all(k in readable for k in keys) and any(k in ready for k in keys) and not resumed(e):
                        yield e

            try:
                part = restore_entries(self, batch(), target, sum(object_bytes.get(k, 0) for k in ready),
                                       self.data_encoding(sid))
            except OSError as exc:  # the target's file system: full, read-only, permissions
                name = exc.filename2 or exc.filename  # os.symlink/os.replace: the second is ours
                where = f" {name}" if name else ""
                raise JobFailed(f"restore into {root}: cannot write{where}: {exc.strerror or exc}") from None
            for k, v in part.items():  # files, dirs, symlinks, specials, hardlinks, bytes
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
            if part["errors"]:
                raise IntegrityError(f"snapshot {sid}: " + "; ".join(part["errors"][:5]),
                                     {**totals, "errors": part["errors"]})
            done |= {k[len(self.root) :] for k in ready}
            finished |= ready
            if final:
                break
            thaw.record.progress[progress_key] = sorted(done)
            thaw.record.save()
            if not wait:
                raise NotReady(thaw.pending_message(survey, f"restore {self.job.name}",
                                                    f"{totals['files']} of {content} file(s) restored so far"),
                               {"job": self.job.name, "snapshot": sid, "target": root,
                                "files_restored": totals["files"], **thaw.pending_details(survey)})
            survey = thaw.wait_for_more(survey, started)
        thaw.finish(needed, progress_key)
        archived = sum(cold.is_archived(c) for c in survey.storage_class.values())
        return {**totals, "files_already_restored": skipped, "archived_objects": archived,
                "restores_requested": survey.requested_now, "errors": [], "job": self.job.name,
                "snapshot": sid, "target": root}


def _done(value: T) -> Future[T]:
    """A future that already holds its result (work done on the caller's thread)."""
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def _cache_row(path: str, st: os.stat_result, entry: Entry) -> tuple[Any, ...]:
    """The cache's row of a file (state.FileCache): the stat keys it was read with, where its content is."""
    chunks = None if entry.chunks is None else json.dumps(entry.chunks, separators=(",", ":"))
    return (_cache_key(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, entry.sha256,
            entry.object or "", entry.offset, chunks, entry.stored)


def _cached_location(row: tuple[Any, ...]) -> tuple[Loc | None, list[Chunk] | None]:
    """Where an unchanged file's content is, from its cache row: a pack's piece, or chunks."""
    if row[8] is not None:
        return (str(row[5]), int(row[6]), int(row[8])), None
    if row[7]:
        return None, [(str(c[0]), int(c[1]), int(c[2]), int(c[3]), str(c[4])) for c in json.loads(row[7])]
    return None, None


def _previous_chunks(listed: str | None) -> list[tuple[int, str]] | None:
    """A big file's chunks of last time (size, sha256), from its cache row's chunk list; None for
    a file stored in one piece or never seen. The cache is kept per key (FileCache's target), so
    they were cut with this key's gear table: a guided cut never carries the boundaries of another
    (the public default's, before encryption was turned on) into snapshots under this one."""
    if not listed:
        return None
    return [(int(c[3]), str(c[4])) for c in json.loads(listed)]


def _pread_at(fd: int, offset: int, n: int) -> bytes:
    """n bytes of the file from offset; fewer only where it ends."""
    data = os.pread(fd, n, offset)
    if len(data) in (0, n):
        return data
    parts = [data]
    got = len(data)
    while got < n and (more := os.pread(fd, n - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _RangeReader:
    """Regions of a file back to back, as a file the chunker reads; a region cut short (the
    file shrank) ends it."""

    def __init__(self, fd: int, ranges: list[tuple[int, int]]) -> None:
        self.fd = fd
        self.ranges = [r for r in ranges if r[1] > 0]
        self.index = 0
        self.done = 0  # bytes of the current range read

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        want = n
        while want > 0 and self.index < len(self.ranges):
            off, length = self.ranges[self.index]
            got = os.pread(self.fd, min(want, length - self.done), off + self.done)
            if not got:  # shrank: nothing after this
                self.index = len(self.ranges)
                break
            parts.append(got)
            want -= len(got)
            self.done += len(got)
            if self.done >= length:
                self.index, self.done = self.index + 1, 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _already_restored(root: str, e: Entry) -> bool:
    """Written by an earlier run of the same restore: a verified file gets its mtime last. Looked
    up through real directories only: a link planted in the target since cannot pass a file
    outside it off as restored."""
    st = lstat_inside(root, e.path)
    return (st is not None and stat.S_ISREG(st.st_mode) and st.st_size == e.apparent_size
            and st.st_mtime_ns == e.mtime_ns)


def _read_upto(fd: int, want: int, expect: int) -> bytes:
    """Up to `want` bytes, fewer only at the end of the file or once `expect` bytes are read.

    Asking for exactly the size we expect (plus one byte, to notice growth) instead of the
    large-file threshold: a read of 8 MiB allocates 8 MiB first, which glibc maps and unmaps
    for every small file. A read that returns the expected size is not followed by one that
    finds the end (each read gives up the GIL, a wait behind the encoders to get it back):
    growth after it shows in the fstat the caller compares."""
    data = os.read(fd, want)
    while 0 < len(data) < want and len(data) != expect:
        more = os.read(fd, want - len(data))
        if not more:
            break
        data += more
    return data


def _cache_key(path: str) -> str:
    """The file cache's key for a path: the path itself, or for a name that is not UTF-8 (which
    SQLite cannot store as text) its bytes in hex behind a prefix no absolute path starts with."""
    if path.isascii():
        return path
    try:
        path.encode()
    except UnicodeEncodeError:
        return "bytes:" + os.fsencode(path).hex()
    return path


def _trim(extents: list[tuple[int, int]], stored: int) -> list[tuple[int, int]]:
    """The regions that `stored` bytes fill (fewer when the file shrank while read)."""
    out: list[tuple[int, int]] = []
    for off, n in extents:
        if stored <= 0:
            break
        out.append((off, min(n, stored)))
        stored -= n
    return out


_SPECIAL = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev"}
