"""HTML reports of finished runs: ``evaluate.py --report`` or ``python -m propagate.report OUT``.

``<out>/report/index.html`` is written next to ``results.json`` (a run, :mod:`.run_report`)
or for ``sweep/summary.json`` (a sweep, :mod:`.sweep`). The folder is self-contained: CSS
and JavaScript inline (:mod:`.html`), plots as PNG (:mod:`.plots`, matplotlib), videos as
H.264 MP4 (:mod:`propagate.video_writer`); nothing is fetched when it is viewed.
``results.json`` stays the source of truth: the report is generated from it, the per-video
records, the prediction files and the dataset, so it can be rebuilt for any finished run.
One module per task's section (:mod:`.davis`, :mod:`.jhmdb`, :mod:`.vip`, :mod:`.tapvid`).
docs/evaluation.md describes the page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from corr.errors import OutputError

from .run_report import write_run_report
from .sweep import write_sweep_report


def write_report(out: str | Path, data_root: Optional[str] = None) -> Path:
    """Write ``<out>/report/index.html`` for the finished run or sweep in ``out``; returns its path.

    ``data_root`` replaces the dataset location recorded in the run's configuration (a run
    made elsewhere, a dataset moved since).
    """
    out = Path(out)
    if (out / "results.json").is_file():
        return write_run_report(out, data_root)
    if (out / "sweep" / "summary.json").is_file():
        return write_sweep_report(out, data_root)
    raise OutputError(f"{out}: neither results.json nor sweep/summary.json; a report needs a finished run")


__all__ = ["write_report", "write_run_report", "write_sweep_report"]
