"""Retention decisions (pure) with restic's semantics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backup_agent.retention import apply


def snaps_every(hours: float, count: int, start: datetime) -> list[tuple[str, datetime]]:
    return [(f"s{i:04}", start + timedelta(hours=hours * i)) for i in range(count)]


START = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def test_no_policy_keeps_everything() -> None:
    snaps = snaps_every(24, 10, START)
    d = apply(snaps, {})
    assert d.forget == [] and len(d.keep) == 10


def test_keep_last() -> None:
    d = apply(snaps_every(1, 10, START), {"keep_last": 3})
    assert d.keep == ["s0007", "s0008", "s0009"]
    assert len(d.forget) == 7


def test_keep_daily_keeps_newest_of_each_day() -> None:
    snaps = snaps_every(6, 4 * 5, START)  # 4 a day for 5 days
    d = apply(snaps, {"keep_daily": 3})
    kept_days = sorted({dict(snaps)[s].date() for s in d.keep})
    assert len(d.keep) == 3 and len(kept_days) == 3
    for sid in d.keep:  # each is the last of its day
        day = dict(snaps)[sid].date()
        assert sid == max(s for s, t in snaps if t.date() == day)


def test_a_simulated_year_of_daily_snapshots() -> None:
    snaps = snaps_every(24, 365, START)
    d = apply(snaps, {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 2})
    # 7 daily + up to 4 weekly + 12 monthly overlap: the newest 7 days, then week ends, then month ends
    assert d.keep[-7:] == [s for s, _ in snaps[-7:]]
    months = {dict(snaps)[s].strftime("%Y-%m") for s in d.keep}
    assert len(months) == 12
    assert len(d.keep) <= 7 + 4 + 12 + 2
    assert set(d.keep) | set(d.forget) == {s for s, _ in snaps}


def test_rules_combine_as_union() -> None:
    snaps = snaps_every(24, 30, START)
    a = set(apply(snaps, {"keep_last": 2}).keep)
    b = set(apply(snaps, {"keep_weekly": 3}).keep)
    assert set(apply(snaps, {"keep_last": 2, "keep_weekly": 3}).keep) == a | b
