"""The report of a finished sweep: ``<out>/report/index.html`` from ``<out>/sweep/summary.json``.

The page: a heat map of the task's first headline metric over the swept settings (rows:
the values of the first swept setting, columns: those of the second; one map per value of
any further settings; a single row for a one-setting sweep), a sortable table of every
setting's headline metrics linking to its own report (``<out>/sweep/<setting>/report/``,
written too), and the sweep's options.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..tasks import get_task
from .html import Page
from .plots import heat_map
from .run_report import write_run_report


def axis_values(rows: list[dict]) -> dict[str, list]:
    """Each swept setting -> its values in the order the sweep ran them."""
    axes: dict[str, list] = {}
    for row in rows:
        for name, value in row["overrides"].items():
            if value not in axes.setdefault(name, []):
                axes[name].append(value)
    return axes


def metric_grids(rows: list[dict], key: str) -> list[tuple[str, np.ndarray, str, list, str, list]]:
    """(title, values (R, C) with NaN where missing, row setting, its values, column setting,
    its values) for each heat map of ``key`` (see the module's docstring)."""
    axes = axis_values(rows)
    names = list(axes)
    row_name = names[0]
    column_name = names[1] if len(names) > 1 else None
    rest = names[2:]
    columns = axes[column_name] if column_name else [""]
    grids = []
    for fixed in itertools.product(*(axes[name] for name in rest)):
        values = np.full((len(axes[row_name]), len(columns)), np.nan)
        for row in rows:
            o = row["overrides"]
            if all(o[name] == v for name, v in zip(rest, fixed)):
                metric = row["metrics"].get(key)
                c = columns.index(o[column_name]) if column_name else 0
                values[axes[row_name].index(o[row_name]), c] = np.nan if metric is None else metric
        title = key + "".join(f", {name}={v}" for name, v in zip(rest, fixed))
        grids.append((title, values, row_name, axes[row_name], column_name or "", columns))
    return grids


def write_sweep_report(out: str | Path, data_root: Optional[str] = None) -> Path:
    """Write ``<out>/report/`` for the finished sweep in ``out`` and each setting's own report."""
    out = Path(out)
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    task = get_task(summary["task"])
    rows = summary["settings"]
    folder = out / "report"
    page = Page(f"{task.title} sweep report: {out.resolve().name}", f"sweep: {summary['sweep']}")
    key = task.headline_metrics[0]
    page.heading(f"{key} over the swept settings")
    figures = []
    for i, (title, values, row_name, row_values, column_name, column_values) in enumerate(metric_grids(rows, key)):
        heat_map(folder / f"heatmap-{i}.png", values, row_values, column_values, row_name, column_name, title)
        figures.append((f"heatmap-{i}.png", title))
    page.figures(figures)
    page.heading("Settings")
    links = {}
    for row in rows:
        setting = out / "sweep" / row["name"]
        if (setting / "results.json").is_file():
            write_run_report(setting, data_root)
            links[row["name"]] = f"../sweep/{row['name']}/report/index.html"
    page.table(["setting", *axis_values(rows), *task.headline_metrics],
               [[row["name"], *(v if isinstance(v, int) and not isinstance(v, bool) else str(v)
                                for v in row["overrides"].values()),
                 *(row["metrics"].get(k) for k in task.headline_metrics)] for row in rows],
               table_id="settings", links=links)
    page.heading("Configuration")
    page.json_block("sweep", {k: v for k, v in summary.items() if k != "settings"}, open_=True)
    page.json_block("settings (propagation or tracking configuration and factors of each)", rows)
    return page.write(folder)

