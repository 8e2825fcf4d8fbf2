"""The report of one finished run: ``<out>/report/index.html`` from ``<out>/results.json``,
the per-video records, the prediction files and the dataset (reopened from the run's
configuration, or from ``data_root``).

The page: the run's task, encoder, dataset and code version; the headline metrics; the
task's section (:data:`SECTIONS`: per-video table, per-frame curves, videos of the worst
videos); the full configuration, the implementation factors, the checkpoint, the dataset
and the timings. Where the dataset cannot be reopened the page says so and leaves out what
needs its frames.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

from datasets.frames import DatasetError

from ..eval_config import EvalConfig
from ..tasks import get_task
from . import davis, jhmdb, tapvid, vip
from .context import ReportContext
from .html import Page

#: ``task`` of results.json -> the function adding its section to the page.
SECTIONS: dict[str, Callable[[ReportContext], None]] = {
    "davis": davis.section, "jhmdb": jhmdb.section, "vip": vip.section, "tapvid": tapvid.section,
}


def run_config(results: dict, data_root: Optional[str] = None) -> EvalConfig:
    """The :class:`EvalConfig` a run used (``results["config"]["eval"]``; JSON lists back to tuples),
    with ``data_root`` replaced when given."""
    known = {field.name for field in dataclasses.fields(EvalConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in results["config"]["eval"].items() if k in known}
    cfg = EvalConfig(**values)
    return dataclasses.replace(cfg, data_root=data_root) if data_root is not None else cfg


def write_run_report(out: str | Path, data_root: Optional[str] = None) -> Path:
    """Write ``<out>/report/`` for the finished run in ``out``; returns the page's path."""
    out = Path(out)
    results = json.loads((out / "results.json").read_text())
    cfg = run_config(results, data_root)
    task = get_task(results["task"])
    dataset, error = None, None
    try:
        dataset = task.open(cfg)
    except (DatasetError, OSError, ValueError) as problem:
        error = f"the dataset cannot be opened ({problem}); give its location with --data-root"
    info = results.get("checkpoint") or {}
    data = results.get("dataset") or {}
    page = Page(f"{task.title} report: {out.resolve().name}",
                f"encoder {info.get('encoder')} ({info.get('format')}); dataset {data.get('name', '')}"
                f"{' ' + str(data['split']) if data.get('split') else ''}; code {results.get('code_version')}")
    if dataset is not None and dataset.identity() != results["dataset"]:
        page.paragraph("Note: the dataset read now differs from the one this run evaluated (its listing changed); "
                       "videos are drawn from the dataset as it is now.")
    page.heading("Metrics")
    metrics = results.get("metrics") or {}
    page.cards({k: v for k, v in metrics.items() if isinstance(v, float)})
    ctx = ReportContext(out, out / "report", results, cfg, task, dataset, error, page)
    SECTIONS[task.name](ctx)
    page.heading("Configuration")
    page.json_block("configuration (evaluation options, propagation settings, task settings)", results["config"],
                    open_=True)
    page.json_block("implementation factors", results.get("factors"), open_=True)
    page.json_block("checkpoint", results.get("checkpoint"))
    page.json_block("dataset", results.get("dataset"))
    timings = {k: v for k, v in (results.get("timings") or {}).items() if k != "per_sequence"}
    page.json_block("timings (seconds)", timings)
    return page.write(ctx.folder)
