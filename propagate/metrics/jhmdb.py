"""JHMDB keypoint PCK, as the CRW reference scorer computes it (docs/benchmarks.md, JHMDB).

Reference: ajabri/videowalk, code/eval/eval_pck.py. Rules, for predictions in image pixels:

* Per video, ground truth and prediction are (T, 15, 2) arrays of (x, y) image pixels,
  0-based (joint_positions.mat minus 1), joints in :data:`datasets.jhmdb.JHMDB_JOINTS` order.
* A joint is "not predicted" in a frame when its predicted x is negative (the scorer tests
  x only; write -1 to both). It is left out entirely: not in the box, not counted, not a miss.
* Normaliser of frame t: 0.6 x the diagonal of the axis-aligned box of the ground-truth
  positions of the joints predicted in frame t. Frame 0 (the given annotation) is skipped.
* Entry = |prediction - ground truth| / normaliser, for every predicted joint of every frame
  t >= 1 of every video. PCK@a of joint j = |entries of j <= a| / |entries of j|, pooled over
  all videos; the reported PCK@a is the mean over joints. Fractions here; papers print x 100.
* A zero normaliser makes its entries 0/0 or d/0: counted, never correct, as in the scorer.
* Departures: the scorer reads predictions on a fixed 40 x 40 grid (here any size, in image
  pixels); its box starts from max = -1, min = 1e6 (here the true min/max: identical unless
  every boxed joint lies below -1 on an axis); a joint without entries makes it divide by
  zero (here that joint is left out of the mean; an error if no joint has an entry).
"""
from __future__ import annotations

import numpy as np

from datasets.jhmdb import NUM_JOINTS

JHMDB_PCK_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
JHMDB_BOX_SCALE = 0.6


def jhmdb_normalised_distances(
    pred: np.ndarray, gt: np.ndarray, *, video: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distances of one video's joints and which of them are scored.

    Args:
        pred: (T, 15, 2) predicted (x, y) in image pixels; x < 0 = joint not predicted.
        gt:   (T, 15, 2) ground-truth (x, y) in image pixels, 0-based (integer values at
              pixel centres), joints in ``JHMDB_JOINTS`` order.
        video: name used in error messages only.

    Returns:
        dist:   (T, 15) float64, |pred - gt| / (0.6 x diagonal of the box of the
                ground-truth positions of the frame's predicted joints); NaN or inf where
                that normaliser is 0, NaN where the joint is not scored.
        scored: (T, 15) bool, True for a predicted joint in a frame t >= 1.
    """
    where = f" (video {video})" if video else ""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if gt.ndim != 3 or gt.shape[1:] != (NUM_JOINTS, 2) or pred.shape != gt.shape:
        raise ValueError(
            f"jhmdb_pck{where}: expected prediction and ground truth of the same (T, "
            f"{NUM_JOINTS}, 2) shape, got {pred.shape} and {gt.shape}"
        )
    predicted = ~(pred[..., 0] < 0)  # (T, 15); the scorer tests x only (a NaN x counts as predicted)
    box_min = np.min(np.where(predicted[..., None], gt, np.inf), axis=1)  # (T, 2)
    box_max = np.max(np.where(predicted[..., None], gt, -np.inf), axis=1)  # (T, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        normaliser = JHMDB_BOX_SCALE * np.sqrt(np.sum(np.square(box_max - box_min), axis=-1))  # (T,)
        distance = np.sqrt(np.sum(np.square(pred - gt), axis=-1))  # (T, 15)
        dist = distance / normaliser[:, None]
    scored = predicted.copy()
    scored[0] = False  # frame 0 carries the given annotation
    return np.where(scored, dist, np.nan), scored


def jhmdb_pck_per_joint(
    preds: list[np.ndarray], gts: list[np.ndarray], thresholds=JHMDB_PCK_THRESHOLDS
) -> dict[float, np.ndarray]:
    """PCK of each joint, pooled over all videos.

    Args:
        preds, gts: lists (one entry per video) of (T, 15, 2) (x, y) arrays, see
            :func:`jhmdb_normalised_distances`.
        thresholds: the a of PCK@a.

    Returns:
        {a: (15,) float64}: |scored entries of joint j with dist <= a| / |scored entries of
        joint j| over every frame t >= 1 of every video; NaN for a joint without entries.
    """
    if len(preds) != len(gts):
        raise ValueError(f"jhmdb_pck: {len(preds)} predicted videos but {len(gts)} ground-truth videos")
    if not gts:
        raise ValueError("jhmdb_pck: no videos")
    dists, scoreds = [], []
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        dist, scored = jhmdb_normalised_distances(pred, gt, video=str(index))
        dists.append(dist)
        scoreds.append(scored)
    dist = np.concatenate(dists)  # (sum T, 15)
    scored = np.concatenate(scoreds)  # (sum T, 15)
    entries = scored.sum(axis=0)  # (15,)
    per_joint = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in thresholds:
            correct = np.sum(scored & (dist <= a), axis=0)  # NaN compares False
            per_joint[a] = correct / entries
    return per_joint


def jhmdb_pck(
    preds: list[np.ndarray], gts: list[np.ndarray], thresholds=JHMDB_PCK_THRESHOLDS
) -> dict[float, float]:
    """JHMDB PCK@a for each a: the mean over joints of :func:`jhmdb_pck_per_joint`.

    Args:
        preds: list over videos of (T, 15, 2) predicted (x, y) image pixels; x < 0 = not
            predicted (left out, not a miss).
        gts:   list over videos of (T, 15, 2) ground-truth (x, y), 0-based image pixels.
        thresholds: the a of PCK@a (default 0.1 .. 0.5).

    Returns:
        {a: PCK@a as a fraction in [0, 1]}; joints without any entry are left out of the mean.

    Raises:
        ValueError: shapes differ, the lists differ in length, or no joint has an entry.
    """
    per_joint = jhmdb_pck_per_joint(preds, gts, thresholds)
    result = {}
    for a, values in per_joint.items():
        if np.all(np.isnan(values)):
            raise ValueError("jhmdb_pck: no predicted joint in any frame after frame 0; nothing to score")
        result[a] = float(np.nanmean(values))
    return result
