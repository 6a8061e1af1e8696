"""kubectl's text conventions: tables padded with three spaces, upper-case headers, short ages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from tunerag_operator.durations import parse_time

NONE = "<none>"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Columns as kubectl's tabwriter lays them out (the last column is not padded)."""
    cells = [list(headers), *[[one_line(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append((indent + "   ".join(padded)).rstrip())
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\t" in text else text


def duration(seconds: float) -> str:
    """kubectl's HumanDuration, shortened: 45s, 3m20s, 2h5m, 3d4h."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s}s" if s and m < 10 else f"{m}m"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m}m" if m and h < 10 else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if h and d < 8 else f"{d}d"


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    if not timestamp:
        return NONE
    now = now or dt.datetime.now(dt.UTC)
    return duration((now - parse_time(timestamp)).total_seconds())


def number(value: float | None) -> str:
    """Four significant digits: 0.4123, 12.35, 1.235e+04."""
    return NONE if value is None else f"{value:.4g}"


def percent(value: int | None) -> str:
    return NONE if value is None else f"{value}%"
