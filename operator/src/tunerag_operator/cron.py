"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

The syntax of Kubernetes CronJobs (and Vixie cron): `*`, numbers, ranges `1-5`, steps `*/15`,
`10-50/20` and `5/10`, lists `1,15,30`, month and weekday names (`jan`, `mon-fri`), Sunday as 0 or 7,
and the macros `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and
`@hourly`. When both day-of-month and day-of-week are restricted, a day matches if either does
(cron's rule: `0 0 1 * mon` is the first of the month and every Monday).

There is no cron library in the locked dependencies, and this is all the operator needs: `parse`
checks an expression (and that it ever fires), `Cron.next_after` gives the next firing time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names whose index + offset is the value)
FIELDS = (("minute", 0, 59, (), 0), ("hour", 0, 23, (), 0), ("day-of-month", 1, 31, (), 0),
          ("month", 1, 12, MONTHS, 1), ("day-of-week", 0, 7, DAYS, 0))
HORIZON_YEARS = 5  # an expression that does not fire within this many years (`0 0 30 2 *`) is refused


class CronError(ValueError):
    """The expression is not valid; the message says which field and why."""


def _value(text: str, name: str, low: int, high: int, names: tuple[str, ...], offset: int) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + offset
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: tuple[str, ...], offset: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: the step in {part!r} must be a positive number")
            step = int(step_text)
        if base in ("*", "?"):
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _value(a, name, low, high, names, offset), _value(b, name, low, high, names, offset)
            if first > last:
                raise CronError(f"{name}: the range {base!r} runs backwards")
        else:
            first = _value(base, name, low, high, names, offset)
            last = high if slash else first  # `5/10`: from 5 to the end, every 10
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day-of-month is `*`
    any_weekday: bool  # day-of-week is `*`

    def _day_matches(self, t: dt.datetime) -> bool:
        weekday = (t.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        in_month, in_week = t.day in self.days, weekday in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first firing time strictly after `t` (an aware datetime), in UTC."""
        t = t.astimezone(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = t + dt.timedelta(days=366 * HORIZON_YEARS)
        while t < limit:
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + dt.timedelta(hours=1)
            elif t.minute not in self.minutes:
                later = [m for m in self.minutes if m > t.minute]
                t = t.replace(minute=min(later)) if later else t.replace(minute=0) + dt.timedelta(hours=1)
            else:
                return t
        raise CronError(f"{self.expression!r} never fires")

    def last_at_or_before(self, since: dt.datetime, now: dt.datetime) -> dt.datetime | None:
        """The latest firing time in (since, now], or None: the occurrences missed while nothing
        could run collapse into one, as a CronJob with concurrencyPolicy Forbid does."""
        for back in (dt.timedelta(hours=1), dt.timedelta(days=1), None):
            start = since if back is None else max(since, now - back)
            t = self.next_after(start)
            if t > now:
                continue  # nothing in this window: look further back
            while (following := self.next_after(t)) <= now:
                t = following
            return t
        return None


def parse(expression: str) -> Cron:
    text = " ".join(expression.split())
    if text.startswith("@") and text.lower() not in MACROS:
        raise CronError(f"{expression!r} is not a macro; use one of {', '.join(MACROS)}")
    fields = MACROS.get(text.lower(), text).split(" ")
    if len(fields) != 5:
        raise CronError(f"{expression!r} has {len(fields)} fields; cron needs 5 (minute hour day-of-month month "
                        "day-of-week) or a macro such as @daily")
    minutes, hours, days, months, weekdays = (_field(f, *spec) for f, spec in zip(fields, FIELDS, strict=True))
    cron = Cron(expression, minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                fields[2] in ("*", "?"), fields[4] in ("*", "?"))
    cron.next_after(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # raises CronError if it never fires
    return cron
