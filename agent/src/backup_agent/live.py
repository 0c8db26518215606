"""Continuous protection ("live mirroring", `schedule: continuous` on a files job): a snapshot
`settle` seconds after a change under the job's paths, never sooner than `min_interval` after
the previous run started.

`Pace` decides (pure, times in, times out: monotonic seconds); `LiveJob` glues it to an inotify
watch of the job's paths. The daemon asks each LiveJob whether it is due, starts the same
`backup-agent run JOB` a timed schedule starts, and reports back when the run ended.

RPO (recovery point objective, as measured): the age of the oldest change that no successful
snapshot holds yet; 0 when every change is in one.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass

from backup_agent.inotify import TreeWatch

DEFAULT_SETTLE = 10.0
DEFAULT_MIN_INTERVAL = 60.0


@dataclass
class Pace:
    settle: float
    min_interval: float
    pending_since: float | None = None  # first change not yet in a run that started
    in_run_since: float | None = None  # first change the running run is taking in
    last_start: float | None = None

    def changed(self, now: float) -> None:
        if self.pending_since is None:
            self.pending_since = now

    def due_at(self) -> float | None:
        """When the next run may start; None while nothing changed."""
        if self.pending_since is None:
            return None
        at = self.pending_since + self.settle
        if self.last_start is not None:
            at = max(at, self.last_start + self.min_interval)
        return at

    def started(self, now: float) -> None:
        # A change seen from now on may not be in this snapshot's scan: it counts for the next.
        self.in_run_since, self.pending_since = self.pending_since, None
        self.last_start = now

    def finished(self, ok: bool) -> None:
        if not ok and self.in_run_since is not None:
            # The run did not protect its changes: they are pending again, as old as they are.
            self.pending_since = (self.in_run_since if self.pending_since is None
                                  else min(self.pending_since, self.in_run_since))
        self.in_run_since = None

    def unprotected_since(self) -> float | None:
        known = [t for t in (self.pending_since, self.in_run_since) if t is not None]
        return min(known) if known else None

    def rpo(self, now: float) -> float:
        since = self.unprotected_since()
        return 0.0 if since is None else max(0.0, now - since)


class LiveJob:
    """One continuous job: its watch and its pace."""

    def __init__(self, name: str, paths: list[str], exclude: list[str], settle: float, min_interval: float) -> None:
        self.name = name
        self.pace = Pace(settle, min_interval)
        patterns = list(exclude)

        def skip(path: str) -> bool:
            base = os.path.basename(path)
            return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(base, p) for p in patterns)

        self.watch = TreeWatch(paths, skip)
        # What changed while the daemon was not watching is unknown: one snapshot soon after start.
        self.pace.changed(time.monotonic())

    def fileno(self) -> int:
        return self.watch.fileno()

    def poll(self, now: float) -> bool:
        """Read the watch; True if a change was first noticed now (pending was empty)."""
        fresh = self.pace.pending_since is None
        if self.watch.read():
            self.pace.changed(now)
            return fresh
        return False

    def close(self) -> None:
        self.watch.close()

    def state(self, now: float) -> dict[str, object]:
        """For daemon.json / status: when it runs next, and its RPO."""
        due = self.pace.due_at()
        since = self.pace.unprotected_since()
        wall = time.time() - now  # monotonic → Unix time
        return {
            "next_run_in_s": None if due is None else round(max(0.0, due - now), 1),
            "rpo_s": round(self.pace.rpo(now), 1),
            "unprotected_since_unix": None if since is None else round(since + wall, 1),
            "watched_dirs": len(self.watch.wds),
            "watch_limit_reached": self.watch.full,
        }
