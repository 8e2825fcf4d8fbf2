"""The report page: one HTML file with its CSS and JavaScript inline (no network when viewed).

A :class:`Page` collects sections (headline metrics, a sortable table, figures, videos,
the configuration) and :meth:`Page.write` saves ``index.html`` atomically. Images and
videos are files in the report folder, referred to by relative paths, so the folder can be
moved or archived as a whole. The table sorts on a click on its header: numbers by value
(a cell's ``data-value``), text alphabetically; a second click reverses the order.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from corr.io import atomic_write_bytes

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; min-width: 7em; }
.card .value { font-size: 1.5em; font-weight: 600; } .card .name { color: #555; font-size: 0.85em; }
table.sortable { border-collapse: collapse; font-size: 0.9em; }
table.sortable th, table.sortable td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
table.sortable th { background: #f3f3f3; cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
table.sortable td:first-child, table.sortable th:first-child { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; }
img, video { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column], y = b.cells[column];
        var u = parseFloat(x.dataset.value), v = parseFloat(y.dataset.value);
        var order = (isNaN(u) || isNaN(v)) ? x.textContent.localeCompare(y.textContent)
                                           : (u < v ? -1 : (u > v ? 1 : 0));
        if (isNaN(u) !== isNaN(v)) { order = isNaN(u) ? 1 : -1; }   // missing values last
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def percent(value: Optional[float]) -> str:
    """A fraction as a percentage with one decimal, ``n/a`` when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"


class Page:
    """An HTML report being assembled; sections appear in the order they are added."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        if subtitle:
            self.parts.append(f'<p class="meta">{html.escape(subtitle)}</p>')

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def link(self, text: str, href: str) -> None:
        self.parts.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')

    def cards(self, values: dict[str, Optional[float]]) -> None:
        """Headline numbers, each a fraction shown as a percentage."""
        cards = "".join(f'<div class="card"><div class="value">{percent(v)}</div>'
                        f'<div class="name">{html.escape(k)}</div></div>' for k, v in values.items())
        self.parts.append(f'<div class="cards">{cards}</div>')

    def table(self, columns: Sequence[str], rows: Sequence[Sequence], table_id: str = "sequences",
              links: Optional[dict[str, str]] = None) -> None:
        """A sortable table. A float cell is shown as a percentage (:func:`percent`) and sorts by
        value; ``links`` maps a first-column text to an in-page anchor or a relative address."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for i, value in enumerate(row):
                if isinstance(value, float):
                    number = "NaN" if math.isnan(value) else repr(value)
                    cells.append(f'<td data-value="{number}">{percent(value)}</td>')
                elif isinstance(value, int) and not isinstance(value, bool):
                    cells.append(f'<td data-value="{value}">{value}</td>')
                elif i == 0 and links and str(value) in links:
                    cells.append(f'<td><a href="{html.escape(links[str(value)])}">{html.escape(str(value))}</a></td>')
                else:
                    cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        self.parts.append(f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead>'
                          f'<tbody>{"".join(body)}</tbody></table>')

    def figures(self, items: Sequence[tuple[str, str]]) -> None:
        """Images side by side: (relative path, caption) each."""
        figures = "".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>" for src, caption in items)
        self.parts.append(f'<div class="figures">{figures}</div>')

    def video(self, src: str, mime: str, caption: str, anchor: str = "") -> None:
        """A looping, muted video that can play in place (``mime``: its ``type`` with codecs)."""
        anchor_attr = f' id="{html.escape(anchor)}"' if anchor else ""
        self.parts.append(f"<figure{anchor_attr}><video controls muted loop playsinline preload=\"auto\">"
                          f'<source src="{html.escape(src)}" type="{html.escape(mime)}"></video>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def json_block(self, title: str, data: object, open_: bool = False) -> None:
        """A collapsible block of pretty-printed JSON (shown unfolded with ``open_``)."""
        text = json.dumps(data, indent=2, sort_keys=False, default=str)
        self.parts.append(f"<details{' open' if open_ else ''}><summary>{html.escape(title)}</summary>"
                          f"<pre>{html.escape(text)}</pre></details>")

    def render(self) -> str:
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>\n"
                + "\n".join(self.parts) + f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")

    def write(self, folder: Path) -> Path:
        """Write ``folder/index.html`` atomically; returns its path."""
        return atomic_write_bytes(Path(folder) / "index.html", self.render().encode())
