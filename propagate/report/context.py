"""What a task's report section is given (:class:`ReportContext`) and the helpers they share:
the worst videos, file names, and writing a side-by-side video into the report folder."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import cv2
import numpy as np

from corr.geometry import from_integer_centres, to_integer_centres

from ..eval_config import EvalConfig
from ..task import Task
from ..video_writer import H264, H264_MIME, VideoWriter
from .html import Page

#: How many of the lowest-scoring videos get a side-by-side video.
WORST_VIDEOS = 3
#: Row count of each panel of a report video (the aspect ratio is kept).
PANEL_HEIGHT = 240
#: Frames per second of report videos.
REPORT_FPS = 10.0


@dataclass
class ReportContext:
    """One finished run being reported.

    out:      the run's folder (``results.json``, ``sequences/``, ``predictions/``);
    folder:   the report folder (``<out>/report``), where every file of the page goes;
    results:  the content of ``results.json``;
    cfg:      the run's configuration (``results["config"]["eval"]``);
    task:     the registered task; ``dataset`` its dataset reopened, None when it could not be
              (``dataset_error`` says why; the page then leaves out what needs frames);
    page:     the page being written.
    """

    out: Path
    folder: Path
    results: dict
    cfg: EvalConfig
    task: Task
    dataset: Optional[object]
    dataset_error: Optional[str]
    page: Page


def file_stem(name: str) -> str:
    """A video name as one file name (``brush_hair/clip 1`` -> ``brush_hair__clip_1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("/", "__"))


def worst_videos(per_sequence: dict[str, dict], key: str, count: int = WORST_VIDEOS) -> list[str]:
    """The ``count`` videos with the lowest ``key`` (ties in table order); NaN and missing ones are skipped."""
    scored = [(row.get(key), i, name) for i, (name, row) in enumerate(per_sequence.items())
              if isinstance(row.get(key), (int, float)) and not math.isnan(row.get(key))]
    return [name for _, _, name in sorted(scored)[:count]]


def panel_frame(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """An RGB frame resized (bilinear) to :data:`PANEL_HEIGHT` rows before points are drawn on
    it, so that dots and lines keep their size -> (frame, scale)."""
    scale = PANEL_HEIGHT / frame.shape[0]
    width = max(1, round(frame.shape[1] * scale))
    return cv2.resize(frame, (width, PANEL_HEIGHT), interpolation=cv2.INTER_LINEAR), scale


def scale_centre_points(points: np.ndarray, scale: float) -> np.ndarray:
    """Integer-centre (x, y) points (pixel i's centre at i) on a frame resized by ``scale``;
    negative (not predicted) points stay negative (corr.geometry: scaling acts on corner coordinates)."""
    points = np.asarray(points, dtype=np.float64)
    return np.where(points < 0, points, to_integer_centres(from_integer_centres(points) * scale))


def write_report_video(ctx: ReportContext, name: str, frames: Iterable[np.ndarray]) -> tuple[str, str]:
    """Write ``videos/<name>.mp4`` in the report folder from RGB frames (one at a time) ->
    (its path relative to the report folder, the ``type`` its ``<source>`` declares)."""
    relative = f"videos/{file_stem(name)}.mp4"
    with VideoWriter(ctx.folder / relative, fps=REPORT_FPS) as writer:
        for frame in frames:
            writer.write(frame)
    return relative, H264_MIME if writer.codec == H264 else "video/mp4"
