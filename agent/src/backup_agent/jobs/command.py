"""`command` jobs: a program's standard output (a database dump, usually) streamed to S3.

A snapshot is one dump object under `dumps/<snapshot id>.dump[.gz|.zst]` plus a manifest with a
single `file` entry describing the stored bytes, so listing, retention, prune and
`check --read-data` work exactly as for file jobs.

The output is compressed and hashed on the way and sent as a multipart upload whose parts leave
while the command still writes: memory stays at a few parts whatever the dump's size, and
nothing touches the local disk. A non-zero exit, a timeout or a signal aborts the upload, so no
snapshot and no parts remain (the bucket's abort-incomplete-multipart rule catches a crash of
the agent itself).

With `storage.encryption_key` set, the compressed dump is then one streamed piece of the codec
(storage/codec.py: sealed with AES-256-GCM, a MiB segment at a time) under
`dumps/<snapshot id>.sealed`, bound to that name: the entry's `size`/`sha256` describe the
compressed dump as before and `stored` the encoded object. Without a key nothing changes: the
object is the compressed dump itself (`aws s3 cp … - | zstd -d` reads it).

This module runs a job; the pieces live beside it: process.py (the child process),
compression.py, stream_upload.py (the streamed upload), dump_restore.py (restoring a dump).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import tempfile
import time
from collections.abc import Iterator

from backup_agent.config import Config, Job
from backup_agent.config_schema import DEFAULT_COMMAND_TIMEOUT
from backup_agent.errors import JobFailed
from backup_agent.jobs import presets
from backup_agent.jobs.base import Clock, RunResult, rfc3339, utcnow
from backup_agent.jobs.compression import SUFFIX, Decoder, compressor, zstd
from backup_agent.jobs.dump_restore import DumpRestore
from backup_agent.jobs.process import Child, RunAs, child_env, resolve_user
from backup_agent.jobs.stream_upload import IN_FLIGHT, StreamUpload, part_size
from backup_agent.state import JobLock, ensure_dir
from backup_agent.storage import layout
from backup_agent.storage.manifest import Entry, ManifestWriter
from backup_agent.storage.store import Store, StoreError

log = logging.getLogger(__name__)

# Used from outside (tests): the run's pieces as they were named when they lived here.
__all__ = ["DEFAULT_TIMEOUT", "IN_FLIGHT", "CommandJob", "Decoder", "StreamUpload", "compressor", "part_size"]

READ_SIZE = 1 << 20
DEFAULT_TIMEOUT = DEFAULT_COMMAND_TIMEOUT  # the schema's default of a command job's `timeout`
# After the program exits and its group is killed, how long its output may still take to
# reach EOF (a holder that left the group with setsid is then ignored).
EOF_GRACE = 5.0


class CommandJob(DumpRestore):
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
            zstd()
        _ = self.encoding  # a bad storage.encryption_key fails here, before the command runs
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
        sealed = self.encoding.sealed
        # A sealed object is not a readable dump: its name does not pretend to be one.
        obj = f"dumps/{sid}.sealed" if sealed else f"dumps/{sid}.dump{SUFFIX[self.compression]}"
        key = self.root + obj
        upload = StreamUpload(self.store, key, self.opts["storage_class"])
        owner = (run_as.uid, run_as.gid) if run_as else None
        with presets.secret_file(self.opts, owner) as secret:
            prepared = self._argv(secret)
            env = child_env(dict(os.environ), self.opts.get("env") or {}, prepared.env, run_as)
            log.info("job %s: running %s", self.job.name, prepared.argv[0])
            child = Child(prepared.argv, env, run_as, job=self.job.name, redact=self.opts.get("password"),
                          timeout=self.timeout)
            dump = self._stream(child, upload, obj if sealed else None)
        raw = dump.raw
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
        if sealed:
            size, sha256, stored = dump.size, dump.sha.hexdigest(), upload.size
        else:  # the object is the compressed dump: `size`/`sha256` describe it, as before #20
            size, sha256, stored = upload.size, upload.sha.hexdigest(), None
        header = {"snapshot": sid, "job": self.job.name, "node": self.cfg.node, "type": "command",
                  "environment": self.cfg.environment, "time": rfc3339(now),
                  "preset": self.opts.get("preset"),
                  "tool": os.path.basename(prepared.argv[0]), "compression": self.compression,
                  "storage_class": self.opts["storage_class"], "extension": presets.extension(self.opts),
                  **({"encoding": self.encoding.header()} if sealed else {})}
        with tempfile.TemporaryFile(dir=ensure_dir(self.cfg.state_dir / "tmp")) as spool:
            writer = ManifestWriter(spool, header)
            writer.add(Entry(path=f"/{name}", type="file", size=size, sha256=sha256, object=obj, offset=0,
                             stored=stored, mode=0o600, mtime_ns=int(now.timestamp() * 1e9)))
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

    def _stream(self, child: Child, upload: StreamUpload, aad: str | None) -> _Dump:
        """Pump the command's stdout through the compressor (and, with `aad`, the codec, sealed
        for that name) into the upload; return what the dump was before the codec."""
        dump = _Dump(hashed=aad is not None)
        assert child.proc.stdout is not None
        try:
            pieces: Iterator[bytes | memoryview] = self._output(child, dump)
            if aad is not None:
                # The codec holds on to parts it has not consumed yet: bytes, never views of the
                # reused read buffer (bytes() of a bytes object is that object: no copy).
                pieces = self.encoding.data.encode_iter((bytes(p) for p in pieces), aad.encode())
            for piece in pieces:
                upload.write(piece)
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
        return dump

    def _output(self, child: Child, dump: _Dump) -> Iterator[bytes | memoryview]:
        """The command's output, compressed, as it comes; counted into `dump`. A view yielded here
        is only valid until the next one (the read buffer is reused)."""
        codec = compressor(self.compression)
        assert child.proc.stdout is not None
        fd = child.proc.stdout.fileno()
        buf = bytearray(READ_SIZE)  # reused: no allocation per read
        view = memoryview(buf)
        exited_at: float | None = None
        while True:
            # Never block on the pipe alone: once the program exits, whatever still holds its
            # output must not keep the job (and the daemon's slot) forever.
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                n = os.readv(fd, [buf])
                if not n:
                    break
                dump.raw += n
                yield dump.add(codec.compress(view[:n]))
            elif exited_at is None and child.exited():
                child.kill_leftovers()
                exited_at = time.monotonic()
            elif exited_at is not None and time.monotonic() - exited_at > EOF_GRACE:
                log.warning("job %s: a process outside %s's group still holds its output: ignored",
                            self.job.name, child.label)
                break
        yield dump.add(codec.flush())

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


class _Dump:
    """The command's output: bytes read (`raw`), and the compressed dump's size and SHA-256 as the
    manifest records them. Hashed only when the codec comes after (the upload hashes otherwise)."""

    def __init__(self, hashed: bool) -> None:
        self.raw = 0
        self.size = 0
        self.sha = hashlib.sha256()
        self.hashed = hashed

    def add(self, data: bytes | memoryview) -> bytes | memoryview:
        self.size += len(data)
        if self.hashed:
            self.sha.update(data)
        return data
