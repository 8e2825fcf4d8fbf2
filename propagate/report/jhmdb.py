"""The JHMDB section of a report: per-video PCK table and, for the videos with the lowest
PCK@0.1, ground truth | prediction | both skeleton videos from the prediction files."""
from __future__ import annotations

import numpy as np

from datasets.jhmdb import JHMDB_PARENTS, JhmdbVideo

from ..metrics import JHMDB_PCK_THRESHOLDS
from ..tasks.jhmdb import prediction_file
from ..visualize import draw_skeleton, side_by_side
from .context import (
    PANEL_HEIGHT,
    ReportContext,
    file_stem,
    panel_frame,
    scale_centre_points,
    worst_videos,
    write_report_video,
)

#: The ground truth's colour where it is drawn under the prediction.
GROUND_TRUTH = (255, 255, 255)


def comparison_frames(video: JhmdbVideo, preds: np.ndarray):
    """Ground-truth skeleton | predicted skeleton | both (ground truth thin and white), per frame."""
    for t in range(video.num_frames):
        frame, scale = panel_frame(video.read_frame(t))
        truth, pred = scale_centre_points(video.keypoints[t], scale), scale_centre_points(preds[t], scale)
        under = draw_skeleton(frame, truth, JHMDB_PARENTS, colour=GROUND_TRUTH, radius=1, thickness=1)
        yield side_by_side([draw_skeleton(frame, truth, JHMDB_PARENTS), draw_skeleton(frame, pred, JHMDB_PARENTS),
                            draw_skeleton(under, pred, JHMDB_PARENTS)],
                           [f"ground truth t={t}", "prediction", "both (truth white)"], height=PANEL_HEIGHT)


def section(ctx: ReportContext) -> None:
    results, page = ctx.results, ctx.page
    per_sequence = results.get("per_sequence") or {}
    keys = [f"PCK@{a}" for a in JHMDB_PCK_THRESHOLDS]
    key = ctx.task.headline_metrics[0]
    worst = worst_videos(per_sequence, key)
    page.heading("Videos")
    page.table(["video", "frames", *keys],
               [[name, results["timings"]["per_sequence"][name]["num_frames"], *(row.get(k) for k in keys)]
                for name, row in per_sequence.items()], links={name: f"#{file_stem(name)}" for name in worst})
    if worst:
        page.heading(f"Worst {len(worst)} videos by {key}: ground truth | prediction | both")
        if ctx.dataset is None:
            page.paragraph(f"Videos left out: {ctx.dataset_error}")
            return
        for name in worst:
            preds = np.load(ctx.out / prediction_file(name))
            src, mime = write_report_video(ctx, name, comparison_frames(ctx.dataset[name], preds))
            page.video(src, mime, f"{name}: {key} {100 * per_sequence[name][key]:.1f}", anchor=file_stem(name))
