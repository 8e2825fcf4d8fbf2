"""The report's plots, drawn with matplotlib's object API (no pyplot state) and saved as PNG
with :func:`propagate.visualize.save_png`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..visualize import save_png


def figure_rgb(figure: Figure) -> np.ndarray:
    """Render a figure -> uint8 (H, W, 3) RGB."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def per_frame_curves(path: Path, title: str, series: dict[str, dict[str, Sequence[float]]],
                     frames: Sequence[int]) -> Path:
    """Per-frame scores of one video, one panel per score: ``series[score][label]`` is a
    list of values over ``frames`` (e.g. ``series["J"]["object 1"]``), in [0, 1]."""
    figure = Figure(figsize=(3.2 * len(series), 2.4), dpi=90, layout="constrained")
    for i, (score, lines) in enumerate(series.items()):
        axes = figure.add_subplot(1, len(series), i + 1)
        for label, values in lines.items():
            axes.plot(frames, values, marker=".", markersize=3, linewidth=1, label=label)
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("frame")
        axes.set_title(f"{title}: {score}", fontsize=9)
        axes.grid(alpha=0.3)
        if 1 < len(lines) <= 8:
            axes.legend(fontsize=6)
    return save_png(path, figure_rgb(figure))


def heat_map(path: Path, values: np.ndarray, rows: Sequence[str], columns: Sequence[str], row_name: str,
             column_name: str, title: str) -> Path:
    """A grid of fractions (``values`` (R, C), NaN = missing) shown as percentages, one cell
    per setting: rows are the values of ``row_name``, columns those of ``column_name``."""
    figure = Figure(figsize=(1.2 + 0.9 * len(columns), 1.0 + 0.55 * len(rows)), dpi=90, layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(np.ma.masked_invalid(100 * values), cmap="viridis", aspect="auto")  # percent, as the cells
    axes.set_xticks(range(len(columns)), [str(c) for c in columns])
    axes.set_yticks(range(len(rows)), [str(r) for r in rows])
    axes.set_xlabel(column_name)
    axes.set_ylabel(row_name)
    axes.set_title(title, fontsize=9)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (r, c), value in np.ndenumerate(values):
        text = "n/a" if math.isnan(value) else f"{100 * value:.1f}"
        axes.text(c, r, text, ha="center", va="center", fontsize=8,
                  color="black" if not math.isnan(value) and value > middle else "white")
    figure.colorbar(image, ax=axes)
    return save_png(path, figure_rgb(figure))


def bar_chart(path: Path, labels: Sequence[str], values: Sequence[Optional[float]], title: str) -> Path:
    """One bar per setting (a sweep over one setting, or with more than two)."""
    figure = Figure(figsize=(1.5 + 0.5 * len(labels), 2.8), dpi=90, layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    heights = [np.nan if v is None else 100 * v for v in values]
    axes.bar(range(len(labels)), heights)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    axes.set_ylabel("%")
    axes.set_title(title, fontsize=9)
    return save_png(path, figure_rgb(figure))
