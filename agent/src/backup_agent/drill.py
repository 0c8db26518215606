"""`backup-agent drill JOB`: prove the latest snapshot restores, on a sample, and record it.

A drill restores the first, the last and a random selection of the latest snapshot's files (a
command job's whole dump) into a private directory under state_dir (0700, never /tmp: the data
is the node's), re-reads every restored byte against the manifest's size and sha256, measures
the throughput and from it estimates how long a full restore would take (RTO), and removes the
directory whatever happened. An ebs_snapshot job's drill checks that the latest snapshot set is
complete, every member completed, and covers the volumes the job backs up now.

The record (`state_dir/drill/<job>.json`, its own file like prune's) feeds status, metrics and
the fleet view. Storage is reached only through the job's own verbs (select, manifest_passes,
restore, select_set): no S3 client here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_agent.config import Config, Job
from backup_agent.errors import AgentError, NotReady
from backup_agent.logfmt import redact
from backup_agent.state import atomic_write, drill_path, ensure_dir, read_drill

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_FILES = 20
TMP_DIR = "drill-tmp"
STALE_TMP_S = 86400
def sample_size(job: Job) -> int:
    return int((job.options.get("drill") or {}).get("sample_files") or DEFAULT_SAMPLE_FILES)


# --- choosing the sample -----------------------------------------------------------------------


def choose(entries: Iterator[Any], n: int, rng: random.Random) -> tuple[list[Any], int, int]:
    """The first, the last and up to n-2 random others (reservoir sampling: one pass, memory for
    n entries) of the plain files with content; also how many there are and their bytes. Hard
    links and sparse files are left to a full restore: their bytes are shared or laid around holes."""
    first = last = None
    middle: list[Any] = []
    between = files = total = 0
    k = max(n - 2, 0)
    for e in entries:
        if e.type != "file" or e.size == 0 or e.hardlink is not None or e.extents is not None:
            continue
        files += 1
        total += e.size
        if first is None:
            first = e
            continue
        if last is not None:  # one behind: only the entry that turns out last is not a candidate
            between += 1
            if len(middle) < k:
                middle.append(last)
            else:
                j = rng.randrange(between)
                if j < k:
                    middle[j] = last
        last = e
    return [x for x in (first, *middle, last) if x is not None], files, total


# --- the private place ---------------------------------------------------------------------------


@contextlib.contextmanager
def private_dir(cfg: Config, job: str) -> Iterator[Path]:
    """A new 0700 directory under state_dir/drill-tmp, removed on the way out, also on failure."""
    base = ensure_dir(cfg.state_dir / TMP_DIR)
    os.chmod(base, 0o700)
    # A drill killed hard (SIGKILL, power loss) could not remove its sample: a day later it is
    # certainly not in use any more (a drill that long would be a restore).
    for old in base.glob(f"{job}.*"):
        with contextlib.suppress(OSError):
            if time.time() - old.lstat().st_mtime > STALE_TMP_S:
                _remove(old)
    path = Path(tempfile.mkdtemp(prefix=f"{job}.", dir=base))  # 0700, a name nobody chose
    try:
        yield path
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    def writable(func: Any, p: str, _exc: Any) -> None:
        # A restored read-only directory stops a non-root rmtree: open its parent up and retry.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)

    shutil.rmtree(path, onerror=writable)
    if path.exists():
        log.error("drill: could not remove %s", path)


def _verify(root: Path, e: Any) -> str | None:
    """The restored copy of entry `e` against its manifest size and sha256; a problem, or None."""
    rel = e.path.lstrip("/")
    try:
        fd = os.open(root / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return f"{e.path}: not restored ({exc.strerror})"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{e.path}: restored as something other than a file"
        digest = hashlib.file_digest(fh, "sha256")
        size = fh.tell()
    if size != e.size:
        return f"{e.path}: {size} bytes restored, the manifest says {e.size}"
    if digest.hexdigest() != e.sha256:
        return f"{e.path}: content does not match the manifest's sha256"
    return None


# --- drills per job type -------------------------------------------------------------------------


def _files(cfg: Config, job: Job, runner: Any, rng: random.Random) -> dict[str, Any]:
    snap = runner.select(None, None)
    with runner.manifest_passes(snap.id) as passes:
        picked, files, total = choose(passes()[1], sample_size(job), rng)
    out: dict[str, Any] = {"snapshot": snap.id, "snapshot_files": files, "snapshot_bytes": total,
                           "files_checked": 0, "bytes_checked": 0, "errors": [], "sampled": [e.path for e in picked]}
    if not picked:
        return out
    with private_dir(cfg, job.name) as tmp:
        t0 = time.monotonic()
        try:
            runner.restore(snapshot=snap.id, at=None, target=str(tmp), paths=[e.path for e in picked])
        except NotReady:
            raise  # archived data: the drill has not failed, it cannot run yet (exit 75)
        except AgentError as exc:
            out["errors"].append(str(exc))
        took = time.monotonic() - t0
        for e in picked:
            problem = _verify(tmp, e)
            if problem:
                if not any(e.path in x for x in out["errors"]):
                    out["errors"].append(problem)
            else:
                out["files_checked"] += 1
                out["bytes_checked"] += e.size
        out["restore_s"] = took
    return out


def _command(cfg: Config, job: Job, runner: Any) -> dict[str, Any]:
    snap = runner.select(None, None)
    out: dict[str, Any] = {"snapshot": snap.id, "files_checked": 0, "bytes_checked": 0, "errors": []}
    with private_dir(cfg, job.name) as tmp:
        t0 = time.monotonic()
        try:
            # The restore checks the stored bytes' size and sha256 and the codec's end marker.
            got = runner.restore(snapshot=snap.id, at=None, target=str(tmp), paths=[])
        except NotReady:
            raise
        except AgentError as exc:
            if exc.exit_code == 2:
                raise  # bad input or a wrong storage.encryption_key: the data may be fine
            out["errors"].append(str(exc))
            return out
        out["restore_s"] = time.monotonic() - t0
        dump = Path(got["target"])
        if not dump.is_file() or dump.stat().st_size != got.get("bytes"):
            out["errors"].append(f"{dump.name}: the restored dump is missing or short")
            return out
        out.update(files_checked=1, bytes_checked=int(got.get("bytes_stored") or 0),
                   snapshot_files=1, snapshot_bytes=int(got.get("bytes_stored") or 0), dump_bytes=got["bytes"])
    return out


def _ebs(job: Job, runner: Any) -> dict[str, Any]:
    chosen = runner.select_set(None, None)
    s = chosen.set
    errors: list[str] = []
    if not s.complete:
        errors.append(f"snapshot {s.id}: {len(s.members)} of {s.expected} EBS snapshots left")
    for m in s.members:
        if m.get("State") != "completed":
            errors.append(f"snapshot {s.id}: {m['SnapshotId']} is {m.get('State')}, not completed")
    covered = {m.get("VolumeId") for m in s.members}
    out: dict[str, Any] = {"snapshot": chosen.id, "files_checked": len(s.members), "bytes_checked": 0,
                           "errors": errors, "volumes": sorted(v for v in covered if v)}
    try:
        wanted, _ = runner.choose(runner.instance())
    except AgentError as exc:  # no instance metadata: what the set holds is all there is to judge
        out["note"] = f"cannot tell the expected volumes: {exc}"
        return out
    missing = sorted({a.volume_id for a in wanted} - covered)
    if missing:
        errors.append(f"snapshot {s.id}: does not cover volume(s) {', '.join(missing)} the job backs up")
    out["bytes_checked"] = sum(int(m.get("VolumeSize") or 0) << 30 for m in s.members)
    return out


def run_drill(cfg: Config, job: Job, runner: Any, rng: random.Random | None = None) -> dict[str, Any]:
    """Drill `job`, record the outcome and return it (`status`: ok | failed). Raises only for bad
    input and for archived data that is not readable yet; everything else is a failed drill."""
    t0 = time.monotonic()
    try:
        if job.type == "files":
            out = _files(cfg, job, runner, rng or random.Random())
        elif job.type == "command":
            out = _command(cfg, job, runner)
        else:
            out = _ebs(job, runner)
    except NotReady:
        raise
    except AgentError as exc:
        if exc.exit_code == 2:
            raise
        out = {"snapshot": None, "files_checked": 0, "bytes_checked": 0, "errors": [str(exc)]}
    duration = time.monotonic() - t0
    restore_s = out.pop("restore_s", None)
    throughput = (out["bytes_checked"] / restore_s) if restore_s and out["bytes_checked"] else None
    snapshot_bytes = out.get("snapshot_bytes")
    result = {
        "job": job.name,
        "snapshot": out.get("snapshot"),
        "status": "failed" if out["errors"] else "ok",
        "files_checked": out["files_checked"],
        "bytes_checked": out["bytes_checked"],
        "duration_s": round(duration, 3),
        "throughput_bytes_per_s": None if throughput is None else round(throughput, 1),
        # A full restore reads every byte at the measured rate: a floor, not a promise (it does
        # not count Glacier retrieval, decompression of other files or the target's disk).
        "rto_estimate_s": (round(snapshot_bytes / throughput, 1)
                           if throughput and snapshot_bytes is not None else None),
        **{k: v for k, v in out.items() if k not in ("snapshot", "files_checked", "bytes_checked")},
    }
    record_drill(cfg, result)
    return result


def record_drill(cfg: Config, result: dict[str, Any]) -> None:
    job = result["job"]
    previous = read_drill(cfg.state_dir, job)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ok = result["status"] == "ok"
    record = {
        "job": job,
        "last_drill": now,
        "result": result["status"],
        "last_drill_success": now if ok else previous.get("last_drill_success"),
        "snapshot": result.get("snapshot"),
        "files_checked": result["files_checked"],
        "bytes_checked": result["bytes_checked"],
        "throughput_bytes_per_s": result.get("throughput_bytes_per_s"),
        "rto_estimate_s": result.get("rto_estimate_s"),
        "duration_s": result["duration_s"],
        "error": redact("; ".join(result["errors"])[:1000]) if result["errors"] else None,
    }
    try:
        atomic_write(drill_path(cfg.state_dir, job), json.dumps(record, indent=2, sort_keys=True).encode())
    except OSError as exc:
        log.error("cannot write the drill record of job %s: %s", job, exc.strerror or exc)
    if cfg.metrics.get("textfile"):
        from backup_agent.metrics import write_textfile

        write_textfile(cfg.metrics["textfile"], cfg.state_dir, list(cfg.jobs))
