"""Schedule strings → `schedule` library jobs, plus what the library lacks: a stable per-node
splay, catch-up after downtime and the no-overlap / parallelism decision.

The library computes every next run from its own `datetime.datetime.now()` in naive *local*
time, so this module works in naive local datetimes too. Every decision that is ours is a pure
function of the times it is given; `PlannedJob` only glues them onto the library.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

import schedule

from backup_agent.schedules import Schedule

Now = Callable[[], datetime]

# A missed run starts after the job's splay offset, but never later than this after start-up:
# "soon" must stay soon even with a splay of hours.
CATCH_UP_MAX_DELAY = 600
# If the regular run comes this soon after the catch-up would, the catch-up is dropped so a
# node coming back just before its slot does not run twice in a row.
CATCH_UP_MERGE_WINDOW = 600


class _Utc(tzinfo):
    """UTC with the `normalize()` the library calls on pytz zones.

    `schedule`'s own `at(..., tz=)` needs pytz, which the agent does not depend on; UTC has no
    DST, so normalising is the identity.
    """

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "UTC"

    def normalize(self, dt: datetime) -> datetime:
        return dt

    def __repr__(self) -> str:
        return "UTC"


UTC_ZONE = _Utc()


# --- pure decisions ----------------------------------------------------------------------------


def splay_offset(node: str, job: str, splay: int, period: int) -> int:
    """Seconds this node's runs of `job` are shifted by: stable across restarts, spread over nodes.

    A hash (not `random`) keeps the offset the same after every restart and reload, and
    different for every node name. It stays below the period so runs never drift into the next
    slot.
    """
    span = min(int(splay), int(period))
    if span <= 0:
        return 0
    digest = hashlib.sha256(f"{node}\0{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % span


def splayed(base_next: datetime, now: datetime, offset: int, period: int,
            last_fire: datetime | None) -> datetime:
    """The next run of a wall-clock schedule (hourly/daily/weekly at ...) shifted by `offset`.

    `base_next` is the library's next slot after `now`. If the previous slot plus the offset is
    still ahead (a restart at 02:10 for "daily at 02:00" with a 30 min offset), that run is
    next, unless it already fired (the guard against DST-shifted slots firing twice).
    """
    if offset <= 0:
        return base_next
    shift = timedelta(seconds=offset)
    previous = base_next - timedelta(seconds=period) + shift
    if previous > now and (last_fire is None or (previous - last_fire).total_seconds() > period / 2):
        return previous
    return base_next + shift


def every_first_run(now: datetime, last_start: datetime | None, period: int, offset: int) -> datetime:
    """First run of an `every N <unit>` job, continuing the rhythm of the last run.

    Restarts and reloads must not push an "every 6 hours" job back by 6 hours each time, so the
    phase comes from the last start; a node that never ran it starts after its splay offset.
    A missed run is the catch-up's business: here it becomes the next run of the same rhythm.
    """
    if last_start is None:
        return now + timedelta(seconds=offset)
    if last_start > now:  # the clock went back: do not wait longer than one period
        return now + timedelta(seconds=period)
    elapsed = (now - last_start).total_seconds()
    periods = max(1, math.ceil(elapsed / period))
    return last_start + timedelta(seconds=periods * period)


def missed_run(now: datetime, last_start: datetime | None, planned: datetime | None,
               period: int, offset: int) -> bool:
    """Was a scheduled run missed while the daemon was not running?

    `planned` is the next run the previous daemon wrote down; it was missed if it has passed
    and no run started since. Without it (an older state_dir), a last start older than one
    period (plus the splay offset) counts as missed. A job that never ran and was never
    planned has missed nothing.
    """
    if planned is not None:
        return planned <= now and (last_start is None or last_start < planned)
    if last_start is not None:
        return (now - last_start).total_seconds() > period + offset
    return False


def catch_up_delay(offset: int) -> int:
    """How long after start-up a missed run starts: the splay offset, so a fleet coming back
    from an outage does not hit the bucket at once, bounded so it stays "soon"."""
    return min(offset, CATCH_UP_MAX_DELAY)


def first_run(now: datetime, regular: datetime, missed: bool, delay: int, period: int) -> datetime:
    """When a job first runs after start-up: its regular next run, or one catch-up run soon.

    Exactly one catch-up, however many runs were missed (the library never replays them). If
    the regular run is about as soon, it serves as the catch-up.
    """
    if not missed:
        return regular
    soon = now + timedelta(seconds=delay)
    if (regular - soon).total_seconds() <= min(period / 2, CATCH_UP_MERGE_WINDOW):
        return regular
    return soon


def admit(job: str, running: Collection[str], queued: Sequence[str]) -> str:
    """What a due tick of `job` does: 'queue' it, or skip it because a run is 'running' or 'queued'.

    Skipping (never stacking) is what keeps a slow job from turning into a burst of runs.
    Whether a queued job may start now is `can_start`.
    """
    if job in running:
        return "running"
    if job in queued:
        return "queued"
    return "queue"


def can_start(running: Collection[str], max_parallel: int) -> bool:
    return len(running) < max_parallel


# --- glue onto the library ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything that decides a job's timing; a reload rebuilds a job only if this changed."""

    job: str
    schedule: Schedule
    offset: int
    catch_up: bool


class PlannedJob(schedule.Job):
    """A `schedule` job whose wall-clock runs are shifted by the plan's splay offset."""

    def __init__(self, plan: Plan, scheduler: schedule.Scheduler, now: Now) -> None:
        super().__init__(plan.schedule.interval if plan.schedule.kind == "every" else 1, scheduler)
        self.plan = plan
        self._now = now
        self.catching_up = False  # the first run is a catch-up of a run missed while down

    def _schedule_next_run(self) -> None:
        super()._schedule_next_run()
        if self.plan.schedule.kind != "every" and self.next_run is not None:
            self.next_run = splayed(self.next_run, self._now(), self.plan.offset,
                                    self.plan.schedule.period_seconds, self.last_run)


def make_plan(node: str, job: str, sched: Schedule, splay: int, catch_up: bool) -> Plan:
    return Plan(job, sched, splay_offset(node, job, splay, sched.period_seconds), catch_up)


def add_job(scheduler: schedule.Scheduler, plan: Plan, fire: Callable[[str], None], *,
            now: Now, last_start: datetime | None, planned: datetime | None) -> PlannedJob:
    """Register `plan` with the library; `fire(job)` is called at every due run.

    `last_start` / `planned` (naive local) come from state_dir and decide the first run.
    """
    sched = plan.schedule
    job = PlannedJob(plan, scheduler, now)
    if sched.kind == "every":
        job.unit = sched.unit
    elif sched.kind == "hourly":
        job.unit = "hours"
        job.at(f":{sched.minute:02d}")
    elif sched.kind == "daily":
        job.unit = "days"
        job.at(f"{sched.hour:02d}:{sched.minute:02d}")
    else:
        getattr(job, sched.weekday)  # the library's weekday properties set start_day and unit
        job.at(f"{sched.hour:02d}:{sched.minute:02d}")
    if sched.utc and sched.kind != "every":
        job.at_time_zone = UTC_ZONE  # type: ignore[assignment]
    job.do(fire, plan.job)
    t = now()
    period = sched.period_seconds
    assert job.next_run is not None  # do() computed it
    regular = job.next_run
    if sched.kind == "every":
        regular = every_first_run(t, last_start, period, plan.offset)
    missed = plan.catch_up and missed_run(t, last_start, planned, period, plan.offset)
    job.next_run = first_run(t, regular, missed, catch_up_delay(plan.offset), period)
    job.catching_up = missed and job.next_run != regular
    return job
