"""The page around the charts: one HTML file with its style inline and a Content-Security-Policy
that allows nothing from elsewhere (`default-src 'none'`), so the page renders offline and a
resource that slipped in would show as a console error instead of a silent request."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
NONE = "—"

STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1100px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; margin: 16px 0 6px; }
.subtitle { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px;
              word-break: break-all; }
dl.fields { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 6px 0 12px; }
dl.fields dt { color: #555; } dl.fields dd { margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 12px; }
.good { background: #e8f5e9; color: #1b5e20; } .bad { background: #ffebee; color: #b71c1c; }
.neutral { background: #eeeeee; color: #424242; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { max-width: 100%; height: auto; border: 1px solid #eee; background: #fff; }
details { margin: 4px 0; } summary { cursor: pointer; }
pre.example { background: #fafafa; border: 1px solid #eee; padding: 4px 6px; margin: 2px 0;
              white-space: pre-wrap; word-break: break-all; font-size: 12px; }
.note { color: #666; font-size: 12px; }
"""


class Html(str):
    """Markup inserted as it is; every other value put in a page is escaped."""

    __slots__ = ()


def cell(value: object) -> str:
    if isinstance(value, Html):
        return str(value)
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return NONE if not math.isfinite(value) else escape(f"{value:.6g}")
    return escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (), cls: str = "") -> Html:
    """A table; columns whose index is in `numeric` are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{cell(v)}</td>' if i in numeric else f"<td>{cell(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    attrs = f' class="{escape(cls)}"' if cls else ""
    return Html(f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def fields(pairs: Iterable[tuple[str, object]]) -> Html:
    return Html('<dl class="fields">' + "".join(f"<dt>{escape(k)}</dt><dd>{cell(v)}</dd>" for k, v in pairs) + "</dl>")


def badge(text: str, tone: str) -> Html:
    return Html(f'<span class="badge {escape(tone)}">{escape(text)}</span>')


def code(text: object) -> Html:
    return Html(f"<code>{escape(str(text))}</code>") if text not in (None, "") else Html(NONE)


def link(href: str, text: str) -> Html:
    """A link the reader follows by hand (navigation is not a resource load, so the policy allows it)."""
    return Html(f'<a href="{escape(href)}">{escape(text)}</a>')


def section(anchor: str, title: str, *parts: str) -> Html:
    return Html(f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>' + "".join(parts) + "</section>")


def paragraph(text: str, cls: str = "") -> Html:
    attrs = f' class="{escape(cls)}"' if cls else ""
    return Html(f"<p{attrs}>{escape(text)}</p>")


def charts(*svgs: str) -> Html:
    return Html('<div class="charts">' + "".join(svgs) + "</div>")


def page(title: str, subtitle: str, *sections: str) -> str:
    return ("<!doctype html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1><p class=\"subtitle\">{escape(subtitle)}</p>"
            + "".join(sections) + "</body></html>\n")
