"""Which snapshots a retention policy keeps: restic's semantics, as a pure function.

keep_last N keeps the N newest; keep_hourly/daily/weekly/monthly/yearly N keep the newest
snapshot of each of the last N hours/days/... that have snapshots. A snapshot kept by any rule
survives. Time buckets are computed in UTC so every node and test agrees on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from backup_agent.storage.layout import order_rank

_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "keep_hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "keep_daily": lambda t: (t.year, t.month, t.day),
    "keep_weekly": lambda t: tuple(t.isocalendar()[:2]),
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: (t.year,),
}
RULES = ("keep_last", *_BUCKETS)


@dataclass(frozen=True)
class Decision:
    keep: list[str]
    forget: list[str]
    reasons: dict[str, list[str]]


def apply(snapshots: Sequence[tuple[str, datetime]], policy: dict[str, int]) -> Decision:
    """Split (id, time) pairs into kept and forgotten ids. No policy at all keeps everything."""
    # The snapshots' one order (storage.layout): by time, then an id with a fraction after a
    # whole-second one of the same instant.
    newest_first = sorted(snapshots, key=lambda s: (s[1], order_rank(s[0]), s[0]), reverse=True)
    if not any(policy.get(rule, 0) for rule in RULES):
        return Decision([s for s, _ in reversed(newest_first)], [], {s: ["no policy"] for s, _ in newest_first})
    reasons: dict[str, list[str]] = {}
    for i, (sid, _) in enumerate(newest_first):
        if i < policy.get("keep_last", 0):
            reasons.setdefault(sid, []).append("last")
    for rule, bucket_of in _BUCKETS.items():
        budget = policy.get(rule, 0)
        last_bucket: tuple[int, ...] | None = None
        for sid, when in newest_first:
            if budget <= 0:
                break
            bucket = bucket_of(when.astimezone(UTC))
            if bucket != last_bucket:
                reasons.setdefault(sid, []).append(rule.removeprefix("keep_"))
                last_bucket = bucket
                budget -= 1
    oldest_first = [s for s, _ in reversed(newest_first)]
    return Decision(
        keep=[s for s in oldest_first if s in reasons],
        forget=[s for s in oldest_first if s not in reasons],
        reasons=reasons,
    )
