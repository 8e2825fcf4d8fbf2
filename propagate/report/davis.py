"""The DAVIS section of a report: per-sequence J&F table, per-frame J and F curves of every
scored sequence, and ground truth | prediction | error videos of the worst sequences.

Per-frame J and F are each sequence's record (``<out>/sequences/<seq>.json``, the scorer's
per-object lists over frames 1 .. T-2); where the record is missing or of other settings
they are recomputed from the prediction PNGs and the annotations with
:func:`propagate.metrics.davis_sequence_scores`, the same scorer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.davis import VOID_ID, DavisDataset, DavisSequence
from datasets.palette import read_indexed_png

from ..metrics import davis_sequence_scores
from ..run import load_record, record_path
from ..visualize import error_overlay, overlay_mask, side_by_side
from .context import PANEL_HEIGHT, ReportContext, file_stem, worst_videos, write_report_video
from .plots import per_frame_curves


def prediction_ids(out: Path, seq: DavisSequence) -> np.ndarray:
    """The run's predicted id maps (T, H, W) of ``seq``, read from ``predictions/<seq>/<frame>.png``."""
    return np.stack([read_indexed_png(out / "predictions" / seq.name / f"{path.stem}.png")
                     for path in seq.frame_paths])


def frame_scores(ctx: ReportContext, name: str) -> dict[str, dict[str, list[float]]]:
    """Per-frame J and F of one scored sequence: ``{object id: {"J": [...], "F": [...]}}``
    over frames 1 .. T-2, from its record, else recomputed (the module's docstring)."""
    record = load_record(record_path(ctx.out, name), ctx.results["run_key"])
    if record is not None and record.get("scores"):
        return {k: {"J": list(obj["J"]), "F": list(obj["F"])} for k, obj in record["scores"].items()}
    if ctx.dataset is None:
        raise FileNotFoundError(f"{record_path(ctx.out, name)}: no record of this run, and the dataset cannot "
                                f"be opened to recompute it ({ctx.dataset_error})")
    seq = ctx.dataset[name]
    scores = davis_sequence_scores(seq.annotations(), prediction_ids(ctx.out, seq), sequence=name)
    return {str(k): {"J": obj["J"].tolist(), "F": obj["F"].tolist()} for k, obj in scores["objects"].items()}


def comparison_frames(out: Path, seq: DavisSequence):
    """Ground truth | prediction | error, one RGB frame at a time (see :func:`error_overlay`)."""
    for t, path in enumerate(seq.frame_paths):
        frame = seq.read_frame(t)
        gt = seq.read_annotation(t)
        pred = read_indexed_png(out / "predictions" / seq.name / f"{path.stem}.png")
        yield side_by_side([overlay_mask(frame, gt), overlay_mask(frame, pred),
                            error_overlay(frame, gt, pred, void=VOID_ID)],
                           [f"ground truth t={t}", "prediction", "error (red: extra, blue: missed)"],
                           height=PANEL_HEIGHT)


def section(ctx: ReportContext) -> None:
    results, page = ctx.results, ctx.page
    per_sequence = results.get("per_sequence") or {}
    page.heading("Sequences")
    rows = [[name, row["num_objects"], results["timings"]["per_sequence"][name]["num_frames"], row["J&F-Mean"],
             row["J-Mean"], row["F-Mean"], row["J-Recall"], row["F-Recall"], row["J-Decay"], row["F-Decay"]]
            for name, row in per_sequence.items()]
    page.table(["sequence", "objects", "frames", "J&F", "J", "F", "J-Recall", "F-Recall", "J-Decay", "F-Decay"], rows,
               links={name: f"#{file_stem(name)}" for name in worst_videos(per_sequence, "J&F-Mean")})
    unscored = results.get("unscored_sequences") or {}
    if unscored:
        page.paragraph("Not scored (predictions written): " + "; ".join(f"{n}: {why}" for n, why in unscored.items()))

    worst = worst_videos(per_sequence, "J&F-Mean")
    if worst:
        page.heading(f"Worst {len(worst)} sequences by J&F: ground truth | prediction | error")
        if ctx.dataset is None:
            page.paragraph(f"Videos left out: {ctx.dataset_error}")
        else:
            dataset: DavisDataset = ctx.dataset
            for name in worst:
                src, mime = write_report_video(ctx, name, comparison_frames(ctx.out, dataset[name]))
                page.video(src, mime, f"{name}: J&F {100 * per_sequence[name]['J&F-Mean']:.1f}",
                           anchor=file_stem(name))

    if per_sequence:
        page.heading("Per-frame J and F (frames 1 .. T-2, as scored)")
        figures = []
        for name in per_sequence:
            scores = frame_scores(ctx, name)
            frames = list(range(1, 1 + len(next(iter(scores.values()))["J"])))
            series = {s: {f"object {k}": obj[s] for k, obj in scores.items()} for s in ("J", "F")}
            per_frame_curves(ctx.folder / "curves" / f"{file_stem(name)}.png", name, series, frames)
            figures.append((f"curves/{file_stem(name)}.png", name))
        page.figures(figures)

