"""TAP-Vid point-tracking metrics, identical to the reference scorer (docs/benchmarks.md, TAP-Vid).

Reference: google-deepmind/tapnet, tapnet/tapvid/evaluation_datasets.py,
``compute_tapvid_metrics`` (per-video mode). Rules:

* Inputs are in pixel units of the evaluation frames (256 x 256 in the standard protocol;
  another size is its own category). (0, 0) is the top-left corner of the top-left pixel.
  Queries are (t, y, x), tracks (x, y). B videos, N queries (tracks) per video, T frames.
* Scored frames of a query of frame q = round(t) (half to even), :func:`tapvid_scored_frames`:
  "first" mode, the frames q+1 .. T-1; "strided" mode, every frame but q.
* Occlusion accuracy OA = |scored & (pred_occluded == gt_occluded)| / |scored|.
* For d in 1, 2, 4, 8, 16 pixels: within_d = |pred - gt|^2 < d^2 (strict), whatever the
  occlusion flags; visible = not gt_occluded.
      pts_within_d = |scored & within_d & visible| / |scored & visible|
      jaccard_d    = TP / (|scored & visible| + FP), TP = |scored & within_d & visible &
                     predicted visible|, FP = |scored & predicted visible & (not visible
                     or not within_d)|.
  AJ (average_jaccard) = mean of the five jaccard_d; <delta^x_avg>
  (average_pts_within_thresh) = mean of the five pts_within_d.
* Counts are summed over the queries and scored frames of one video: one number per video.
  The benchmark number is the plain mean over videos (:func:`tapvid_summary`). A zero
  denominator gives NaN, as in the reference, and a NaN video makes the mean NaN.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from datasets.tapvid import QUERY_MODES

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels
TAPVID_KEYS = (
    ("occlusion_accuracy",)
    + tuple(f"pts_within_{d}" for d in TAPVID_THRESHOLDS)
    + tuple(f"jaccard_{d}" for d in TAPVID_THRESHOLDS)
    + ("average_jaccard", "average_pts_within_thresh")
)


def tapvid_scored_frames(query_points: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """Which (query, frame) pairs are scored, from the query frames.

    Args:
        query_points: (B, N, 3) queries (t, y, x); q = round(t) (half to even) is the query
            frame, in [0, T).
        num_frames: T.
        query_mode: "first": frames q+1 .. T-1 (the query sits at the track's first visible
            point, so nothing before it is scored); "strided": every frame but q.

    Returns:
        (B, N, T) bool, True = scored. The query frame itself is never scored.
    """
    if query_mode not in QUERY_MODES:
        raise ValueError(f"unknown TAP-Vid query mode {query_mode!r}; expected one of {QUERY_MODES}")
    query_points = np.asarray(query_points)
    if query_points.ndim != 3 or query_points.shape[-1] != 3:
        raise ValueError(f"tapvid: query_points must be (B, N, 3) (t, y, x), got shape {query_points.shape}")
    query_frame = np.round(query_points[..., 0]).astype(np.int64)  # (B, N)
    if query_frame.size and (query_frame.min() < 0 or query_frame.max() >= num_frames):
        raise ValueError(
            f"tapvid: query frames must lie in [0, {num_frames}), got "
            f"{query_frame.min()} .. {query_frame.max()}"
        )
    frames = np.arange(num_frames)  # (T,)
    if query_mode == "first":
        return frames[None, None, :] > query_frame[..., None]
    return frames[None, None, :] != query_frame[..., None]


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
) -> dict[str, np.ndarray]:
    """TAP-Vid occlusion accuracy, pts_within_d, jaccard_d, AJ and <delta^x_avg> per video.

    Arguments in the reference scorer's order; pixel units of the evaluation frames.

    Args:
        query_points:  (B, N, 3) float, (t, y, x) of each query; only t is used (its frame).
        gt_occluded:   (B, N, T) bool, True = occluded in the ground truth (any array is
                       cast to bool: nonzero = occluded; likewise pred_occluded).
        gt_tracks:     (B, N, T, 2) float, ground-truth (x, y); (0, 0) is the top-left
                       corner of the top-left pixel.
        pred_occluded: (B, N, T) bool, True = predicted occluded.
        pred_tracks:   (B, N, T, 2) float, predicted (x, y), same convention.
        query_mode:    "first" or "strided": which frames are scored
                       (:func:`tapvid_scored_frames`).

    Returns:
        {key: (B,) float64} for every key of ``TAPVID_KEYS``, one value per video, each
        count taken over its N queries and their scored frames; visible = not gt_occluded,
        within_d = |pred - gt|^2 < d^2, d in 1, 2, 4, 8, 16 pixels:

            occlusion_accuracy        = |pred_occluded == gt_occluded| / |scored|
            pts_within_d              = |visible & within_d| / |visible|
            jaccard_d                 = TP_d / (|visible| + FP_d), TP_d = |visible &
                                        within_d & predicted visible|, FP_d = |predicted
                                        visible & (not visible or not within_d)|
            average_jaccard (AJ)      = mean over d of jaccard_d
            average_pts_within_thresh = mean over d of pts_within_d (<delta^x_avg>)

        Fractions in [0, 1]; NaN where a denominator is 0 (no scored frame, or no visible
        scored point), as in the reference.
    """
    gt_occluded = np.asarray(gt_occluded).astype(bool)
    pred_occluded = np.asarray(pred_occluded).astype(bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
    _check_shapes(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks)
    scored = tapvid_scored_frames(query_points, gt_occluded.shape[-1], query_mode)  # (B, N, T)
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)  # (B, N, T)

    def count(mask: np.ndarray) -> np.ndarray:  # (B, N, T) -> (B,) over scored pairs
        return np.sum(mask & scored, axis=(1, 2))

    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = {"occlusion_accuracy": count(pred_occluded == gt_occluded) / count(np.ones_like(scored))}
        metrics.update(_position_metrics(sq_dist, ~gt_occluded, ~pred_occluded, count))
    return {key: metrics[key] for key in TAPVID_KEYS}


def _check_shapes(query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks) -> None:
    """An error naming the first array whose shape disagrees with gt_occluded's (B, N, T)."""
    if gt_occluded.ndim != 3:
        raise ValueError(f"tapvid: gt_occluded must be (B, N, T), got shape {gt_occluded.shape}")
    batch, num_points, num_frames = gt_occluded.shape
    expected = {
        "pred_occluded": (pred_occluded.shape, (batch, num_points, num_frames)),
        "gt_tracks": (gt_tracks.shape, (batch, num_points, num_frames, 2)),
        "pred_tracks": (pred_tracks.shape, (batch, num_points, num_frames, 2)),
        "query_points": (np.shape(query_points), (batch, num_points, 3)),
    }
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise ValueError(f"tapvid: {name} must have shape {want} (from gt_occluded), got {tuple(shape)}")


def _position_metrics(
    sq_dist: np.ndarray,
    visible: np.ndarray,
    pred_visible: np.ndarray,
    count: Callable[[np.ndarray], np.ndarray],
) -> dict[str, np.ndarray]:
    """pts_within_d and jaccard_d for each d, and their means AJ and <delta^x_avg>.

    Args:
        sq_dist: (B, N, T) squared distance |pred - gt|^2 in pixels^2.
        visible, pred_visible: (B, N, T) bool, not gt_occluded and not pred_occluded.
        count: (B, N, T) mask -> (B,) number of its scored (query, frame) pairs.

    Returns:
        {key: (B,) float64}; NaN where |scored & visible| (+ FP) is 0.
    """
    metrics: dict[str, np.ndarray] = {}
    num_visible = count(visible)
    pts_within, jaccard = [], []
    for d in TAPVID_THRESHOLDS:
        within = sq_dist < np.square(d)
        correct = within & visible
        pts_within.append(count(correct) / num_visible)
        true_pos = count(correct & pred_visible)
        false_pos = count(pred_visible & (~visible | ~within))
        jaccard.append(true_pos / (num_visible + false_pos))
        metrics[f"pts_within_{d}"] = pts_within[-1]
        metrics[f"jaccard_{d}"] = jaccard[-1]
    metrics["average_jaccard"] = np.mean(np.stack(jaccard, axis=1), axis=1)
    metrics["average_pts_within_thresh"] = np.mean(np.stack(pts_within, axis=1), axis=1)
    return metrics


def tapvid_summary(results_per_video: list[dict]) -> dict[str, float]:
    """Benchmark numbers: the plain mean over videos of :func:`tapvid_metrics` results.

    Args:
        results_per_video: :func:`tapvid_metrics` outputs (each key a (B,) array, or a
            scalar for one video); the arrays of each key are concatenated over the list,
            so every video weighs the same whatever batch it came in.

    Returns:
        {key: float} for every key of ``TAPVID_KEYS`` (NaN if any video's value is NaN).
    """
    if not results_per_video:
        raise ValueError("tapvid_summary: no videos to average")
    summary = {}
    for key in TAPVID_KEYS:
        values = np.concatenate(
            [np.atleast_1d(np.asarray(result[key], dtype=np.float64)) for result in results_per_video]
        )
        summary[key] = float(np.mean(values))
    return summary
