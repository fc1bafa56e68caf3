"""The report page: one self-contained `report.html` (tables, plots, QC thumbnails) that opens offline.

Images are embedded as data URIs; the only script is inline and sorts a table when a header is
clicked (numbers as numbers). No CDN, no font or style from the network: the file can be mailed.
Every value from a table is escaped; nothing from the data becomes markup.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..io.atomic import atomic_write_text

MAX_ROWS = 5000
"""Rows shown per table (a cohort's instance table can be long; the CSVs hold all)."""

_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:12px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}td.n{text-align:right}th{background:#eef;cursor:pointer;user-select:none}
img{max-width:48%;margin:4px;border:1px solid #ddd}h2{margin-top:1.2em}"""

_SORT = """document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
var table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex,asc=th.dataset.order!=='asc';
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=a.cells[col].textContent,y=b.cells[col].textContent;
var nx=parseFloat(x),ny=parseFloat(y);var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});table.querySelectorAll('th').forEach(function(h){delete h.dataset.order;});
th.dataset.order=asc?'asc':'desc';});});"""


def write_report_page(out_dir: str | os.PathLike, title: str, tables: Mapping[str, Sequence[Mapping]] = {},
                      images: Mapping[str, str | os.PathLike] = {}, notes: Sequence[str] = ()) -> Path:
    """Write `<out_dir>/report.html`: `notes` as paragraphs, each table (name -> rows), each PNG (caption -> path)."""
    parts = [f"<h1>{html.escape(title)}</h1>"] + [f"<p>{html.escape(n)}</p>" for n in notes]
    for name, rows in tables.items():
        parts.append(f"<h2>{html.escape(name)}</h2>" + _table(list(rows)))
    figures = [(caption, Path(p)) for caption, p in images.items() if Path(p).is_file()]
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<img alt="{html.escape(c)}" title="{html.escape(c)}" src="data:image/png;base64,'
                  f'{base64.b64encode(p.read_bytes()).decode()}">' for c, p in figures]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}<script>{_SORT}</script></body></html>\n")
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, page)
    return path


def _table(rows: list[Mapping]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_td(r.get(c, "")) for c in columns) + "</tr>" for r in rows[:MAX_ROWS])
    more = f"<p>{len(rows) - MAX_ROWS} more row(s) in the CSV</p>" if len(rows) > MAX_ROWS else ""
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'


def _td(value) -> str:
    """A table cell: numbers right-aligned (so their digits line up), text left."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) or _numeric_text(value)
    return f'<td{" class=n" if number else ""}>{html.escape(_cell(value))}</td>'


def _numeric_text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)
