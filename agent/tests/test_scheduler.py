"""The scheduler's timing, with an injected clock: every schedule form, splay, catch-up, no overlap.

The `schedule` library reads `datetime.datetime.now()` itself, so `clock` swaps the library's
`datetime` module for one that answers from a test-controlled instant (freezegun's
`now(tz)` adds its tz_offset twice, which breaks the UTC-suffix cases with a non-UTC zone).
"""

from __future__ import annotations

import datetime as dt
import time
import types
from collections import Counter
from collections.abc import Iterator

import pytest
import schedule

from backup_agent import scheduler as sch
from backup_agent.schedules import parse_schedule


class Clock:
    """A settable instant; `now()` gives naive local time like the library's own clock."""

    def __init__(self, local: dt.datetime) -> None:
        self.instant = local.astimezone(dt.UTC)  # naive → interpreted in the current TZ

    def now(self) -> dt.datetime:
        return self.instant.astimezone().replace(tzinfo=None)

    def set(self, local: dt.datetime) -> None:
        self.instant = local.astimezone(dt.UTC)

    def advance(self, seconds: float) -> None:
        self.instant += dt.timedelta(seconds=seconds)


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Switch the process's local time zone: tz("America/New_York")."""

    def use(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    use("UTC")
    yield use
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, tz: object) -> Clock:
    c = Clock(dt.datetime(2026, 11, 25, 12, 0, 0))

    class FakeDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return c.instant.astimezone(tz) if tz is not None else c.now()

    fake = types.SimpleNamespace(datetime=FakeDatetime, timedelta=dt.timedelta, time=dt.time, date=dt.date)
    monkeypatch.setattr(schedule, "datetime", fake)
    return c


def fires(clock: Clock, text: str, start: dt.datetime, count: int, *, splay: int = 0, node: str = "web-01",
          job: str = "etc", last_start: dt.datetime | None = None, planned: dt.datetime | None = None,
          catch_up: bool = True, until: dt.datetime | None = None) -> list[dt.datetime]:
    """Start a scheduler at `start` and return the local times of its first `count` runs
    (or of every run before `until`), stepping the clock from run to run."""
    clock.set(start)
    s = schedule.Scheduler()
    seen: list[dt.datetime] = []
    plan = sch.make_plan(node, job, parse_schedule(text), splay, catch_up)
    pj = sch.add_job(s, plan, lambda name: seen.append(clock.now()), now=clock.now,
                     last_start=last_start, planned=planned)
    while len(seen) < count:
        assert pj.next_run is not None
        if until is not None and pj.next_run >= until:
            break
        clock.set(pj.next_run)
        s.run_pending()
    return seen


def D(*args: int) -> dt.datetime:
    return dt.datetime(*args)  # type: ignore[arg-type]


# --- every schedule form -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "step"), [
    ("every 2 seconds", 2), ("every 1 second", 1), ("every 5 minutes", 300), ("every 3 hours", 3 * 3600),
    ("every 2 days", 2 * 86400),
])
def test_every_n_keeps_the_rhythm_of_the_last_run(clock: Clock, text: str, step: int) -> None:
    last = D(2026, 11, 25, 11, 59, 59) - dt.timedelta(seconds=step - 2)
    runs = fires(clock, text, D(2026, 11, 25, 12, 0, 0), 3, last_start=last)
    first = last + dt.timedelta(seconds=step)
    assert runs == [first + dt.timedelta(seconds=i * step) for i in range(3)]


def test_every_n_without_history_starts_at_once_and_repeats(clock: Clock) -> None:
    runs = fires(clock, "every 2 seconds", D(2026, 11, 25, 12, 0, 0), 4)
    assert runs == [D(2026, 11, 25, 12, 0, s) for s in (0, 2, 4, 6)]


def test_every_n_restart_does_not_postpone_the_next_run(clock: Clock) -> None:
    # A restart (or converge) every hour must not push "every 6 hours" back by 6 hours each time.
    runs = fires(clock, "every 6 hours", D(2026, 11, 25, 12, 0), 1, last_start=D(2026, 11, 25, 8, 0),
                 planned=D(2026, 11, 25, 14, 0))
    assert runs == [D(2026, 11, 25, 14, 0)]


def test_hourly(clock: Clock) -> None:
    assert fires(clock, "hourly at :15", D(2026, 11, 25, 10, 20), 3) == [
        D(2026, 11, 25, 11, 15), D(2026, 11, 25, 12, 15), D(2026, 11, 25, 13, 15)]


def test_daily(clock: Clock) -> None:
    assert fires(clock, "daily at 02:00", D(2026, 2, 28, 10, 0), 3) == [
        D(2026, 3, 1, 2, 0), D(2026, 3, 2, 2, 0), D(2026, 3, 3, 2, 0)]


def test_daily_later_today(clock: Clock) -> None:
    assert fires(clock, "daily at 23:59", D(2026, 11, 25, 23, 58, 30), 1) == [D(2026, 11, 25, 23, 59)]


def test_weekly(clock: Clock) -> None:
    # 2026-11-25 is a Wednesday.
    assert fires(clock, "weekly on friday at 22:30", D(2026, 11, 25, 12, 0), 2) == [
        D(2026, 11, 27, 22, 30), D(2026, 12, 4, 22, 30)]
    assert fires(clock, "weekly on wednesday at 11:00", D(2026, 11, 25, 12, 0), 1) == [D(2026, 12, 2, 11, 0)]


def test_local_time_is_the_nodes_zone(clock: Clock, tz) -> None:  # type: ignore[no-untyped-def]
    tz("America/New_York")
    runs = fires(clock, "daily at 02:00", D(2026, 11, 25, 12, 0), 1)
    assert runs == [D(2026, 11, 26, 2, 0)]
    assert runs[0].astimezone(dt.UTC).hour == 7


def test_daily_utc_in_a_western_zone(clock: Clock, tz) -> None:  # type: ignore[no-untyped-def]
    tz("America/New_York")  # UTC-5 in November
    runs = fires(clock, "daily at 02:00 UTC", D(2026, 11, 26, 12, 0), 2)
    assert runs == [D(2026, 11, 26, 21, 0), D(2026, 11, 27, 21, 0)]


def test_daily_utc_follows_utc_across_dst(clock: Clock, tz) -> None:  # type: ignore[no-untyped-def]
    tz("America/New_York")  # DST starts 2026-03-08: 12:00 UTC is 07:00 local before, 08:00 after
    runs = fires(clock, "daily at 12:00 UTC", D(2026, 3, 5, 12, 0), 4)
    assert [r.hour for r in runs] == [7, 7, 8, 8]
    assert all(r.astimezone(dt.UTC).hour == 12 for r in runs)


def test_hourly_utc_with_a_half_hour_zone(clock: Clock, tz) -> None:  # type: ignore[no-untyped-def]
    tz("Asia/Kolkata")  # UTC+5:30: ":30 UTC" is on the local full hour
    assert [r.minute for r in fires(clock, "hourly at :30 UTC", D(2026, 11, 25, 12, 10), 3)] == [0, 0, 0]
    assert [r.minute for r in fires(clock, "hourly at :30", D(2026, 11, 25, 12, 10), 2)] == [30, 30]


def test_weekly_utc_crosses_the_day_boundary(clock: Clock, tz) -> None:  # type: ignore[no-untyped-def]
    tz("America/Los_Angeles")  # Monday 01:00 UTC is Sunday 17:00 PST
    runs = fires(clock, "weekly on monday at 01:00 UTC", D(2026, 11, 25, 12, 0), 2)
    assert runs == [D(2026, 11, 29, 17, 0), D(2026, 12, 6, 17, 0)]


def test_every_n_ignores_utc_suffix(clock: Clock) -> None:
    assert fires(clock, "every 10 minutes UTC", D(2026, 11, 25, 12, 0), 2) == [
        D(2026, 11, 25, 12, 0), D(2026, 11, 25, 12, 10)]


# --- splay --------------------------------------------------------------------------------------


def test_splay_spreads_1000_nodes_evenly_and_stably() -> None:
    nodes = [f"web-{i:04d}.prod.example.com" for i in range(1000)]
    offsets = [sch.splay_offset(n, "etc", 3600, 86400) for n in nodes]
    assert all(0 <= o < 3600 for o in offsets)
    assert offsets == [sch.splay_offset(n, "etc", 3600, 86400) for n in nodes]  # stable
    assert len(set(offsets)) > 800
    bins = Counter(o * 10 // 3600 for o in offsets)
    assert sorted(bins) == list(range(10))
    # Chi-square with 9 degrees of freedom: > 27.9 happens by chance 0.1 % of the time.
    chi2 = sum((bins[b] - 100) ** 2 / 100 for b in range(10))
    assert chi2 < 27.9, bins
    # Two jobs of one node do not run in lockstep.
    same = sum(sch.splay_offset(n, "etc", 3600, 86400) == sch.splay_offset(n, "pg", 3600, 86400) for n in nodes)
    assert same < 10


def test_splay_is_bounded_by_the_period_and_zero_without_splay() -> None:
    assert all(sch.splay_offset(f"n{i}", "j", 3600, 10) < 10 for i in range(200))
    assert sch.splay_offset("n", "j", 0, 86400) == 0


def test_splay_shifts_every_daily_run(clock: Clock) -> None:
    offset = sch.splay_offset("web-01", "etc", 1800, 86400)
    assert offset > 0
    runs = fires(clock, "daily at 02:00", D(2026, 11, 25, 12, 0), 3, splay=1800)
    assert runs == [D(2026, 11, 26 + i, 2, 0) + dt.timedelta(seconds=offset) for i in range(3)]


def test_restart_inside_the_splay_window_keeps_todays_run(clock: Clock) -> None:
    node = next(f"n{i}" for i in range(100) if sch.splay_offset(f"n{i}", "etc", 1800, 86400) > 600)
    offset = sch.splay_offset(node, "etc", 1800, 86400)
    runs = fires(clock, "daily at 02:00", D(2026, 11, 25, 2, 5), 2, splay=1800, node=node)
    assert runs == [D(2026, 11, 25, 2, 0) + dt.timedelta(seconds=offset),
                    D(2026, 11, 26, 2, 0) + dt.timedelta(seconds=offset)]


def test_splay_delays_the_first_every_n_run_once(clock: Clock) -> None:
    offset = sch.splay_offset("web-01", "etc", 60, 600)
    runs = fires(clock, "every 10 minutes", D(2026, 11, 25, 12, 0), 3, splay=60)
    start = D(2026, 11, 25, 12, 0) + dt.timedelta(seconds=offset)
    assert runs == [start, start + dt.timedelta(minutes=10), start + dt.timedelta(minutes=20)]


# --- catch-up -----------------------------------------------------------------------------------


def test_missed_daily_run_fires_once_soon_after_start_never_a_burst(clock: Clock) -> None:
    # Down from the 24th to the 27th 10:00: three 02:00 runs were missed.
    start = D(2026, 11, 27, 10, 0)
    runs = fires(clock, "daily at 02:00", start, 10, last_start=D(2026, 11, 24, 2, 0),
                 planned=D(2026, 11, 25, 2, 0), until=D(2026, 11, 28, 3, 0))
    assert runs == [start, D(2026, 11, 28, 2, 0)]


def test_catch_up_waits_for_the_splay_offset(clock: Clock) -> None:
    offset = sch.splay_offset("web-01", "etc", 300, 86400)
    start = D(2026, 11, 27, 10, 0)
    runs = fires(clock, "daily at 02:00", start, 1, splay=300, last_start=D(2026, 11, 24, 2, 0),
                 planned=D(2026, 11, 25, 2, 0))
    assert runs == [start + dt.timedelta(seconds=offset)]


def test_no_catch_up_when_nothing_was_missed(clock: Clock) -> None:
    runs = fires(clock, "daily at 02:00", D(2026, 11, 25, 12, 0), 1, last_start=D(2026, 11, 25, 2, 0),
                 planned=D(2026, 11, 26, 2, 0))
    assert runs == [D(2026, 11, 26, 2, 0)]


def test_catch_up_can_be_turned_off(clock: Clock) -> None:
    runs = fires(clock, "daily at 02:00", D(2026, 11, 27, 10, 0), 1, last_start=D(2026, 11, 24, 2, 0),
                 planned=D(2026, 11, 25, 2, 0), catch_up=False)
    assert runs == [D(2026, 11, 28, 2, 0)]
    runs = fires(clock, "every 1 hour", D(2026, 11, 25, 12, 30), 1, last_start=D(2026, 11, 25, 8, 10),
                 catch_up=False)
    assert runs == [D(2026, 11, 25, 13, 10)]  # the old rhythm, no extra run


def test_missed_every_n_runs_once_then_keeps_the_period(clock: Clock) -> None:
    start = D(2026, 11, 25, 12, 0)
    runs = fires(clock, "every 1 hour", start, 3, last_start=D(2026, 11, 25, 6, 30))
    assert runs == [start, D(2026, 11, 25, 13, 0), D(2026, 11, 25, 14, 0)]


def test_regular_run_just_after_start_serves_as_the_catch_up(clock: Clock) -> None:
    runs = fires(clock, "daily at 02:00", D(2026, 11, 27, 1, 55), 10, last_start=D(2026, 11, 25, 2, 0),
                 planned=D(2026, 11, 26, 2, 0), until=D(2026, 11, 27, 3, 0))
    assert runs == [D(2026, 11, 27, 2, 0)]


def test_missed_run_decision() -> None:
    now = D(2026, 11, 27, 10, 0)
    assert sch.missed_run(now, None, D(2026, 11, 27, 2, 0), 86400, 0)  # planned, never started
    assert not sch.missed_run(now, D(2026, 11, 27, 2, 0, 1), D(2026, 11, 27, 2, 0), 86400, 0)  # it ran
    assert not sch.missed_run(now, None, D(2026, 11, 28, 2, 0), 86400, 0)  # not due yet
    assert sch.missed_run(now, D(2026, 11, 26, 9, 0), None, 86400, 0)  # no plan: older than a period
    assert not sch.missed_run(now, D(2026, 11, 26, 11, 0), None, 86400, 0)
    assert not sch.missed_run(now, None, None, 86400, 0)  # never ran, never planned


# --- no overlap, max_parallel_jobs --------------------------------------------------------------


def test_a_running_or_queued_job_skips_its_tick() -> None:
    assert sch.admit("etc", running={"etc"}, queued=[]) == "running"
    assert sch.admit("etc", running={"pg"}, queued=["etc"]) == "queued"
    assert sch.admit("etc", running={"pg"}, queued=["vol"]) == "queue"
    assert sch.can_start({"pg"}, 2) and not sch.can_start({"pg", "etc"}, 2)


def test_slow_job_never_stacks_runs(clock: Clock) -> None:
    """Ticks of an `every 2 seconds` job that takes 5 s: two are skipped, none is queued up."""
    clock.set(D(2026, 11, 25, 12, 0))
    s = schedule.Scheduler()
    running: dict[str, dt.datetime] = {}
    queued: list[str] = []
    started: list[dt.datetime] = []
    skipped: list[dt.datetime] = []

    def due(name: str) -> None:
        if sch.admit(name, running, queued) == "queue":
            queued.append(name)
        else:
            skipped.append(clock.now())

    sch.add_job(s, sch.make_plan("n", "etc", parse_schedule("every 2 seconds"), 0, True), due,
                now=clock.now, last_start=None, planned=None)
    for _ in range(12):  # 12 s in 1 s steps
        for name, since in list(running.items()):
            if (clock.now() - since).total_seconds() >= 5:
                del running[name]
        s.run_pending()
        while queued and sch.can_start(running, 1):
            running[queued.pop(0)] = clock.now()
            started.append(clock.now())
        clock.advance(1)
    assert [t.second for t in started] == [0, 6]
    assert [t.second for t in skipped] == [2, 4, 8, 10]
