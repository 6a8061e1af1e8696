"""Line and bar charts as inline SVG: no script, no font or style sheet from elsewhere, so a page
that embeds them renders the same offline.

Every plotted point keeps its data: a series is a `<g class="series" data-series=NAME
data-count=N>` whose polylines pass through its N finite points, with a marker per point
(`<circle data-x=X data-y=Y>`, or a bar's `<rect>`) that has a `<title>` tooltip. Non-finite and
missing values are gaps in the line.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

Tone = Literal["good", "bad", "neutral"]
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
TONES: dict[str, str] = {"good": "#2e7d32", "bad": "#c62828", "neutral": "#9e9e9e"}
BOUND_COLOR = "#c62828"
# Time ticks: seconds between ticks, the smallest that keeps to about five ticks.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800)
CHAR_WIDTH = 6.5  # estimated width of a 12px character, for laying out legends


@dataclass(frozen=True)
class Series:
    """One line. `notes` and `tones` are per point (empty: none): a note is added to the point's
    tooltip, a tone colours its marker (e.g. an analysis verdict)."""

    name: str
    points: Sequence[tuple[float, float | None]]
    step: bool = False  # hold each value until the next point (a setting that changes, e.g. a weight)
    markers: bool = True
    notes: Sequence[str] = ()
    tones: Sequence[Tone | None] = ()


@dataclass(frozen=True)
class Bound:
    """A threshold: values above a `max` (below a `min`) fail; that side is shaded."""

    value: float
    side: Literal["min", "max"]
    label: str = ""


@dataclass(frozen=True)
class Axis:
    label: str = ""
    time: bool = False  # values are POSIX seconds, ticks read as UTC times
    lo: float | None = None  # fixed ends; by default the data's, widened to round ticks
    hi: float | None = None
    unit: str = ""  # appended to tick labels, e.g. "%"


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    tone: Tone | None = None


@dataclass(frozen=True)
class _Frame:
    """The plot area inside the margins, and the data domain it shows."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    x0: float
    x1: float
    y0: float
    y1: float

    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.width - self.left - self.right)

    def sy(self, y: float) -> float:
        y = min(max(y, self.y0), self.y1)
        return self.height - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.height - self.top - self.bottom)


def finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def data_value(v: float) -> str:
    """A value as written into data-x/data-y attributes: round-trips to 10 significant digits."""
    return format(v, ".10g")


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks of a non-finite range [{lo}, {hi}]")
    if hi - lo < 1e-12 * max(abs(lo), abs(hi), 1e-300):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if (hi - lo) / (m * magnitude) <= target)
    start, end = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(start, end + 1)]


def number_label(v: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(v) or 1.0
    if 1e-4 <= step < 1e6:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        if round(step * 10 ** decimals, 6) % 1:  # 2.5, 0.25: one more digit
            decimals += 1
        return f"{v:.{decimals}f}"
    return f"{v:.3g}"


def time_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    step = next((s for s in TIME_STEPS if (hi - lo) / s <= target), TIME_STEPS[-1])
    first = math.ceil(lo / step) * step
    return [float(first + k * step) for k in range(int((hi - first) // step) + 1)]


def time_label(v: float, ticks: Sequence[float]) -> str:
    when = dt.datetime.fromtimestamp(v, dt.UTC)
    span = ticks[-1] - ticks[0] if len(ticks) > 1 else 0
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 60
    if span >= 86400:
        return when.strftime("%m-%d %H:%M")
    return when.strftime("%H:%M:%S" if step < 60 else "%H:%M")


def utc(v: float) -> str:
    return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _domain(values: Sequence[float], axis: Axis, time: bool = False) -> tuple[float, float, list[float]]:
    lo = axis.lo if axis.lo is not None else min(values, default=0.0)
    hi = axis.hi if axis.hi is not None else max(values, default=1.0)
    if time:
        pad = max((hi - lo) * 0.03, 30.0 if hi - lo < 1 else 0.0)  # markers clear of the frame
        lo, hi = lo - pad, hi + pad
        ticks = time_ticks(lo, hi)
        return lo, hi, ticks
    ticks = nice_ticks(lo, hi)
    if axis.lo is None:
        lo = ticks[0]
    if axis.hi is None:
        hi = ticks[-1]
    return lo, hi, [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def _text(x: float, y: float, content: str, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{attrs}{extra}>'
            f"{escape(content)}</text>")


def _legend(items: Sequence[tuple[str, str, bool]], left: float) -> str:
    """One row under the title: (name, colour, dashed) per item; dashed items are bounds."""
    parts, x = [], left
    for name, color, dashed in (i for i in items if i[0]):
        swatch = (f'<line x1="{x:.1f}" y1="28" x2="{x + 14:.1f}" y2="28" stroke="{color}" stroke-dasharray="4 2"/>'
                  if dashed else f'<rect x="{x:.1f}" y="26" width="14" height="4" fill="{color}"/>')
        parts.append(f'<g class="legend-item">{swatch}' + _text(x + 18, 32, name) + "</g>")
        x += 18 + CHAR_WIDTH * len(name) + 18
    return '<g class="legend">' + "".join(parts) + "</g>" if parts else ""


def _bound_items(bounds: Sequence[Bound]) -> list[tuple[str, str, bool]]:
    return [(b.label or f"{b.side} {b.value:.4g}", BOUND_COLOR, True) for b in bounds]


def _left_margin(labels: Sequence[str], y: Axis) -> int:
    """Room for the longest y tick label, and for the rotated axis label when there is one."""
    return int((24 if y.label else 6) + CHAR_WIDTH * max((len(t) for t in labels), default=1) + 10)


def _axes(frame: _Frame, xticks: Sequence[str | tuple[float, str]], yticks: Sequence[float], ylabels: Sequence[str],
          x: Axis, y: Axis) -> str:
    """Grid lines, tick labels and axis labels. x ticks are (value, label) pairs, or bare labels
    placed at category centres (bar charts)."""
    out = ['<g class="axes" stroke="#ddd">']
    bottom, right = frame.height - frame.bottom, frame.width - frame.right
    for v in yticks:
        py = frame.sy(v)
        out.append(f'<line x1="{frame.left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}"/>')
    out.append(f'<line x1="{frame.left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>')
    out.append(f'<line x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" y2="{bottom}" stroke="#888"/></g>')
    out.append('<g class="ticks" fill="#444">')
    for v, label in zip(yticks, ylabels, strict=True):
        out.append(_text(frame.left - 6, frame.sy(v) + 4, label, "end"))
    for i, tick in enumerate(xticks):
        if isinstance(tick, tuple):
            px, label = frame.sx(tick[0]), tick[1]
        else:
            slot = (right - frame.left) / len(xticks)
            px, label = frame.left + slot * (i + 0.5), tick
        out.append(_text(px, bottom + 16, label, "middle"))
    out.append("</g>")
    if x.label:
        out.append(_text((frame.left + right) / 2, frame.height - 6, x.label, "middle", "axis-label"))
    if y.label:
        cy = (frame.top + bottom) / 2
        out.append(_text(14, cy, y.label, "middle", "axis-label", f' transform="rotate(-90 14 {cy:.1f})"'))
    return "".join(out)


def _bounds(frame: _Frame, bounds: Sequence[Bound]) -> str:
    out = []
    right, bottom = frame.width - frame.right, frame.height - frame.bottom
    for b in bounds:
        py = frame.sy(b.value)
        top, height = (frame.top, py - frame.top) if b.side == "max" else (py, bottom - py)
        out.append(f'<g class="bound" data-side="{b.side}" data-value="{data_value(b.value)}">'
                   f'<rect x="{frame.left}" y="{top:.1f}" width="{right - frame.left}" height="{max(height, 0):.1f}" '
                   f'fill="{BOUND_COLOR}" fill-opacity="0.07"/>'
                   f'<line x1="{frame.left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="{BOUND_COLOR}" '
                   f'stroke-dasharray="6 4"/></g>')
    return "".join(out)


def _svg(title: str, width: int, height: int, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
            f'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">'
            f"<title>{escape(title)}</title>"
            + _text(8, 16, title, cls="chart-title", extra=' font-weight="600" font-size="13"')
            + body + "</svg>")


def _segments(points: Sequence[tuple[float, float]], frame: _Frame, step: bool) -> list[str]:
    """Polyline point lists, one per run of consecutive finite points."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if finite(y):
            runs[-1].append((frame.sx(x), frame.sy(y)))
        elif runs[-1]:
            runs.append([])
    out = []
    for run in (r for r in runs if r):
        coords = []
        for i, (px, py) in enumerate(run):
            if step and i:
                coords.append(f"{px:.1f},{run[i - 1][1]:.1f}")
            coords.append(f"{px:.1f},{py:.1f}")
        out.append(" ".join(coords))
    return out


def line_chart(title: str, series: Sequence[Series], *, x: Axis | None = None, y: Axis | None = None,
               bounds: Sequence[Bound] = (), width: int = 720, height: int = 300) -> str:
    """A line chart of `series` over a shared x axis, with threshold bounds shaded on their failing side."""
    x, y = x or Axis(), y or Axis()
    xs = [px for s in series for px, py in s.points if math.isfinite(px) and finite(py)]
    ys = [float(py) for s in series for _, py in s.points if py is not None and math.isfinite(py)]
    ys += [b.value for b in bounds if math.isfinite(b.value)]
    x0, x1, xticks = _domain(xs, x, time=x.time)
    y0, y1, yticks = _domain(ys, y)
    ylabels = [number_label(t, yticks) + y.unit for t in yticks]
    frame = _Frame(width, height, _left_margin(ylabels, y), 44, 16, 44, x0, x1, y0, y1)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    xlabels = [(t, time_label(t, xticks) if x.time else number_label(t, xticks) + x.unit) for t in xticks]
    legend = [(s.name, c, False) for s, c in zip(series, colors, strict=True)] + _bound_items(bounds)
    body = [_legend(legend, frame.left), _axes(frame, xlabels, yticks, ylabels, x, y), _bounds(frame, bounds)]
    if not xs:
        body.append(_text((frame.left + width - frame.right) / 2, height / 2, "no data", "middle", "no-data"))
    for s, color in zip(series, colors, strict=True):
        pts = [(px, py) for px, py in s.points if math.isfinite(px)]
        count = sum(finite(py) for _, py in pts)
        group = [f'<g class="series" data-series="{escape(s.name)}" data-count="{count}">']
        for coords in _segments([(px, py if py is not None else math.nan) for px, py in pts], frame, s.step):
            group.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2" '
                         f'stroke-linejoin="round"/>')
        if s.markers:
            for i, (px, py) in enumerate(pts):
                if not finite(py):
                    continue
                assert py is not None
                tone = s.tones[i] if i < len(s.tones) else None
                note = f" ({s.notes[i]})" if i < len(s.notes) and s.notes[i] else ""
                shown = utc(px) if x.time else f"{px:g}"
                group.append(f'<circle cx="{frame.sx(px):.1f}" cy="{frame.sy(py):.1f}" r="4.5" '
                             f'fill="{TONES[tone] if tone else color}" stroke="{color}" stroke-width="2" '
                             f'data-x="{data_value(px)}" data-y="{data_value(py)}"'
                             + (f' data-tone="{tone}"' if tone else "")
                             + f"><title>{escape(f'{s.name}: {py:.6g}{y.unit} at {shown}{note}')}</title></circle>")
        group.append("</g>")
        body.append("".join(group))
    return _svg(title, width, height, "".join(body))


def bar_chart(title: str, bars: Sequence[Bar], *, y: Axis | None = None, bounds: Sequence[Bound] = (),
              width: int = 300, height: int = 240) -> str:
    """One bar per category (e.g. base model vs adapter), with threshold bounds."""
    y = y or Axis()
    values = [float(b.value) for b in bars if b.value is not None and math.isfinite(b.value)]
    values += [b.value for b in bounds if math.isfinite(b.value)] + [0.0]
    y0, y1, yticks = _domain([*values, max(values) * 1.1], y)  # room for the value over the highest bar
    ylabels = [number_label(t, yticks) + y.unit for t in yticks]
    frame = _Frame(width, height, _left_margin(ylabels, y), 44 if bounds else 28, 12, 36, 0.0, float(len(bars) or 1), y0, y1)
    body = [_legend(_bound_items(bounds), frame.left), _axes(frame, [b.label for b in bars], yticks, ylabels, Axis(), y),
            _bounds(frame, bounds)]
    slot = (width - frame.left - frame.right) / max(len(bars), 1)
    group = [f'<g class="series" data-series="{escape(title)}" data-count="{sum(finite(b.value) for b in bars)}">']
    for i, b in enumerate(bars):
        if b.value is None or not math.isfinite(b.value):
            group.append(_text(frame.left + slot * (i + 0.5), frame.sy(y0) - 6, "n/a", "middle"))
            continue
        top, base = frame.sy(max(b.value, 0.0)), frame.sy(min(b.value, 0.0))
        fill = TONES[b.tone] if b.tone else PALETTE[i % len(PALETTE)]
        group.append(f'<rect x="{frame.left + slot * (i + 0.2):.1f}" y="{top:.1f}" width="{slot * 0.6:.1f}" '
                     f'height="{max(base - top, 0.5):.1f}" fill="{fill}" data-x="{escape(b.label)}" '
                     f'data-y="{data_value(b.value)}"><title>{escape(f"{b.label}: {b.value:.6g}{y.unit}")}</title></rect>'
                     + _text(frame.left + slot * (i + 0.5), top - 4, f"{b.value:.4g}{y.unit}", "middle"))
    group.append("</g>")
    body.append("".join(group))
    return _svg(title, width, height, "".join(body))
