"""Schedule strings of the config (docs/CONTRACT.md) parsed into plain values; no I/O, no clock.

The grammar, shared with the cookbook's Validation library and Ohai plugin (the cases in
tests/fixtures/schedule_cases.json are run against all three): ASCII only, case-insensitive,
words separated by runs of spaces or tabs (leading and trailing ones ignored); every N
seconds|minutes|hours|days with N from 1 (no leading zero) and at most 366 days; hourly at
:MM; daily at HH:MM; weekly on <weekday> at HH:MM (HH 00-23); optionally followed by UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTINUOUS = "continuous"
UNITS = ("seconds", "minutes", "hours", "days")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_EVERY = re.compile(r"every (?P<n>[1-9][0-9]{0,8}) (?P<unit>second|minute|hour|day)s?")
# Longer periods are typos (and overflow the scheduler's date arithmetic).
MAX_PERIOD = 366 * 86400
_HOURLY = re.compile(r"hourly at :(?P<mm>[0-5][0-9])")
_DAILY = re.compile(r"daily at (?P<hh>[01][0-9]|2[0-3]):(?P<mm>[0-5][0-9])")
_WEEKLY = re.compile(r"weekly on (?P<day>[a-z]+) at (?P<hh>[01][0-9]|2[0-3]):(?P<mm>[0-5][0-9])")

FORMS = (
    "'every N seconds|minutes|hours|days', 'hourly at :MM', 'daily at HH:MM' "
    "or 'weekly on <weekday> at HH:MM', optionally followed by ' UTC'"
)


@dataclass(frozen=True)
class Schedule:
    """One parsed schedule. `kind` is every|hourly|daily|weekly, or continuous (live.py: runs on
    changes, not at times; the config loader makes it, this grammar does not know it)."""

    text: str
    kind: str
    interval: int = 1
    unit: str = ""
    minute: int = 0
    hour: int = 0
    weekday: str = ""
    utc: bool = False

    @property
    def period_seconds(self) -> int:
        """How often it fires: the basis for "stale" and catch-up decisions."""
        if self.kind == CONTINUOUS:  # as stale as a job whose runs were min_interval apart
            return 60
        if self.kind == "every":
            return self.interval * {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}[self.unit]
        return {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}[self.kind]


class ScheduleError(ValueError):
    pass


_BLANKS = re.compile(r"[ \t]+")


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule string; raise ScheduleError saying which forms are accepted."""
    text = str(text)
    if not text.isascii():
        # str.split() and str.lower() know Unicode (no-break spaces, the Kelvin sign lowering to
        # 'k'); Ruby's do not: ASCII only keeps both sides reading the same text the same way.
        odd = next(c for c in text if not c.isascii())
        raise ScheduleError(f"{text!r} holds U+{ord(odd):04X}: use only ASCII letters, digits, ':' and spaces")
    raw = " ".join(_BLANKS.split(text.strip(" \t")))
    utc = False
    body = raw.lower()
    if body.endswith(" utc"):
        utc, body = True, body[: -len(" utc")]
    if m := _EVERY.fullmatch(body):
        every = Schedule(raw, "every", interval=int(m["n"]), unit=m["unit"] + "s", utc=utc)
        if every.period_seconds > MAX_PERIOD:
            raise ScheduleError(f"{text!r}: at most 366 days between runs")
        return every
    if m := _HOURLY.fullmatch(body):
        return Schedule(raw, "hourly", minute=int(m["mm"]), utc=utc)
    if m := _DAILY.fullmatch(body):
        return Schedule(raw, "daily", hour=int(m["hh"]), minute=int(m["mm"]), utc=utc)
    if m := _WEEKLY.fullmatch(body):
        if m["day"] not in WEEKDAYS:
            raise ScheduleError(f"unknown weekday '{m['day']}' in {text!r}")
        return Schedule(raw, "weekly", hour=int(m["hh"]), minute=int(m["mm"]), weekday=m["day"], utc=utc)
    raise ScheduleError(f"{text!r} is not a schedule: use {FORMS}")
