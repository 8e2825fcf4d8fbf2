"""The VIP section of a report: per-video mIoU table and, for the videos with the lowest
mIoU, ground truth | prediction | error part-map videos from the prediction PNGs."""
from __future__ import annotations

from pathlib import Path

from datasets.palette import read_indexed_png
from datasets.vip import VipVideo

from ..metrics import resize_nearest
from ..visualize import error_overlay, overlay_parts, side_by_side
from .context import PANEL_HEIGHT, ReportContext, file_stem, worst_videos, write_report_video


def comparison_frames(out: Path, video: VipVideo):
    """Ground truth | prediction | error at the frame's size, per frame; a frame without an
    annotation shows the plain frame as its ground truth and no error."""
    for t, path in enumerate(video.frame_paths):
        frame = video.read_frame(t)
        pred = resize_nearest(read_indexed_png(out / "predictions" / video.name / f"{path.stem}.png"), video.size)
        gt = video.read_annotation(t)
        gt = pred if gt is None else resize_nearest(gt, video.size)
        annotated = t in video.annotated_frames
        yield side_by_side([overlay_parts(frame, gt) if annotated else frame, overlay_parts(frame, pred),
                            error_overlay(frame, gt, pred)],
                           [f"ground truth t={t}" if annotated else f"not annotated t={t}", "prediction",
                            "error (red: wrong part, blue: missed)"], height=PANEL_HEIGHT)


def section(ctx: ReportContext) -> None:
    results, page = ctx.results, ctx.page
    per_sequence = results.get("per_sequence") or {}
    worst = worst_videos(per_sequence, "mIoU")
    page.heading("Videos")
    page.table(["video", "frames", "mIoU"],
               [[name, results["timings"]["per_sequence"][name]["num_frames"], row.get("mIoU")]
                for name, row in per_sequence.items()], links={name: f"#{file_stem(name)}" for name in worst})
    if worst:
        page.heading(f"Worst {len(worst)} videos by mIoU: ground truth | prediction | error")
        if ctx.dataset is None:
            page.paragraph(f"Videos left out: {ctx.dataset_error}")
            return
        for name in worst:
            src, mime = write_report_video(ctx, name, comparison_frames(ctx.out, ctx.dataset[name]))
            page.video(src, mime, f"{name}: mIoU {100 * per_sequence[name]['mIoU']:.1f}", anchor=file_stem(name))
