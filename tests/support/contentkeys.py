"""Which bucket objects hold a file's content in a snapshot. Since manifest format 3 (issue #20)
a big file is encoded chunks in packs, not an object of its own, so tests that damage or delete
a file's data find its objects through the manifest, read with the config's own key."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def content_keys(config_path: Path | str, job: str, path: str, snapshot: str | None = None) -> list[str]:
    """The bucket keys `path`'s content lives in (the newest snapshot unless `snapshot`)."""
    return keys_in(runner_for(config_path, job), path, snapshot)


def keys_in(runner: Any, path: str, snapshot: str | None = None) -> list[str]:
    """The same for a job object a test made (e.g. on the in-memory store)."""
    sid = snapshot or runner.snapshots()[-1].id
    with runner.open_manifest(sid) as (_, entries, _):
        found = [e for e in entries if e.path == path]
    if not found:
        raise AssertionError(f"{path} is not in snapshot {sid}")
    return [runner.root + o for o in found[0].objects()]


def piece_at(runner: Any, path: str, index: int = 0, snapshot: str | None = None) -> tuple[str, int, int]:
    """(bucket key, offset, stored length) of a file's piece: chunk `index` of a chunked file,
    the one piece of any other."""
    sid = snapshot or runner.snapshots()[-1].id
    with runner.open_manifest(sid) as (_, entries, _):
        found = [e for e in entries if e.path == path]
    assert found, f"{path} is not in snapshot {sid}"
    obj, offset, stored = found[0].ranges()[index]
    return runner.root + obj, offset, stored


def runner_for(config_path: Path | str, job: str) -> Any:
    from backup_agent import config
    from backup_agent.jobs.files import FilesJob

    cfg = config.load(str(config_path))
    return FilesJob(cfg, cfg.job(job))
