"""`command` jobs: a program's standard output (a database dump, usually) streamed to S3.

A snapshot is one dump object under `dumps/<snapshot id>.dump[.gz|.zst]` plus a manifest with a
single `file` entry describing the stored bytes, so listing, retention, prune and
`check --read-data` work exactly as for file jobs.

The output is compressed and hashed on the way and sent as a multipart upload whose parts leave
while the command still writes: memory stays at a few parts whatever the dump's size, and
nothing touches the local disk. A non-zero exit, a timeout or a signal aborts the upload, so no
snapshot and no parts remain (the bucket's abort-incomplete-multipart rule catches a crash of
the agent itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from backup_agent.config import Config, Job
from backup_agent.config_schema import DEFAULT_COMMAND_TIMEOUT
from backup_agent.errors import ConfigError, IntegrityError, JobFailed, NotReady
from backup_agent.jobs import presets
from backup_agent.jobs.base import Clock, RunResult, S3Job, rfc3339, utcnow
from backup_agent.jobs.restore_files import commit, discard, open_new
from backup_agent.state import JobLock, ensure_dir
from backup_agent.storage import layout
from backup_agent.storage.manifest import Entry, ManifestWriter
from backup_agent.storage.store import Archived, MultipartUpload, Store, StoreError

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20
IN_FLIGHT = 2  # parts uploading while the next one fills: memory is about IN_FLIGHT + 1 parts
READ_SIZE = 1 << 20
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
STDERR_TAIL = 5
STDERR_BURST = 20  # stderr lines logged at once; then one per STDERR_REFILL seconds
STDERR_REFILL = 5.0
STDERR_CHUNK = 64 << 10
LINE_MAX = 2000  # characters of one stderr line kept; the rest of the line is skipped unread
DEFAULT_TIMEOUT = DEFAULT_COMMAND_TIMEOUT  # the schema's default of a command job's `timeout`
# After the program exits and its group is killed, how long its output may still take to
# reach EOF (a holder that left the group with setsid is then ignored).
EOF_GRACE = 5.0
SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}
# Credentials the agent itself may hold; a command run as another user must not inherit them.
AGENT_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def part_size(part_number: int) -> int:
    """Size to reach before sending part `part_number` (1-based).

    S3 allows 10,000 parts; growing by 8 MiB every 1,000 parts keeps dumps up to 8 GB at
    8 MiB parts (the least memory) and still reaches 440 GB before the part numbers run out.
    """
    return PART_SIZE * (1 + (part_number - 1) // 1000)


# --- compression ---------------------------------------------------------------------------------

class Codec(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes | memoryview: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes | memoryview) -> bytes | memoryview:
        return data

    def flush(self) -> bytes:
        return b""


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError:
        raise ConfigError("compression: zstd needs the Python package zstandard "
                          "(pip install zstandard), or use gzip") from None
    return zstandard


def compressor(kind: str) -> Codec:
    if kind == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing with its CRC
    if kind == "zstd":
        codec: Codec = _zstd().ZstdCompressor(level=3, write_checksum=True).compressobj()
        return codec
    return _Identity()


class Decoder:
    """Undo `compressor(kind)`; `finish` refuses a stream that ended early."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.obj: Any = None
        if kind == "gzip":
            self.obj = zlib.decompressobj(31)
        elif kind == "zstd":
            self.obj = _zstd().ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        if self.obj is None:
            return data
        if self.obj.eof:
            raise ValueError("data after the end of the compressed stream")
        return self.obj.decompress(data)  # type: ignore[no-any-return]

    def finish(self) -> bytes:
        if self.obj is None:
            return b""
        tail: bytes = self.obj.flush() if self.kind == "gzip" else b""
        if not self.obj.eof:
            raise ValueError("the compressed stream ends early")
        if self.obj.unused_data:
            raise ValueError("data after the end of the compressed stream")
        return tail


# --- the child process ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str


def resolve_user(name: str | None, where: str) -> RunAs | None:
    if not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"{where}.user: no such user '{name}' on this node") from None
    if pw.pw_uid == os.geteuid():
        return None  # already that user: nothing to switch
    if os.geteuid() != 0:
        raise ConfigError(f"{where}.user: running the command as '{name}' needs the agent to run as root")
    groups = os.getgrouplist(name, pw.pw_gid)
    return RunAs(name, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir)


def child_env(base: dict[str, str], job_env: dict[str, str], extra: dict[str, str],
              run_as: RunAs | None) -> dict[str, str]:
    env = dict(base)
    if run_as is not None:
        for key in AGENT_SECRETS:
            env.pop(key, None)
        env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
    # The preset's settings win over inherited ones (a stray PGHOST must not redirect a dump);
    # the job's own env wins over both, as the most explicit.
    return {**env, **extra, **job_env}


class StderrLog:
    """A command's stderr into the log, bounded in memory and in log volume.

    Read in chunks, never by line: one 100 MB line without a newline is cut at LINE_MAX and the
    rest skipped. A burst of STDERR_BURST lines is logged at once, then one line per
    STDERR_REFILL seconds (a dump warning now and then in a long run still shows); the rest is
    counted and, at the end, summarised with the last STDERR_TAIL lines.
    """

    def __init__(self, job: str, label: str, redact: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.label, self.redact = job, label, redact
        self.clock = clock
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.unlogged: deque[str] = deque(maxlen=STDERR_TAIL)  # the last lines the limit held back
        self.dropped = 0
        self.tokens = float(STDERR_BURST)
        self.refilled = clock()
        self.partial = bytearray()
        self.cut = False  # the current line is longer than LINE_MAX: the rest is skipped

    def feed(self, chunk: bytes) -> None:
        lines = chunk.split(b"\n")
        for i, piece in enumerate(lines):
            if not self.cut:
                room = LINE_MAX - len(self.partial)
                self.partial += piece[:room]
                self.cut = len(piece) > room
            if i < len(lines) - 1:  # a newline ended this piece
                self._line(bytes(self.partial))
                self.partial.clear()
                self.cut = False

    def close(self) -> None:
        if self.partial:
            self._line(bytes(self.partial))
            self.partial.clear()
        if self.dropped:
            log.warning("job %s: %s: %d more stderr line(s) not logged (rate limit); the last: %s", self.job,
                        self.label, self.dropped, " | ".join(self.unlogged))
            self.dropped = 0

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if self.cut:
            line += " [line cut]"
        if self.redact:
            line = line.replace(self.redact, "***")
        self.tail.append(line)
        now = self.clock()
        self.tokens = min(float(STDERR_BURST), self.tokens + (now - self.refilled) / STDERR_REFILL)
        self.refilled = now
        if self.tokens >= 1:
            self.tokens -= 1
            log.warning("job %s: %s: %s", self.job, self.label, line)
        else:
            self.dropped += 1
            self.unlogged.append(line)


class Child:
    """A command in its own process group, its stderr sent to the log, and a deadline.

    The command's end is its group's end: once the program itself exits, members of its process
    group still running (a background child holding stdout open, say) are killed, so a job can
    never wait on a process it did not ask for.
    """

    def __init__(self, argv: list[str], env: dict[str, str], run_as: RunAs | None, *, job: str,
                 redact: str | None = None, stdin: int | None = subprocess.DEVNULL,
                 stdout: int | None = subprocess.PIPE, timeout: float | None = None) -> None:
        self.label = os.path.basename(argv[0]) if argv else "command"
        self.job = job
        self.stderr = StderrLog(job, self.label, redact or None)
        self.timed_out = False
        self.leftovers = False
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=run_as.groups,
                          cwd=run_as.home if os.path.isdir(run_as.home) else "/")
        try:
            # A new session: a timeout kills the whole pipeline (sh -c 'a | b'), not just its head,
            # and a Ctrl-C at the terminal reaches the agent, which then cleans up in order.
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env,
                                         start_new_session=True, **kwargs)
        except OSError as exc:
            raise JobFailed(f"job {job}: cannot start {argv[0]}: {exc.strerror or exc}") from None
        self._stderr = threading.Thread(target=self._read_stderr, name=f"{self.label}-stderr", daemon=True)
        self._stderr.start()
        self._timer: threading.Timer | None = None
        if timeout:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()
        if stdout == subprocess.PIPE and self.proc.stdout is not None:
            with contextlib.suppress(OSError):
                # A 1 MiB pipe (the unprivileged maximum) means fewer, larger reads.
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, READ_SIZE)

    @property
    def tail(self) -> deque[str]:
        return self.stderr.tail

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        try:
            while chunk := os.read(fd, STDERR_CHUNK):
                self.stderr.feed(chunk)
        except OSError:
            pass
        self.stderr.close()

    def _on_timeout(self) -> None:
        self.timed_out = True
        log.warning("job %s: %s still running at the timeout: stopping it", self.job, self.label)
        self.kill()

    def exited(self) -> bool:
        """True once the program itself has exited; it stays unreaped (its pid keeps naming the
        group, so a later killpg cannot reach an unrelated process that reused the number)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0

    def kill_leftovers(self) -> None:
        """The program exited (unreaped): kill what is left of its process group."""
        others = _group_members(self.proc.pid) - {self.proc.pid}
        if others:
            self.leftovers = True
            log.warning("job %s: %s exited, but %d process(es) it started still run (holding its output "
                        "open?): killing them", self.job, self.label, len(others))
        self._signal(signal.SIGKILL)

    def kill(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a grace period."""
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        # Members of the group that outlive the leader still get the KILL.
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
            self.kill_leftovers()
        code = self.proc.wait()
        if self._timer is not None:
            self._timer.cancel()
        # stderr ends when the last holder dies; one that escaped the group must not hold us.
        self._stderr.join(5)
        return code

    def failure(self, code: int, timeout: float | None) -> str:
        """One line: why the command failed, with the end of its stderr."""
        if self.timed_out:
            why = f"{self.label} timed out after {timeout:g}s"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            why = f"{self.label} was killed by {name}"
        else:
            why = f"{self.label} exited with status {code}"
        said = " | ".join(self.tail)
        return f"{why}: {said}" if said else why


def _group_members(pgid: int) -> set[int]:
    """Processes of a process group, from /proc (a zombie leader still counts for killpg)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            found.add(int(name))
    return found


# --- streaming upload ----------------------------------------------------------------------------

class StreamUpload:
    """Bytes in, one S3 object out: a single PUT if it stays under one part, multipart otherwise.

    Parts are filled into a fixed set of IN_FLIGHT + 1 buffers that are reused, so memory stays
    at those buffers however long the stream (allocating a fresh 8 MiB per part fragments the
    heap and lets RSS creep up). Parts upload in the background; `write` blocks while every
    buffer is busy, which in turn blocks the command on its pipe: back-pressure, not buffering.
    """

    def __init__(self, store: Store, key: str, storage_class: str | None) -> None:
        self.store, self.key, self.storage_class = store, key, storage_class
        self.sha = hashlib.sha256()
        self.size = 0
        self.upload: MultipartUpload | None = None
        self.parts: list[Future[None]] = []
        self.failed: BaseException | None = None
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(IN_FLIGHT):
            self.free.put(bytearray(PART_SIZE))
        self.cur = bytearray(PART_SIZE)
        self.fill = 0
        self.pool = ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="part")

    def write(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.sha.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            n = min(len(self.cur) - self.fill, len(view))
            self.cur[self.fill : self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == len(self.cur):
                self._send(self.cur)
                self.cur, self.fill = self._next_buffer(), 0

    def _next_buffer(self) -> bytearray:
        buf = self.free.get()  # waits for an upload to finish when all buffers are in flight
        if self.failed is not None:
            raise self.failed
        want = part_size(len(self.parts) + 1)
        return buf if len(buf) == want else bytearray(want)

    def _send(self, body: bytearray) -> None:
        if self.failed is not None:
            raise self.failed
        if self.upload is None:
            self.upload = self.store.start_multipart(self.key, storage_class=self.storage_class)
        number = len(self.parts) + 1
        self.parts.append(self.pool.submit(self._part, number, body))

    def _part(self, number: int, body: bytearray) -> None:
        assert self.upload is not None
        try:
            # SHA-256 per part, verified by the store: payloads are not signed, so this is what
            # guards the bytes in transit. A bytearray is sent as it is: no copy of the part.
            self.upload.upload_part(number, body, hashlib.sha256(body).hexdigest())  # type: ignore[arg-type]
        except BaseException as exc:
            self.failed = exc
            raise
        finally:
            self.free.put(body)

    def finish(self) -> int:
        """Complete the object; returns the number of parts (0 = single PUT)."""
        tail = self.cur[: self.fill]
        self.cur, self.fill = bytearray(), 0
        if self.upload is None:
            self.pool.shutdown()
            self.store.put(self.key, bytes(tail), sha256=hashlib.sha256(tail).hexdigest(),
                           storage_class=self.storage_class)
            return 0
        if tail:
            self._send(tail)  # the last part may be smaller than the minimum
        for f in self.parts:
            f.result()
        self.pool.shutdown()
        self.upload.complete()
        return len(self.parts)

    def abort(self) -> None:
        """Drop everything sent so far; safe to call in any state."""
        for f in self.parts:
            f.cancel()
        self.pool.shutdown(wait=True)
        if self.upload is None:
            return
        try:
            self.upload.abort()
        except StoreError as exc:
            log.warning("cannot abort the upload of %s (the bucket's lifecycle rule will): %s", self.key, exc)


# --- the job -------------------------------------------------------------------------------------

class CommandJob(S3Job):
    def __init__(self, cfg: Config, job: Job, clock: Clock = utcnow, store: Store | None = None) -> None:
        super().__init__(cfg, job, clock, store)
        self.opts = job.options
        self.where = f"{cfg.path}: jobs.{job.name}"
        self.compression = self.opts["compression"]
        self.timeout = job.timeout or DEFAULT_TIMEOUT

    # --- run -----------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.monotonic()
        run_as = resolve_user(self.opts.get("user"), self.where)
        if self.compression == "zstd":
            _zstd()
        ensure_dir(self.cfg.state_dir)
        with JobLock(self.cfg.state_dir, self.job.name):
            return self._run(started, run_as)

    def _argv(self, secret: str | None) -> presets.Prepared:
        if self.opts.get("preset"):
            return presets.dump_argv(self.opts, secret, we_compress=self.compression != "none",
                                     path=os.environ.get("PATH"))
        command = list(self.opts["command"])
        if self.opts.get("shell"):
            return presets.Prepared(["/bin/sh", "-c", " ".join(command)])
        return presets.Prepared(command)

    def _run(self, started: float, run_as: RunAs | None) -> RunResult:
        now = self.clock()
        # After the newest snapshot whatever the clock says (one LIST): snapshots keep the order
        # they were made in, which latest, --at and retention follow.
        newest = self.snapshots()
        sid = layout.new_snapshot_id(now, after=newest[-1].id if newest else None)
        result = RunResult(job=self.job.name, snapshot=None)
        self.warn_if_unversioned(result)
        name = f"{self.job.name}.dump{SUFFIX[self.compression]}"
        obj = f"dumps/{sid}.dump{SUFFIX[self.compression]}"
        key = self.root + obj
        upload = StreamUpload(self.store, key, self.opts["storage_class"])
        owner = (run_as.uid, run_as.gid) if run_as else None
        with presets.secret_file(self.opts, owner) as secret:
            prepared = self._argv(secret)
            env = child_env(dict(os.environ), self.opts.get("env") or {}, prepared.env, run_as)
            log.info("job %s: running %s", self.job.name, prepared.argv[0])
            child = Child(prepared.argv, env, run_as, job=self.job.name, redact=self.opts.get("password"),
                          timeout=self.timeout)
            raw = self._stream(child, upload)
        if raw == 0 and not self.opts["allow_empty"]:
            # A dump tool that exits 0 without output (wrong database, a wrapper that swallowed
            # the error) is not a backup: nothing is stored and the run fails.
            upload.abort()
            raise JobFailed(f"job {self.job.name}: {prepared.argv[0]} exited 0 but wrote nothing; no snapshot "
                            "made (set allow_empty: true if an empty output is a valid backup)")
        parts = self._finish(upload)
        log.info("job %s: stored %d bytes (%d before %s) in %s", self.job.name, upload.size, raw,
                 self.compression, "one PUT" if not parts else f"{parts} parts")
        if raw == 0:
            msg = f"{prepared.argv[0]} wrote nothing: the snapshot holds an empty dump (allow_empty)"
            log.warning("job %s: %s", self.job.name, msg)
            result.warnings.append(msg)

        result.duration_s = time.monotonic() - started
        summary = {"files_new": 1, "bytes_uploaded": upload.size, "bytes_total": raw, "bytes_raw": raw,
                   "bytes_stored": upload.size, "parts": parts, "duration_s": round(result.duration_s, 3)}
        header = {"snapshot": sid, "job": self.job.name, "node": self.cfg.node, "type": "command",
                  "environment": self.cfg.environment, "time": rfc3339(now),
                  "preset": self.opts.get("preset"),
                  "tool": os.path.basename(prepared.argv[0]), "compression": self.compression,
                  "storage_class": self.opts["storage_class"], "extension": presets.extension(self.opts)}
        with tempfile.TemporaryFile(dir=ensure_dir(self.cfg.state_dir / "tmp")) as spool:
            writer = ManifestWriter(spool, header)
            writer.add(Entry(path=f"/{name}", type="file", size=upload.size, sha256=upload.sha.hexdigest(),
                             object=obj, offset=0, mode=0o600, mtime_ns=int(now.timestamp() * 1e9)))
            writer.close(summary)
            try:
                self.upload_manifest(sid, spool)
            except StoreError as exc:
                self._discard(key)
                raise JobFailed(f"job {self.job.name}: cannot store the manifest, no snapshot made: {exc}") from None
        result.snapshot = sid
        result.files_new = 1
        result.bytes_uploaded = upload.size
        result.bytes_total = raw
        result.extra.update(bytes_raw=raw, bytes_stored=upload.size, compression=self.compression, object=obj)
        result.duration_s = time.monotonic() - started
        return result

    def _stream(self, child: Child, upload: StreamUpload) -> int:
        """Pump the command's stdout through the compressor into the upload; return raw bytes."""
        codec = compressor(self.compression)
        raw = 0
        assert child.proc.stdout is not None
        fd = child.proc.stdout.fileno()
        buf = bytearray(READ_SIZE)  # reused: no allocation per read
        view = memoryview(buf)
        exited_at: float | None = None
        try:
            while True:
                # Never block on the pipe alone: once the program exits, whatever still holds its
                # output must not keep the job (and the daemon's slot) forever.
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    n = os.readv(fd, [buf])
                    if not n:
                        break
                    raw += n
                    upload.write(codec.compress(view[:n]))
                elif exited_at is None and child.exited():
                    child.kill_leftovers()
                    exited_at = time.monotonic()
                elif exited_at is not None and time.monotonic() - exited_at > EOF_GRACE:
                    log.warning("job %s: a process outside %s's group still holds its output: ignored",
                                self.job.name, child.label)
                    break
            upload.write(codec.flush())
            code = child.wait()
        except StoreError as exc:
            child.kill()
            child.wait()
            upload.abort()
            raise JobFailed(f"job {self.job.name}: upload failed, no snapshot made: {exc}") from None
        except BaseException:
            child.kill()
            child.wait()
            upload.abort()
            raise
        finally:
            child.proc.stdout.close()
        if code != 0 or child.timed_out:
            upload.abort()
            raise JobFailed(f"job {self.job.name}: {child.failure(code, self.timeout)}; no snapshot made")
        return raw

    def _finish(self, upload: StreamUpload) -> int:
        try:
            parts = upload.finish()
        except StoreError as exc:
            upload.abort()
            raise JobFailed(f"job {self.job.name}: upload failed, no snapshot made: {exc}") from None
        except BaseException:
            upload.abort()
            raise
        try:
            head = self.store.stat(upload.key)
        except StoreError as exc:
            self._discard(upload.key)
            raise JobFailed(f"job {self.job.name}: cannot verify the stored dump, no snapshot made: {exc}") from None
        if head.size != upload.size:
            self._discard(upload.key)
            raise JobFailed(f"job {self.job.name}: the store holds {head.size} bytes of "
                            f"{upload.size} sent; no snapshot made")
        return parts

    def _discard(self, key: str) -> None:
        # Without a manifest nothing references the object; prune would delete it later anyway.
        with contextlib.suppress(StoreError):
            self.store.delete([key])

    # --- restore -------------------------------------------------------------------------------

    def restore(self, *, snapshot: str | None, at: str | None, target: str | None, paths: list[str],
                wait: bool = False, tier: str | None = None, days: int | None = None,
                into: str | None = None, clean: bool = False) -> dict[str, Any]:
        if paths:
            raise ConfigError("--path: a command job's snapshot is one dump; restore it whole")
        if into is None and not target:
            raise ConfigError("restore: give --target FILE|DIR|- or --into DATABASE")
        if clean and into is None:
            raise ConfigError("--clean: only with --into DATABASE")
        if target == "-":
            _check_stdout()
        if into is not None and not self.opts.get("preset") and not self.opts.get("restore_command"):
            raise ConfigError(f"{self.where}.restore_command: --into needs a preset or restore_command "
                              "(or use --target - and pipe it yourself)")
        snap = self.select(snapshot, at)
        with self.open_manifest(snap.id) as (header, entries, _):
            files = [e for e in entries if e.type == "file"]
        if header.get("type") != "command" or len(files) != 1:
            raise IntegrityError(f"snapshot {snap.id}: not a command job's snapshot (one dump expected)")
        entry = files[0]
        kind = header.get("compression", "none")
        if kind not in SUFFIX:
            raise IntegrityError(f"snapshot {snap.id}: unknown compression {kind!r}")
        assert entry.object is not None
        key = self.root + entry.object
        thaw = self._ensure_readable(key, wait, tier, days)
        out: dict[str, Any] = {"job": self.job.name, "snapshot": snap.id, "files": 1,
                               "bytes_stored": entry.size}
        if into is not None:
            out.update(self._restore_into(snap.id, entry, key, kind, into, clean))
        elif target == "-":
            # Verified whole before the first byte reaches stdout: a reader (pg_restore, mysql)
            # never applies part of a dump that turns out corrupt.
            with self._spooled(snap.id, entry, key, kind) as (spool, size):
                _copy_to_stdout(spool)
            out.update(target="-", bytes=size)
        else:
            assert target is not None
            out.update(self._restore_file(snap.id, entry, key, kind, Path(target), header))
        thaw.finish([key])
        return out

    def _restore_file(self, sid: str, entry: Entry, key: str, kind: str, target: Path,
                      header: dict[str, Any]) -> dict[str, Any]:
        dest = target / f"{self.job.name}.{header.get('extension') or 'dump'}" if target.is_dir() else target
        if not dest.parent.is_dir():
            raise ConfigError(f"--target {target}: directory {dest.parent} does not exist")
        # A private temp name (O_EXCL, chosen by nobody else) in the target's directory: a file
        # or link someone planted at a predictable name must not decide where the dump goes.
        dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            tmp, fd = open_new(dfd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    size = self._download(sid, entry, key, kind, fh.write)
                    fh.flush()
                    os.fsync(fh.fileno())
            except BaseException:
                discard(dfd, tmp)
                raise
            commit(dfd, tmp, dest.name)  # only a verified dump gets the real name, over any link there
        finally:
            os.close(dfd)
        return {"target": str(dest.resolve()), "bytes": size}

    @contextlib.contextmanager
    def _spooled(self, sid: str, entry: Entry, key: str, kind: str) -> Iterator[tuple[IO[bytes], int]]:
        """The dump, downloaded, decompressed and verified (size, sha256, codec end) into a private
        unnamed temp file (O_TMPFILE, 0600) under state_dir/tmp, positioned at its start.

        Needs free space for the uncompressed dump; nothing reaches a database or stdout before
        the whole dump has been checked.
        """
        try:
            spool = tempfile.TemporaryFile(dir=ensure_dir(self.cfg.state_dir / "tmp"))  # noqa: SIM115
        except (OSError, JobFailed):
            # $TMPDIR: a restore on a fresh node may have no state_dir yet, or a read-only one.
            spool = tempfile.TemporaryFile()  # noqa: SIM115
        with spool:
            size = self._download(sid, entry, key, kind, spool.write)
            spool.flush()
            spool.seek(0)
            yield spool, size

    def _restore_into(self, sid: str, entry: Entry, key: str, kind: str, into: str,
                      clean: bool) -> dict[str, Any]:
        run_as = resolve_user(self.opts.get("user"), self.where)
        owner = (run_as.uid, run_as.gid) if run_as else None
        custom = bool(self.opts.get("restore_command"))
        with self._spooled(sid, entry, key, kind) as (spool, size), presets.secret_file(self.opts, owner) as secret:
            if custom:
                prepared = presets.Prepared([a.replace("{into}", into) for a in self.opts["restore_command"]])
                if self.opts.get("preset") == "postgresql":
                    prepared.env = presets.pg_env(self.opts) | ({"PGPASSFILE": secret} if secret else {})
                # The agent cannot know what a command of the user's replaces: it says what was asked.
                prepared.env["BACKUP_AGENT_CLEAN"] = "1" if clean else "0"
            else:
                self._guard_target(into, clean, secret, run_as)
                prepared = presets.restore_argv(self.opts, secret, into, path=os.environ.get("PATH"), clean=clean)
            env = child_env(dict(os.environ), self.opts.get("env") or {}, prepared.env, run_as)
            log.info("job %s: restoring snapshot %s (verified, %d bytes) with %s into %s", self.job.name, sid,
                     size, prepared.argv[0], into)
            # The tool reads the verified spool itself; its stdout goes to our stderr, so stdout
            # stays clean for --json.
            child = Child(prepared.argv, env, run_as, job=self.job.name, redact=self.opts.get("password"),
                          stdin=spool.fileno(), stdout=sys.stderr.fileno())
            code = child.wait()
        if code != 0:
            raise JobFailed(f"job {self.job.name}: restore into {into}: {child.failure(code, None)}")
        return {"target": f"{self.opts.get('preset') or 'restore_command'} database {into}", "bytes": size,
                "clean": clean}

    def _guard_target(self, into: str, clean: bool, secret: str | None, run_as: RunAs | None) -> None:
        """Refuse a target database that already has tables unless --clean; with it, say which.

        A mysqldump file drops every table it holds before creating it, and pg_restore --clean
        drops the dump's objects: neither must happen to a database nobody meant to overwrite.
        """
        prepared = presets.tables_argv(self.opts, secret, into, path=os.environ.get("PATH"))
        env = child_env(dict(os.environ), self.opts.get("env") or {}, prepared.env, run_as)
        child = Child(prepared.argv, env, run_as, job=self.job.name, redact=self.opts.get("password"),
                      timeout=120)
        assert child.proc.stdout is not None
        listing = child.proc.stdout.read(1 << 20)
        child.proc.stdout.close()
        code = child.wait()
        if code != 0:
            raise JobFailed(f"job {self.job.name}: restore into {into}: cannot list its tables: "
                            f"{child.failure(code, 120)}")
        tables = [t for t in listing.decode("utf-8", "replace").splitlines() if t.strip()]
        if not tables:
            return
        shown = ", ".join(tables[:10]) + (f" and {len(tables) - 10} more" if len(tables) > 10 else "")
        if not clean:
            raise ConfigError(f"restore --into {into}: the database already has {len(tables)} table(s) ({shown}); "
                              "nothing was changed. Restore into an empty database, or add --clean to "
                              "drop and replace the tables the dump contains")
        # The confirmation the operator asked for, on stderr whatever the log level.
        print(f"backup-agent: restore --clean: {into} has {len(tables)} table(s) ({shown}); those the dump "
              "contains are dropped and replaced, the others are left alone", file=sys.stderr, flush=True)

    def _download(self, sid: str, entry: Entry, key: str, kind: str, write: Callable[[bytes], Any]) -> int:
        """Stream the stored object through the decoder into `write`; verify size and sha256."""
        decoder = Decoder(kind)

        def deliver(data: bytes) -> None:
            # Kept apart from read errors: a full disk must fail the restore, not be retried.
            try:
                write(data)
            except OSError as exc:
                raise JobFailed(f"restore: cannot write the dump: {exc.strerror or exc}") from None

        sha = hashlib.sha256()
        pos = raw = 0
        try:
            # A connection that breaks mid-body is resumed inside the store from where it broke.
            body = self.store.get(key, 0, entry.size)
        except Archived:
            raise NotReady(f"{key} is archived and not restored yet") from None
        except StoreError as exc:
            raise JobFailed(f"snapshot {sid}: cannot read {key}: {exc}") from None
        try:
            while pos < entry.size:
                chunk = body.read(min(READ_SIZE, entry.size - pos))
                if not chunk:
                    break
                sha.update(chunk)
                pos += len(chunk)
                out = _decode(decoder, chunk, sid)
                raw += len(out)
                deliver(out)
        except StoreError as exc:
            raise JobFailed(f"snapshot {sid}: cannot read {key}: {exc}") from None
        finally:
            body.close()
        if sha.hexdigest() != entry.sha256:
            raise IntegrityError(f"snapshot {sid}: {key} does not match its sha256; "
                                 "the restored dump is unusable")
        try:
            tail = decoder.finish()
        except Exception as exc:  # zlib.error, ValueError, zstandard.ZstdError
            raise IntegrityError(f"snapshot {sid}: {key}: {exc}") from None
        if tail:
            deliver(tail)
        return raw + len(tail)

    def _ensure_readable(self, key: str, wait: bool, tier: str | None, days: int | None) -> Any:
        """Archived (Glacier) dumps must be restored by S3 before they can be read; returns the
        Thaw to close once the dump is read."""
        thaw = self.thaw(tier, days)
        survey = thaw.prepare([key])
        started = time.monotonic()
        while survey.waiting:
            if not wait:
                raise NotReady(thaw.pending_message(survey, f"restore {self.job.name}"),
                               thaw.pending_details(survey))
            survey = thaw.wait_for_more(survey, started)
        return thaw


def _decode(decoder: Decoder, chunk: bytes, sid: str) -> bytes:
    try:
        return decoder.feed(chunk)
    except Exception as exc:  # zlib.error, ValueError, zstandard.ZstdError
        raise IntegrityError(f"snapshot {sid}: the dump does not decompress: {exc}") from None


def _check_stdout() -> None:
    # Python leaves sys.stdout None when the process started with fd 1 closed; fd 1 may since
    # have been reused by a file or socket of ours, which must not receive the dump.
    try:
        if sys.stdout is None or sys.stdout.fileno() != 1:
            raise OSError
        os.fstat(1)
    except (OSError, ValueError):
        raise ConfigError("--target -: standard output is closed; redirect it to a file or a pipe") from None


def _copy_to_stdout(spool: IO[bytes]) -> None:
    fd = 1  # not sys.stdout: it is None when the process started with stdout closed
    try:
        while chunk := spool.read(READ_SIZE):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise JobFailed("restore: stdout was closed before the dump ended") from None
    except OSError as exc:
        raise JobFailed(f"restore: cannot write the dump to stdout: {exc.strerror or exc}") from None
