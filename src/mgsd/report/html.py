"""HTML building blocks: escaping, tables, and the page shell with its inline CSS."""

from __future__ import annotations

import html
from collections.abc import Collection, Sequence
from typing import Any

CSS = """
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d2330;
       margin: 0; background: #f5f6f8; }
header { background: #1d2330; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #c6cbd6; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { background: #fff; border-radius: 8px; padding: 14px 20px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 18px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 10px; }
th, td { padding: 4px 9px; border-bottom: 1px solid #e3e6ec; text-align: right; white-space: nowrap; }
th { background: #eef0f4; font-weight: 600; }
td.l, th.l { text-align: left; }
td.ci { color: #6b7280; font-size: 12px; }
.note { color: #6b7280; font-size: 13px; }
.headline { font-size: 16px; font-weight: 600; border-left: 4px solid #2563eb; padding: 6px 12px; }
.warn { color: #a15c00; }
.charts img { max-width: 100%; margin: 6px 12px 6px 0; vertical-align: top; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 14px; }
.case { border: 1px solid #e3e6ec; border-radius: 6px; padding: 8px; background: #fcfcfd; }
.case img { width: 256px; height: 256px; display: block; margin: 0 auto 6px; image-rendering: pixelated; }
.case .meta { font-size: 12px; color: #4b5563; word-break: break-all; }
.verdict { display: inline-block; border-radius: 4px; padding: 1px 7px; font-size: 12px; font-weight: 600;
           margin: 4px 0; }
.verdict.ok { background: #d8f3e6; color: #05603a; }
.verdict.bad { background: #fde2e1; color: #9b1c1c; }
.case pre { white-space: pre-wrap; word-break: break-word; font-size: 11px; max-height: 180px;
            overflow: auto; background: #f1f3f6; padding: 6px; border-radius: 4px; margin: 4px 0 0; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def ci(bounds: Sequence[float] | None) -> str:
    return "" if not bounds else f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, left: int | Collection[int] = 1, cls: str = ""
) -> str:
    """A table whose first ``left`` columns (or the columns listed in ``left``) are left-aligned; cells
    are escaped unless given as ``("raw", html)`` tuples; ``("ci", text)`` cells are styled as intervals."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)

    def cell(v: Any, i: int, tag: str) -> str:
        klass = "l" if i in lefts else ""
        if isinstance(v, tuple) and v and v[0] == "raw":
            body = v[1]
        elif isinstance(v, tuple) and v and v[0] == "ci":
            klass, body = "ci", esc(v[1])
        else:
            body = esc(v)
        return f'<{tag} class="{klass}">{body}</{tag}>' if klass else f"<{tag}>{body}</{tag}>"

    head = "".join(cell(h, i, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(v, i, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
