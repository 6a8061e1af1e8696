"""Durations as written in specs (`30s`, `5m`, `1h30m`, `250ms`)."""

from __future__ import annotations

import datetime as dt
import re

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def since(text: str) -> float:
    """Seconds from an RFC 3339 time until now."""
    return (dt.datetime.now(dt.UTC) - parse_time(text)).total_seconds()
