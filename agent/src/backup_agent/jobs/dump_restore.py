"""Restoring a command job's dump: to a file, to stdout, or into a database through the preset's
restore tool. The dump is verified whole (size, sha256, the codec's end) before a database or
stdout sees its first byte; archived dumps are asked back from the archive first."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from backup_agent.errors import ConfigError, IntegrityError, JobFailed, NotReady
from backup_agent.jobs import presets
from backup_agent.jobs.base import Passes, S3Job, stored_entries
from backup_agent.jobs.compression import SUFFIX, Decoder
from backup_agent.jobs.process import Child, RunAs, child_env, resolve_user
from backup_agent.jobs.restore_files import commit, discard, open_new
from backup_agent.state import ensure_dir
from backup_agent.storage.manifest import Entry
from backup_agent.storage.store import Archived, StoreError

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20


class DumpRestore(S3Job):
    """The restore side of a command job (jobs/command.py holds the run side)."""

    opts: dict[str, Any]
    where: str

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
                               "bytes_stored": entry.size if entry.stored is None else entry.stored}
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

    def verify_data(self, sid: str, passes: Passes, sizes: dict[str, int], damaged: set[str]) -> list[str]:
        """`check --read-data`: the dump read as a restore reads it (opened by the codec when
        sealed, decompressed to its end) with the bytes thrown away; a wrong key is WrongKey."""
        header, entries, _ = passes()
        kind = header.get("compression", "none")
        problems: list[str] = []
        for entry in stored_entries(entries, sizes, sid, [], set()):
            assert entry.object is not None
            try:
                if kind not in SUFFIX:
                    raise IntegrityError(f"snapshot {sid}: unknown compression {kind!r}")
                self._download(sid, entry, self.root + entry.object, kind, lambda _data: None)
            except IntegrityError as exc:
                problems.append(str(exc))
                damaged.add(entry.object)
        return problems

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
        """Stream the stored object through the codec (when it is encoded) and the decoder into
        `write`; verify size and sha256. Whatever `write` got must be thrown away when this raises:
        a damaged sealed dump is only known to be damaged at the segment that fails."""
        decoder = Decoder(kind)

        def deliver(data: bytes) -> None:
            # Kept apart from read errors: a full disk must fail the restore, not be retried.
            try:
                write(data)
            except OSError as exc:
                raise JobFailed(f"restore: cannot write the dump: {exc.strerror or exc}") from None

        length = entry.size if entry.stored is None else entry.stored
        try:
            # A connection that breaks mid-body is resumed inside the store from where it broke.
            body = self.store.get(key, 0, length)
        except Archived:
            raise NotReady(f"{key} is archived and not restored yet") from None
        except StoreError as exc:
            raise JobFailed(f"snapshot {sid}: cannot read {key}: {exc}") from None

        def stored() -> Iterator[bytes]:
            pos = 0
            while pos < length:
                chunk = body.read(min(READ_SIZE, length - pos))
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk

        dump = stored()
        if entry.stored is not None:
            # Sealed for its object's name (jobs/command.py): a dump copied over another fails.
            # Wrong key: WrongKey (exit 2) before any byte; damaged: IntegrityError at the first
            # segment that fails authentication.
            assert entry.object is not None
            dump = self.encoding.open_data_iter(dump, entry.object, entry.size, f"snapshot {sid}: {key}")
        sha = hashlib.sha256()
        raw = 0
        try:
            for chunk in dump:
                sha.update(chunk)
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
