"""The HTML page around the figures: one self-contained file (inline CSS, SVG and a few lines of JS), no CDN."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from edgecompress.budgets import format_value

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1d2733;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c9d3de}main{padding:8px 28px 40px;max-width:1500px}
nav{padding:8px 28px;background:#e9edf1;font-size:13px}nav a{margin-right:14px;color:#1d4f91;text-decoration:none}
h2{margin:28px 0 8px;font-size:18px;border-bottom:1px solid #d7dce1;padding-bottom:4px}
h3{margin:16px 0 6px;font-size:15px}.verdict{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:600}
.ok{background:#d9f2dd;color:#14532d}.bad{background:#fbdcdc;color:#7f1d1d}.warn{background:#fdf0cf;color:#713f12}
.figs{display:flex;flex-wrap:wrap;gap:14px}.fig{background:#fff;border:1px solid #e1e5ea;border-radius:6px;
padding:8px;flex:1 1 560px;max-width:760px}.fig svg{max-width:100%;height:auto;display:block}
.fig p{margin:4px 2px 0;font-size:12px;color:#555}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:4px 0 10px}
th,td{border:1px solid #e1e5ea;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f1f4f7}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}table.sortable td{white-space:nowrap}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{overflow-x:auto}pre{background:#fff;border:1px solid #e1e5ea;padding:8px;white-space:pre-wrap;
word-break:break-all;font-size:12px}.muted{color:#666}.note{color:#713f12}
"""

# Click a header to sort by it; again to reverse. Cells sort by data-v when present (numbers), else their text.
# Empty cells stay last in either direction.
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    function key(row) {
      var cell = row.cells[i], v = cell.getAttribute('data-v');
      return v === null ? cell.textContent.trim() : v;
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      var nx = Number(x), ny = Number(y);
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


class Raw(str):
    """HTML written by this module, inserted without escaping."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape("" if value is None else str(value))


def num(value: float | None, digits: int = 4, unit: str = "") -> Raw:
    """A numeric cell: text for people, the exact value in data-v for sorting."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Raw('<td class="n" data-v="">–</td>')
    if unit == "bytes":
        text = format_value(value, unit)
    else:
        text = (f"{value:.{digits}g}" if isinstance(value, float) else str(value)) + (f" {unit}" if unit else "")
    return Raw(f'<td class="n" data-v="{value!r}">{html.escape(text)}</td>')


def cell(value: Any, sort: Any = None) -> Raw:
    """A text cell; ``sort`` overrides the value it sorts by."""
    attr = "" if sort is None else f' data-v="{html.escape(str(sort))}"'
    return Raw(f"<td{attr}>{esc(value)}</td>")


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]], sortable: bool = False, id_: str = "") -> Raw:
    """A table; a row item that is already a cell (from ``num``/``cell``, or a ``<th>``) is used as is."""
    head = "" if headers is None else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>"
    body = []
    for row in rows:
        cells = [c if isinstance(c, Raw) and c.startswith(("<td", "<th")) else f"<td>{esc(c)}</td>" for c in row]
        body.append("<tr>" + "".join(cells) + "</tr>")
    attrs = (' class="sortable"' if sortable else "") + (f' id="{esc(id_)}"' if id_ else "")
    return Raw(f'<div class="scroll"><table{attrs}>{head}<tbody>' + "".join(body) + "</tbody></table></div>")


def kv_table(pairs: Iterable[tuple[str, Any]]) -> Raw:
    return table(None, ([Raw(f"<th>{esc(k)}</th>"), v] for k, v in pairs))


def fig(svg_text: str, caption: str = "") -> Raw:
    """One figure box: the inline SVG and a caption under it."""
    return Raw(f'<div class="fig">{svg_text}' + (f"<p>{esc(caption)}</p>" if caption else "") + "</div>")


def figs(items: Iterable[str]) -> Raw:
    return Raw('<div class="figs">' + "".join(items) + "</div>")


def section(anchor: str, title: str, *body: Any) -> Raw:
    return Raw(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>' + "".join(esc(b) for b in body) + "</section>")


def para(text: str, klass: str = "") -> Raw:
    return Raw(f'<p class="{klass}">{esc(text)}</p>' if klass else f"<p>{esc(text)}</p>")


def pre(text: str) -> Raw:
    return Raw(f"<pre>{esc(text)}</pre>")


def page(title: str, subtitle: Sequence[Any], sections: Sequence[tuple[str, str, Raw]]) -> str:
    """The whole document: header, a navigation bar over the sections, the sections, the sorting script."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name, _ in sections)
    lines = "".join(f"<p>{esc(s)}</p>" for s in subtitle)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{lines}</header><nav>{nav}</nav><main>"
        + "".join(section(anchor, name, body) for anchor, name, body in sections)
        + f"</main><script>{SORT_JS}</script></body></html>\n"
    )
