"""What the benchmarks print about the machine they ran on: its load, since the cores are shared
and every figure is a ratio taken within one run."""

from __future__ import annotations

import os


def load() -> str:
    """The 1, 5 and 15-minute load averages now."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def summary(load_at_start: float) -> str:
    """Cores and the 1-minute load at the start (`os.getloadavg()[0]` then) and now, flagged when
    either was above the core count."""
    now, cores = os.getloadavg()[0], os.cpu_count() or 1
    shared = " (above the core count: other work shared the machine)" if max(load_at_start, now) > cores else ""
    return f"machine: {cores} cores, 1-minute load average {load_at_start:.1f} at the start, {now:.1f} at the end{shared}"
