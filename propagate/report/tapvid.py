"""The TAP-Vid section of a report: per-video AJ, <delta^x_avg> and OA table and, for the
videos with the lowest AJ, ground-truth | predicted track videos with occlusion shown
(:func:`propagate.visualize.draw_tracks`: hollow circles where occluded) from the ``.npz`` files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.tapvid import TapVidSample

from ..metrics import TAPVID_KEYS
from ..tasks.tapvid import VIS_MAX_TRACKS
from ..visualize import draw_tracks, side_by_side
from .context import PANEL_HEIGHT, ReportContext, file_stem, panel_frame, worst_videos, write_report_video

#: Column titles of the per-video table.
SHORT = {"average_jaccard": "AJ", "average_pts_within_thresh": "<d_avg>", "occlusion_accuracy": "OA"}


def comparison_frames(sample: TapVidSample, prediction: Path):
    """Ground-truth tracks | predicted tracks of up to :data:`VIS_MAX_TRACKS` queries (evenly chosen), per frame."""
    with np.load(prediction) as stored:
        tracks, occluded = stored["tracks"], stored["occluded"]
    picks = np.unique(np.linspace(0, len(tracks) - 1, min(VIS_MAX_TRACKS, len(tracks))).round().astype(int)) \
        if len(tracks) else np.zeros(0, np.int64)
    for t, frame in enumerate(sample.frames):
        frame, scale = panel_frame(frame)  # tracks are corner-convention pixels: they scale as they are
        yield side_by_side([draw_tracks(frame, sample.target_points[picks] * scale, sample.occluded[picks], t),
                            draw_tracks(frame, tracks[picks] * scale, occluded[picks], t)],
                           [f"ground truth t={t}", "prediction (hollow: occluded)"], height=PANEL_HEIGHT)


def section(ctx: ReportContext) -> None:
    results, page = ctx.results, ctx.page
    per_sequence = results.get("per_sequence") or {}
    keys = [*SHORT, *(k for k in TAPVID_KEYS if k not in SHORT)]
    worst = worst_videos(per_sequence, "average_jaccard")
    page.heading("Videos")
    page.table(["video", "frames", *(SHORT.get(k, k) for k in keys)],
               [[name, results["timings"]["per_sequence"][name]["num_frames"], *(row.get(k) for k in keys)]
                for name, row in per_sequence.items()], links={name: f"#{file_stem(name)}" for name in worst})
    if not worst:
        return
    page.heading(f"Worst {len(worst)} videos by AJ: ground-truth | predicted tracks")
    if ctx.dataset is None:
        page.paragraph(f"Videos left out: {ctx.dataset_error}")
        return
    dataset = ctx.dataset
    for video in dataset.videos():  # streamed: a Kinetics folder holds many
        if video.name in worst:
            sample = video.sample(dataset.query_mode, dataset.resolution)
            src, mime = write_report_video(ctx, video.name, comparison_frames(
                sample, ctx.out / "predictions" / f"{video.name}.npz"))
            page.video(src, mime, f"{video.name}: AJ {100 * per_sequence[video.name]['average_jaccard']:.1f}",
                       anchor=file_stem(video.name))
