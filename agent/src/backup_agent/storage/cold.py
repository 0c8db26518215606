"""Archived (Glacier) data: finding it, asking S3 to restore it once, remembering what was asked,
and waiting for it.

S3 is the truth: HEAD tells an object's class and its `x-amz-restore` state
(`ongoing-request="true"` while S3 works, `"false"` once a readable copy exists). The record in
state_dir adds what HEAD cannot say — when we asked, with which tier, and which objects a
half-finished restore already wrote — so a rerun neither asks twice nor downloads twice.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backup_agent.errors import ConfigError, JobFailed, NotReady
from backup_agent.storage.classes import ARCHIVED, IT_ARCHIVE, MIN_STORAGE_DAYS
from backup_agent.storage.classes import is_archived as is_archived  # jobs ask cold.is_archived
from backup_agent.storage.store import NotFound, ObjectInfo, Store, StoreError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Tier:
    """What a retrieval tier costs in time and money (us-east-1 list prices; other regions differ)."""

    delay: str
    max_hours: float
    cost_class: str
    cost: str


TIERS: dict[tuple[str, str], Tier] = {
    ("GLACIER", "Expedited"): Tier("1-5 minutes", 5 / 60, "expedited (highest)",
                                   "about $0.03/GB + $10 per 1,000 objects"),
    ("GLACIER", "Standard"): Tier("3-5 hours", 5, "standard", "about $0.01/GB + $0.05 per 1,000 objects"),
    ("GLACIER", "Bulk"): Tier("5-12 hours", 12, "bulk (lowest)", "free"),
    ("DEEP_ARCHIVE", "Standard"): Tier("within 12 hours", 12, "standard",
                                       "about $0.02/GB + $0.10 per 1,000 objects"),
    ("DEEP_ARCHIVE", "Bulk"): Tier("within 48 hours", 48, "bulk (lowest)",
                                   "about $0.0025/GB + $0.025 per 1,000 objects"),
}

READY, PENDING, ARCHIVED_STATE = "ready", "pending", "archived"
NO_ARCHIVE_API = ("NotImplemented", "MethodNotAllowed", "501", "405")
# --wait: first look after FIRST_POLL, then back off up to MAX_POLL (HEAD requests are cheap, but a
# fleet polling every few seconds for twelve hours is not).
FIRST_POLL = 30.0
MAX_POLL = 15 * 60.0
_sleep = time.sleep  # the one seam tests replace to drive --wait without waiting


def tier_info(storage_class: str, tier: str) -> Tier:
    try:
        return TIERS[(storage_class, tier)]
    except KeyError:
        raise ConfigError(f"--tier {tier}: not offered for {storage_class} objects; "
                          "use Standard or Bulk") from None


def early_deletion(storage_class: str | None, last_modified: datetime | None, now: datetime) -> bool:
    """Would deleting this object now be billed for its class's minimum storage duration?"""
    days = MIN_STORAGE_DAYS.get(storage_class or "STANDARD")
    return bool(days and last_modified and now - last_modified < timedelta(days=days))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# --- what a snapshot listing can promise -----------------------------------------------------

def restorability(refs: dict[str, set[str] | None], archived: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per snapshot: can it be restored without a retrieval? `refs` maps each snapshot to the data
    objects its manifest references (None when the manifest could not be read); `archived` maps
    the job's objects in an archived class to their sizes (from one LIST)."""
    out: dict[str, dict[str, Any]] = {}
    for sid, objs in refs.items():
        if objs is None:
            out[sid] = {"instant_restore": None}
            continue
        cold = [o for o in objs if o in archived]
        out[sid] = {"instant_restore": not cold, "archived_objects": len(cold),
                    "archived_bytes": sum(archived[o] for o in cold)}
    return out


# --- the record in state_dir ------------------------------------------------------------------

class Record:
    """state_dir/restores/<job>.json: restores we asked for, and restores half done."""

    def __init__(self, state_dir: Path, job: str) -> None:
        self.path = state_dir / "restores" / f"{job}.json"
        self.requests: dict[str, dict[str, Any]] = {}
        self.progress: dict[str, list[str]] = {}
        try:
            data = json.loads(self.path.read_text())
            self.requests = dict(data.get("requests") or {})
            self.progress = {k: list(v) for k, v in (data.get("progress") or {}).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Only a convenience: S3's x-amz-restore still prevents asking twice.
            log.warning("ignoring unreadable restore record %s: %s", self.path, exc)

    def save(self) -> None:
        from backup_agent.state import atomic_write

        if not self.requests and not self.progress:
            self.path.unlink(missing_ok=True)
            return
        doc = {"requests": self.requests, "progress": self.progress}
        try:
            atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cannot write the restore record %s: %s", self.path, exc.strerror or exc)


# --- surveying, requesting, waiting ------------------------------------------------------------

@dataclass
class Survey:
    """The archive state of the objects one restore (or check) needs, keyed by full S3 key."""

    state: dict[str, str] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    storage_class: dict[str, str] = field(default_factory=dict)
    # Intelligent-Tiering archive tiers: restored for good (no Days), no retrieval fee.
    intelligent: set[str] = field(default_factory=set)
    requested_now: int = 0

    @property
    def ready(self) -> set[str]:
        return {k for k, s in self.state.items() if s == READY}

    @property
    def waiting(self) -> list[str]:
        return sorted(k for k, s in self.state.items() if s != READY)


_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"')


def classify(head: ObjectInfo) -> tuple[str, str]:
    """(state, class) from a HEAD; Intelligent-Tiering archives map to their twin."""
    cls = head.storage_class or "STANDARD"
    archive = IT_ARCHIVE.get(head.archive_status or "") or (cls if cls in ARCHIVED else None)
    if archive is None:
        return READY, cls
    m = _ONGOING.search(head.restore or "")
    if m and m.group(1) == "false":
        return READY, archive
    return (PENDING if m else ARCHIVED_STATE), archive


class Thaw:
    """Makes a set of objects readable: the restore and `check --read-data` share it."""

    def __init__(self, store: Store, root: str, state_dir: Path, job: str, *,
                 tier: str, days: int, concurrency: int, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.root = root
        self.tier = tier
        self.days = days
        self.concurrency = concurrency
        self.clock = clock or (lambda: datetime.now(UTC))
        self.record = Record(state_dir, job)
        self.dirty = False
        self.job = job

    def _head(self, key: str) -> ObjectInfo:
        try:
            return self.store.stat(key)
        except NotFound:
            raise JobFailed(f"{self.store.label}/{key} is missing; `backup-agent check` lists what "
                            "else is") from None
        except StoreError as exc:
            raise JobFailed(f"cannot look at {key}: {exc}") from None

    def look(self, keys: Iterable[str], survey: Survey | None = None) -> Survey:
        """HEAD the keys (in parallel) and note each one's state; no request is made."""
        survey = survey or Survey()
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(keys) or 1))) as pool:
            for key, head in zip(keys, pool.map(self._head, keys), strict=True):
                state, cls = classify(head)
                survey.state[key] = state
                survey.size[key] = head.size
                survey.storage_class[key] = cls
                if head.archive_status in IT_ARCHIVE:
                    survey.intelligent.add(key)
                if state == READY and key in self.record.requests:
                    del self.record.requests[key]
                    self.dirty = True
        return survey

    def prepare(self, keys: Iterable[str]) -> Survey:
        """Look at every key and ask S3 to restore the archived ones nobody asked for yet."""
        survey = self.look(keys)
        todo = [k for k in survey.waiting if survey.state[k] == ARCHIVED_STATE and not self._asked_recently(k)]
        for key in survey.waiting:
            if survey.state[key] == ARCHIVED_STATE and key not in todo:
                survey.state[key] = PENDING  # asked already; this endpoint just does not show it
        for cls in {survey.storage_class[k] for k in todo}:
            tier_info(cls, self.tier)  # refuse Expedited for DEEP_ARCHIVE before asking for anything
        if not todo:
            if self.dirty:
                self.record.save()
            return survey
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(todo)))) as pool:
                states = pool.map(lambda k: self._request(k, k in survey.intelligent), todo)
                for key, state in zip(todo, states, strict=True):
                    survey.state[key] = state
                    if state == PENDING:
                        survey.requested_now += 1
                        self.record.requests[key] = {
                            "requested_at": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"), "tier": self.tier,
                            "days": self.days, "storage_class": survey.storage_class[key],
                            "size": survey.size[key]}
        finally:
            self.record.save()  # even when interrupted: what was asked stays known
        log.info("job %s: asked S3 to restore %d archived object(s) with the %s tier", self.job,
                 survey.requested_now, self.tier)
        return survey

    def _asked_recently(self, key: str) -> bool:
        rec = self.record.requests.get(key)
        if not rec:
            return False
        try:
            when = datetime.strptime(rec["requested_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            window = TIERS[(rec["storage_class"], rec["tier"])].max_hours
        except (KeyError, ValueError, TypeError):
            return False
        # Past the tier's longest delay with no x-amz-restore, the copy has expired: ask again.
        return self.clock() - when < timedelta(hours=window)

    def _request(self, key: str, intelligent: bool) -> str:
        try:
            # True: accepted; False: a restore is already under way. Either way: wait.
            self.store.request_restore(key, days=None if intelligent else self.days, tier=self.tier)
        except StoreError as exc:
            code = exc.code
            if code == "ObjectAlreadyInActiveTierError":
                return READY
            if code in NO_ARCHIVE_API:
                # S3-compatible stores (SeaweedFS, MinIO) keep the class name but not its
                # semantics: their objects read like any other.
                log.debug("%s: %s has no RestoreObject (%s); reading it directly", self.job, key, code)
                return READY
            hint = "; try --tier Standard" if code == "GlacierExpeditedRetrievalNotAvailable" else ""
            raise JobFailed(f"cannot request the restore of {key}: {exc}{hint}") from None
        # A copy restored meanwhile (S3 answered 200 and only extended its days) shows as ready at
        # the next look.
        return PENDING

    def wait_for_more(self, survey: Survey, started: float) -> Survey:
        """Poll the waiting objects with backoff until at least one more is ready (--wait)."""
        interval = FIRST_POLL
        longest = max((self._tier_for(survey, k).max_hours for k in survey.waiting), default=1.0)
        deadline = started + 2 * longest * 3600 + 3600
        before = len(survey.ready)
        while True:
            left = survey.waiting
            log.warning("job %s: waiting for %d archived object(s) (%s) to be restored; next look in %.0fs",
                        self.job, len(left), human(sum(survey.size[k] for k in left)), interval)
            _sleep(interval)
            self.look(left, survey)
            if len(survey.ready) > before or not survey.waiting:
                self.record.save()
                return survey
            if time.monotonic() > deadline:
                raise NotReady(f"job {self.job}: {len(survey.waiting)} archived object(s) are still not restored "
                               f"after {2 * longest:.0f} hours; rerun the restore to keep waiting",
                               self.pending_details(survey))
            interval = min(interval * 2, MAX_POLL, max(FIRST_POLL, longest * 3600 / 8))

    def _tier_for(self, survey: Survey, key: str) -> Tier:
        rec = self.record.requests.get(key) or {}
        cls = survey.storage_class.get(key, "GLACIER")
        return TIERS.get((cls, rec.get("tier", self.tier))) or TIERS[(cls, "Standard")]

    def pending_details(self, survey: Survey) -> dict[str, Any]:
        by_class: dict[str, dict[str, Any]] = {}
        pending = []
        for key in survey.waiting:
            cls = survey.storage_class[key]
            rec = self.record.requests.get(key) or {}
            tier = self._tier_for(survey, key)
            cost = "no retrieval fee (Intelligent-Tiering)" if key in survey.intelligent else tier.cost
            c = by_class.setdefault(cls, {"objects": 0, "bytes": 0, "tier": rec.get("tier", self.tier),
                                          "expected_delay": tier.delay, "cost_class": tier.cost_class,
                                          "cost": cost})
            c["objects"] += 1
            c["bytes"] += survey.size[key]
            pending.append({"key": key[len(self.root):] if key.startswith(self.root) else key,
                            "storage_class": cls, "size": survey.size[key],
                            "requested_at": rec.get("requested_at"), "tier": rec.get("tier")})
        return {"status": "restore_pending", "objects_pending": len(pending),
                "bytes_pending": sum(p["size"] for p in pending), "requested_now": survey.requested_now,
                "tier": self.tier, "days": self.days, "by_class": by_class, "pending": pending}

    def pending_message(self, survey: Survey, what: str, progress: str = "") -> str:
        d = self.pending_details(survey)
        parts = [f"{c['objects']} object(s), {human(c['bytes'])} in {cls} ({c['tier']} tier: {c['expected_delay']}; "
                 f"cost: {c['cost_class']}, {c['cost']})" for cls, c in sorted(d["by_class"].items())]
        asked = (f"restore requested now for {survey.requested_now}, earlier for "
                 f"{d['objects_pending'] - survey.requested_now}")
        rerun = "Rerun the same command later" + (" (or add --wait)" if what.startswith("restore") else "")
        done = f"; {progress}" if progress else ""
        return f"{what}: waiting for archived data: {'; '.join(parts)}; {asked}{done}. {rerun}"

    def finish(self, keys: Iterable[str], progress_key: str | None = None) -> None:
        """Everything needed was read: forget the requests and the half-done restore."""
        for key in keys:
            self.record.requests.pop(key, None)
        if progress_key:
            self.record.progress.pop(progress_key, None)
        self.record.save()
