"""Benchmark metrics as pure numpy functions, each documented like the benchmark's own scorer.

Sections: DAVIS-2017 J&F (below), then TAP-Vid point tracking, JHMDB PCK and VIP mIoU,
each with its own rules.

DAVIS-2017 semi-supervised J&F (PROTOCOLS.md section 5)
=======================================================
Numerically identical to the official scorer (davisvideochallenge/davis2017-evaluation,
``--task semi-supervised``), except for sequences of more than 256 scored frames, where
the scorer's decay bins overflow and these functions use the intended bins
(:func:`db_statistics`):

* Ground truth is an id map per frame: 0 = background, 1..N = objects, 255 = void.
  In the semi-supervised task the scorer passes *no* void mask: 255 is simply set to 0,
  so foreground predicted on void pixels counts as a false positive. N is the maximum id
  of frame 0 (after that replacement); ids > N in later frames are ignored.
* Only frames 1 .. T-2 are scored: the first frame (the given annotation) and the last
  frame are both excluded. Predictions of those two frames are never read.
* The prediction's object count is its maximum id over the scored frames. Fewer objects
  than N: the missing objects are empty masks (zero padding). More: an error.
* J (region similarity) per object and frame: |G & P| / |G | P|, and 1 when the union is
  empty.
* F (boundary accuracy) per object and frame: see :func:`db_boundary_f`.
* Per object, for J and for F (:func:`db_statistics`): mean, recall = fraction of frames
  with score > 0.5, decay = mean of the first of 4 temporal bins minus mean of the last.
* Global numbers average over *objects* (not sequences): J-Mean = mean over all objects
  of their J mean, likewise every other number; J&F-Mean = (J-Mean + F-Mean) / 2.

Arrays are indexed ``[t, y, x]``: T frames of H rows and W columns. Scores are in [0, 1].
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# ------------------------------------------------------------------ DAVIS-2017 J&F

DAVIS_VOID_ID = 255
DAVIS_BOUNDARY_TH = 0.008  # dilation radius = ceil(0.008 * image diagonal) pixels
DAVIS_RECALL_THRESHOLD = 0.5  # a frame is "recalled" when its score is strictly above
DAVIS_DECAY_BINS = 4
DAVIS_OBJECT_STATS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
DAVIS_SUMMARY_KEYS = ("J&F-Mean",) + DAVIS_OBJECT_STATS


def db_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity J (Jaccard index) of binary masks, frame by frame.

    Args:
        gt:   (T, H, W) (or (H, W)) ground-truth mask of one object; cast to bool.
        pred: same shape, predicted mask of the same object; cast to bool.

    Returns:
        (T,) float64 (or a 0-d array for 2-D input):
        J_t = |gt_t & pred_t| / |gt_t | pred_t|, and J_t = 1 where the union is empty
        (object absent and correctly not predicted).
    """
    gt, pred = _as_bool_pair(gt, pred, "db_iou")
    inter = np.sum(gt & pred, axis=(-2, -1))  # (T,)
    union = np.sum(gt | pred, axis=(-2, -1))  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.asarray(inter / union, dtype=np.float64)
    j[union == 0] = 1.0
    return j


def davis_boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a binary mask (the scorer's ``_seg2bmap``).

    A pixel (y, x) is a boundary pixel when its value differs from its east (y, x+1),
    south (y+1, x) or south-east (y+1, x+1) neighbour, so boundaries sit half a pixel
    towards the origin from the true contour. At the image border only neighbours that
    exist are compared: the last row compares with east only, the last column with south
    only, and the bottom-right pixel is never a boundary. Hence a mask that fills the
    whole image has no boundary at all.

    Args:
        mask: (..., H, W), cast to bool.

    Returns:
        (..., H, W) bool.
    """
    seg = np.asarray(mask).astype(bool)
    if seg.ndim < 2:
        raise ValueError(f"davis_boundary_map: expected (..., H, W), got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    boundary[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    boundary[..., -1, -1] = False
    return boundary


def davis_disk(radius: int) -> np.ndarray:
    """Disk structuring element, as ``skimage.morphology.disk(radius)`` builds it.

    Returns a (2r+1, 2r+1) uint8 array with 1 where dy^2 + dx^2 <= r^2 for the integer
    offsets dy, dx in [-r, r] from the centre.
    """
    if radius < 0 or int(radius) != radius:
        raise ValueError(f"davis_disk: radius must be a non-negative integer, got {radius}")
    r = int(radius)
    offsets = np.arange(-r, r + 1)
    dx, dy = np.meshgrid(offsets, offsets)
    return (dx**2 + dy**2 <= r**2).astype(np.uint8)


def davis_boundary_radius(height: int, width: int, bound_th: float = DAVIS_BOUNDARY_TH) -> int:
    """Matching tolerance in pixels: ceil(bound_th * sqrt(H^2 + W^2)) for bound_th < 1.

    A ``bound_th >= 1`` is taken as the radius in pixels itself (as the scorer does); it
    must then be an integer. At 854x480 the default gives 8 pixels.
    """
    if bound_th >= 1:
        if int(bound_th) != bound_th:
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be an integer, got {bound_th}")
        return int(bound_th)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be positive, got {bound_th}")
    return int(math.ceil(bound_th * math.sqrt(height * height + width * width)))


def db_boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = DAVIS_BOUNDARY_TH) -> np.ndarray:
    """Boundary accuracy F of binary masks, frame by frame.

    Per frame: B_g, B_p = :func:`davis_boundary_map` of gt and pred (no thinning); each is
    dilated with ``davis_disk(r)``, r = :func:`davis_boundary_radius` (H, W, bound_th).

        precision P = |B_p & dilate(B_g)| / |B_p|   (predicted boundary near a true one)
        recall    R = |B_g & dilate(B_p)| / |B_g|   (true boundary near a predicted one)
        F = 2 P R / (P + R), and F = 0 when P + R = 0.

    Empty boundaries: |B_p| = 0 < |B_g| gives P = 1, R = 0 (F = 0); |B_g| = 0 < |B_p|
    gives P = 0, R = 1 (F = 0); both empty gives P = R = 1 (F = 1).

    Args:
        gt:   (T, H, W) (or (H, W)) ground-truth mask of one object; cast to bool.
        pred: same shape, predicted mask of the same object; cast to bool.
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in pixels (>= 1).

    Returns:
        (T,) float64 (or a 0-d array for 2-D input).
    """
    gt, pred = _as_bool_pair(gt, pred, "db_boundary_f")
    squeeze = gt.ndim == 2
    if gt.ndim not in (2, 3):
        raise ValueError(f"db_boundary_f: expected (T, H, W) or (H, W), got shape {gt.shape}")
    gt_b = davis_boundary_map(gt.reshape(-1, *gt.shape[-2:]))  # (T, H, W)
    pred_b = davis_boundary_map(pred.reshape(-1, *pred.shape[-2:]))  # (T, H, W)
    kernel = davis_disk(davis_boundary_radius(gt.shape[-2], gt.shape[-1], bound_th))
    f = np.zeros(gt_b.shape[0], dtype=np.float64)
    for t in range(gt_b.shape[0]):
        n_pred = int(pred_b[t].sum())
        n_gt = int(gt_b[t].sum())
        if n_pred == 0 and n_gt > 0:
            precision, recall = 1.0, 0.0
        elif n_pred > 0 and n_gt == 0:
            precision, recall = 0.0, 1.0
        elif n_pred == 0 and n_gt == 0:
            precision, recall = 1.0, 1.0
        else:
            # cv2.dilate pads with the neutral value: nothing is dilated in from outside.
            gt_dil = cv2.dilate(gt_b[t].astype(np.uint8), kernel).astype(bool)
            pred_dil = cv2.dilate(pred_b[t].astype(np.uint8), kernel).astype(bool)
            precision = int(np.sum(pred_b[t] & gt_dil)) / float(n_pred)
            recall = int(np.sum(gt_b[t] & pred_dil)) / float(n_gt)
        f[t] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f.reshape(()) if squeeze else f


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores (the scorer's ``db_statistics``).

    Args:
        per_frame: (T,) scores of the scored frames, in time order; NaN = missing.

    Returns:
        mean   = nanmean(s);
        recall = fraction of the T frames with s > 0.5 (strictly; NaN counts as not
                 recalled but stays in the denominator);
        decay  = nanmean(s[bin 0]) - nanmean(s[bin 3]) over 4 bins with edges
                 e_i = round(linspace(1, T, 5)_i) - 1 (ties rounded up), bin i covering
                 frames e_i .. e_{i+1} inclusive, so neighbouring bins share their edge
                 frame. E.g. T = 10: edges 0, 2, 5, 7, 9; decay = mean(s[0:3]) - mean(s[7:10]).

    The official code stores the edges as uint8, which wraps around for sequences of more
    than 256 scored frames; here they are plain integers (the intended behaviour; the two
    agree for every sequence of up to 256 scored frames, i.e. all of DAVIS).
    """
    s = np.asarray(per_frame, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"db_statistics: expected a (T,) array, got shape {s.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(s)
        recall = np.mean(s > DAVIS_RECALL_THRESHOLD)
        edges = (np.round(np.linspace(1, len(s), DAVIS_DECAY_BINS + 1) + 1e-10) - 1).astype(np.int64)
        bins = [s[edges[i] : edges[i + 1] + 1] for i in range(DAVIS_DECAY_BINS)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[-1])
    return float(mean), float(recall), float(decay)


def davis_sequence_scores(gt_ids: np.ndarray, pred_ids: np.ndarray, *, sequence: str = "") -> dict:
    """J and F of every object of one sequence, with the scorer's frame and object rules.

    Args:
        gt_ids:   (T, H, W) integer id map of ALL frames (frame 0 included); 0 = background,
                  1..N = objects, 255 = void. N = max id of frame 0 after void -> 0.
        pred_ids: (T, H, W) predicted id map of the same frames. Frames 0 and T-1 are not
                  scored and their content is ignored (any values may be there).
        sequence: name used in error messages only.

    Returns:
        {"objects": {k: {"J": (T-2,) per-frame J, "F": (T-2,) per-frame F,
                         "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
                     for k = 1..N},
         "num_objects": N, "num_scored_frames": T - 2}

    Raises:
        ValueError: shapes differ, T < 3, or the prediction's maximum id over frames
        1..T-2 exceeds N (the official scorer stops there too). Void 255 in a prediction
        is such an id.
    """
    where = f" (sequence {sequence!r})" if sequence else ""
    gt = np.asarray(gt_ids)
    pred = np.asarray(pred_ids)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(
            f"davis_sequence_scores{where}: expected gt and pred of the same (T, H, W) shape, "
            f"got {gt.shape} and {pred.shape}"
        )
    if gt.shape[0] < 3:
        raise ValueError(
            f"davis_sequence_scores{where}: {gt.shape[0]} frames; DAVIS scores frames 1..T-2, "
            "so at least 3 are needed"
        )
    gt = np.where(gt == DAVIS_VOID_ID, 0, gt)  # semi-supervised task: void is background
    num_objects = int(gt[0].max())
    gt_scored, pred_scored = gt[1:-1], pred[1:-1]  # (T-2, H, W): first and last frame excluded
    num_pred_objects = int(pred_scored.max())
    if num_pred_objects > num_objects:
        raise ValueError(
            f"davis_sequence_scores{where}: the prediction has id {num_pred_objects} but the "
            f"first ground-truth frame has only {num_objects} object(s)"
        )
    objects = {}
    for k in range(1, num_objects + 1):
        gt_k = gt_scored == k  # (T-2, H, W)
        pred_k = pred_scored == k  # (T-2, H, W); all False for an object never predicted
        j = db_iou(gt_k, pred_k)
        f = db_boundary_f(gt_k, pred_k)
        j_mean, j_recall, j_decay = db_statistics(j)
        f_mean, f_recall, f_decay = db_statistics(f)
        objects[k] = {
            "J": j, "F": f,
            "J-Mean": j_mean, "J-Recall": j_recall, "J-Decay": j_decay,
            "F-Mean": f_mean, "F-Recall": f_recall, "F-Decay": f_decay,
        }
    return {"objects": objects, "num_objects": num_objects, "num_scored_frames": gt.shape[0] - 2}


def davis_summary(sequence_scores: dict[str, dict]) -> dict:
    """Benchmark numbers from :func:`davis_sequence_scores` outputs, averaged over objects.

    Args:
        sequence_scores: {sequence name: davis_sequence_scores(...) result}.

    Returns:
        {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay": float,
         "num_objects": int,
         "per_object": {"<seq>_<k>": {the six object statistics, "J&F-Mean"}},
         "per_sequence": {seq: {the seven numbers averaged over its objects, "num_objects"}}}

        Every global statistic is the plain mean over all objects of all sequences (a
        sequence with 3 objects weighs 3 times one with 1 object); J&F-Mean =
        (J-Mean + F-Mean) / 2. Sequences without objects add nothing and are left out of
        "per_sequence".
    """
    per_object: dict[str, dict] = {}
    per_sequence: dict[str, dict] = {}
    for seq, scores in sequence_scores.items():
        rows = []
        for k, obj in scores["objects"].items():
            row = {name: float(obj[name]) for name in DAVIS_OBJECT_STATS}
            row["J&F-Mean"] = (row["J-Mean"] + row["F-Mean"]) / 2
            per_object[f"{seq}_{k}"] = row
            rows.append(row)
        if rows:
            per_sequence[seq] = _davis_average(rows)
    if not per_object:
        raise ValueError("davis_summary: no objects to average (every sequence has an empty first frame)")
    summary = _davis_average(list(per_object.values()))
    summary["per_object"] = per_object
    summary["per_sequence"] = per_sequence
    return summary


def _davis_average(rows: list[dict]) -> dict:
    """Mean of each object statistic over ``rows``; J&F-Mean = (J-Mean + F-Mean) / 2."""
    out = {name: float(np.mean([row[name] for row in rows])) for name in DAVIS_OBJECT_STATS}
    out = {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2.0, **out}
    out["num_objects"] = len(rows)
    return out


def read_davis_png(path: str | Path) -> np.ndarray:
    """(H, W) id map of an indexed (palette) or single-channel PNG, as ``np.array(Image.open(p))``.

    Indexed PNGs give their palette indices (the ids), not colours. An RGB file is refused:
    its colours are not ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as image:
        ids = np.array(image)
    if ids.ndim != 2:
        raise ValueError(
            f"{path}: expected an indexed (palette) or single-channel PNG of object ids, "
            f"got an array of shape {ids.shape} (an RGB image?)"
        )
    return ids


def score_davis_folder(
    davis_root: str | Path,
    results_root: str | Path,
    split: str = "val",
    resolution: str = "480p",
    sequences: list[str] | None = None,
) -> dict:
    """Score a folder of predictions exactly as the official semi-supervised scorer reads it.

    Reads the sequence names from ``<davis_root>/ImageSets/2017/<split>.txt`` (or takes
    ``sequences``), the ground truth ``<davis_root>/Annotations/<resolution>/<seq>/*.png``
    (all frames, sorted by name) and the predictions ``<results_root>/<seq>/<frame>.png``
    for the scored frames 1..T-2 only (frame names as in the ground truth, e.g. 00001).
    Predictions must be indexed PNGs of ids (0 = background, k = object k of frame 0) at
    the ground truth's size. Unlike the scorer, JPEGImages is not needed: the frames are
    those of the annotation folder (in DAVIS train/val every frame is annotated).

    Returns:
        :func:`davis_summary` of all sequences.

    Raises:
        FileNotFoundError naming the missing list, folder or prediction file;
        ValueError naming the file whose shape or ids are wrong.
    """
    davis_root, results_root = Path(davis_root), Path(results_root)
    if sequences is None:
        list_file = davis_root / "ImageSets" / "2017" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"DAVIS sequence list not found: {list_file}")
        sequences = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    scores = {}
    for seq in sequences:
        gt_dir = davis_root / "Annotations" / resolution / seq
        gt_files = sorted(gt_dir.glob("*.png"))
        if not gt_files:
            raise FileNotFoundError(f"no ground-truth PNGs in {gt_dir}")
        if len(gt_files) < 3:
            raise ValueError(
                f"{gt_dir}: {len(gt_files)} frame(s); DAVIS scores frames 1..T-2, so at least 3 are needed"
            )
        gt_ids = _read_davis_stack(gt_files)  # (T, H, W)
        unscored = np.zeros(gt_ids.shape[1:], dtype=np.uint8)  # frames 0 and T-1: never read
        pred_frames = [unscored]
        for gt_file in gt_files[1:-1]:
            frame = "".join(gt_file.name.split(".")[:-1])  # the scorer's frame id
            pred_file = results_root / seq / f"{frame}.png"
            if not pred_file.is_file():
                raise FileNotFoundError(
                    f"prediction missing for sequence {seq!r}, frame {frame}: {pred_file}"
                )
            pred = read_davis_png(pred_file)
            if pred.shape != gt_ids.shape[1:]:
                raise ValueError(
                    f"{pred_file}: size {pred.shape} differs from the ground truth's {gt_ids.shape[1:]}"
                )
            pred_frames.append(pred)
        pred_frames.append(unscored)
        pred_ids = np.stack(pred_frames)  # (T, H, W)
        try:
            scores[seq] = davis_sequence_scores(gt_ids, pred_ids, sequence=seq)
        except ValueError as err:
            raise ValueError(f"{err}; predictions in {results_root / seq}") from None
    return davis_summary(scores)


def _read_davis_stack(files: list[Path]) -> np.ndarray:
    """(T, H, W) stack of the id maps in ``files``; every file must have the first one's size."""
    frames = [read_davis_png(files[0])]
    for path in files[1:]:
        ids = read_davis_png(path)
        if ids.shape != frames[0].shape:
            raise ValueError(f"{path}: size {ids.shape} differs from {files[0]}'s {frames[0].shape}")
        frames.append(ids)
    return np.stack(frames)


def _as_bool_pair(gt: np.ndarray, pred: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(
            f"{caller}: expected gt and pred masks of the same (T, H, W) shape, "
            f"got {gt.shape} and {pred.shape}"
        )
    return gt, pred


# ------------------------------------------------------------------ TAP-Vid point tracking
#
# TAP-Vid metrics (PROTOCOLS.md section 8), numerically identical to the reference scorer
# (google-deepmind/tapnet, tapnet/tapvid/evaluation_datasets.py, compute_tapvid_metrics,
# per-video mode):
#
# * Inputs are in pixel units of the evaluation frames (256 x 256 in the standard
#   protocol; a higher-resolution run is its own category). (0, 0) is the top-left corner
#   of the top-left pixel. Queries are (t, y, x), tracks (x, y). B videos, N queries
#   (tracks) per video, T frames.
# * Scored frames of a query with frame q = round(t) (numpy rounding, half to even):
#   "first" mode: the frames after it, q+1 .. T-1 (the points before the first visible one
#   are known to be occluded); "strided" mode: every frame but q itself.
# * Occlusion accuracy = |scored & (pred_occluded == gt_occluded)| / |scored|.
# * For d in 1, 2, 4, 8, 16 pixels: within_d = |pred - gt|^2 < d^2 (strict), whatever the
#   occlusion flags say; visible = not gt_occluded.
#       pts_within_d = |scored & within_d & visible| / |scored & visible|
#       jaccard_d    = TP / (|scored & visible| + FP), with
#           TP = |scored & within_d & visible & predicted visible|,
#           FP = |scored & predicted visible & (not visible or not within_d)|.
#   average_jaccard (AJ) = mean of the five jaccard_d; average_pts_within_thresh
#   (<delta^x_avg>) = mean of the five pts_within_d.
# * Every count is summed over all queries and scored frames of one video, giving one
#   number per video; the benchmark number is the plain mean over videos
#   (:func:`tapvid_summary`). A zero denominator (no scored frame, or no visible scored
#   point) gives NaN, as in the reference, and a NaN video makes the mean NaN.

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels
TAPVID_QUERY_MODES = ("first", "strided")
TAPVID_KEYS = (
    ("occlusion_accuracy",)
    + tuple(f"pts_within_{d}" for d in TAPVID_THRESHOLDS)
    + tuple(f"jaccard_{d}" for d in TAPVID_THRESHOLDS)
    + ("average_jaccard", "average_pts_within_thresh")
)


def tapvid_scored_frames(query_points: np.ndarray, num_frames: int, query_mode: str) -> np.ndarray:
    """Which (query, frame) pairs are scored, from the query frames.

    Args:
        query_points: (B, N, 3) queries (t, y, x); t is rounded half to even to a frame index.
        num_frames: T.
        query_mode: "first" (frames after the query frame) or "strided" (all frames but the
            query frame).

    Returns:
        (B, N, T) bool.
    """
    if query_mode not in TAPVID_QUERY_MODES:
        raise ValueError(f"unknown TAP-Vid query mode {query_mode!r}; expected one of {TAPVID_QUERY_MODES}")
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
        query_points:  (B, N, 3) float, (t, y, x) of each query.
        gt_occluded:   (B, N, T) bool, True = occluded in the ground truth (any array is
                       cast to bool: nonzero = occluded; likewise pred_occluded).
        gt_tracks:     (B, N, T, 2) float, ground-truth (x, y).
        pred_occluded: (B, N, T) bool, True = predicted occluded.
        pred_tracks:   (B, N, T, 2) float, predicted (x, y).
        query_mode:    "first" or "strided" (which frames are scored, see the section notes).

    Returns:
        {key: (B,) float64} for every key of ``TAPVID_KEYS``: occlusion_accuracy,
        pts_within_{1,2,4,8,16}, jaccard_{1,2,4,8,16}, average_jaccard,
        average_pts_within_thresh. Fractions in [0, 1]; NaN where a denominator is 0.
    """
    gt_occluded = np.asarray(gt_occluded).astype(bool)
    pred_occluded = np.asarray(pred_occluded).astype(bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float64)
    pred_tracks = np.asarray(pred_tracks, dtype=np.float64)
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
    scored = tapvid_scored_frames(query_points, num_frames, query_mode)  # (B, N, T)
    visible = ~gt_occluded
    pred_visible = ~pred_occluded
    sq_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1)  # (B, N, T)

    def count(mask: np.ndarray) -> np.ndarray:  # (B, N, T) -> (B,) over scored pairs
        return np.sum(mask & scored, axis=(1, 2))

    metrics: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics["occlusion_accuracy"] = count(pred_occluded == gt_occluded) / count(np.ones_like(scored))
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
    return {key: metrics[key] for key in TAPVID_KEYS}


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


# ------------------------------------------------------------------ JHMDB PCK
#
# JHMDB keypoint PCK (PROTOCOLS.md section 6), as the CRW reference scorer computes it
# (ajabri/videowalk, code/eval/eval_pck.py), for predictions already in image pixels:
#
# * Per video, ground truth and prediction are (T, 15, 2) arrays of (x, y) image pixels,
#   0-based (the ground truth of joint_positions.mat minus 1), joints in JHMDB order.
# * A joint is "not predicted" in a frame when its predicted x is negative (the scorer
#   tests x only; write -1 to both coordinates). Such a joint is left out entirely: it is
#   neither in the frame's box nor in any count; it is not a miss.
# * Normaliser of frame t: 0.6 x the diagonal of the axis-aligned bounding box of the
#   ground-truth positions of the joints predicted in frame t.
# * Frame 0 (the given annotation) is skipped in every video.
# * Entry = distance(prediction, ground truth) / normaliser, for every predicted joint of
#   every frame t >= 1 of every video. PCK@a of joint j = |entries of j with value <= a|
#   / |entries of j|, pooled over all videos (not per video); the reported PCK@a is the
#   mean over the 15 joints (not over all entries). Fractions here; papers print x 100.
# * A zero normaliser (one predicted joint in the frame, or all at one ground-truth point)
#   makes its entries 0/0 or d/0: they count in the denominator and never as correct, as in
#   the scorer.
# * The scorer reads predictions on a hard-coded 40 x 40 grid and rescales them by the
#   image size; here the caller passes image pixels, for any grid or input size.
# * Scorer bug not reproduced: its box starts from max = -1 and min = 1e6, so a box whose
#   joints all have ground truth below -1 (outside the image) on an axis gets max = -1 on
#   that axis. Here the box is the true min/max of those joints (identical otherwise).
# * A joint with no entry at all makes the scorer divide by zero; here that joint is left
#   out of the mean over joints (an error if no joint has an entry).

JHMDB_NUM_JOINTS = 15
JHMDB_JOINTS = (
    "neck", "belly", "face", "right shoulder", "left shoulder", "right hip", "left hip",
    "right elbow", "left elbow", "right knee", "left knee", "right wrist", "left wrist",
    "right ankle", "left ankle",
)
JHMDB_PCK_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
JHMDB_BOX_SCALE = 0.6


def jhmdb_normalised_distances(
    pred: np.ndarray, gt: np.ndarray, *, video: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distances of one video's joints and which of them are scored.

    Args:
        pred: (T, 15, 2) predicted (x, y) in image pixels; x < 0 = joint not predicted.
        gt:   (T, 15, 2) ground-truth (x, y) in image pixels, 0-based.
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
    if gt.ndim != 3 or gt.shape[1:] != (JHMDB_NUM_JOINTS, 2) or pred.shape != gt.shape:
        raise ValueError(
            f"jhmdb_pck{where}: expected prediction and ground truth of the same (T, "
            f"{JHMDB_NUM_JOINTS}, 2) shape, got {pred.shape} and {gt.shape}"
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


# ------------------------------------------------------------------ VIP mIoU
#
# VIP human-parsing mIoU (PROTOCOLS.md section 7), as the CRW reference scorer computes it
# (ajabri/videowalk, code/eval/eval_vip.py):
#
# * Per frame, a ground-truth and a predicted (H, W) map of class ids 0..19 (0 =
#   background). The prediction must have the ground truth's size: the caller resizes it
#   with :func:`resize_nearest` (the pixel choice of PIL's NEAREST, which the scorer uses).
#   An antialiased or bilinear resize mixes neighbouring ids into ids of other classes, a
#   known bug of one reference pipeline.
# * One confusion matrix C (rows = ground truth, columns = prediction) is accumulated
#   over every pixel of every frame of every video; IoUs are computed once from it (not per
#   frame or per video and then averaged).
# * Ground-truth ids outside [0, num_classes) (e.g. 255) are ignored: the pixel adds
#   nothing to C, whatever was predicted there (the scorer's rule). Predicted ids outside
#   [0, num_classes) are an error here (the scorer would file them under a wrong class).
# * IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c]); a class absent from both
#   ground truth and prediction has 0/0 = NaN and is left out of the mean; a class only
#   predicted has IoU 0 and counts. mIoU = nanmean over the classes.

VIP_NUM_CLASSES = 20
VIP_CLASSES = (
    "background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks",
    "pants", "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm",
    "right-leg", "left-leg", "right-shoe", "left-shoe",
)


def resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map, choosing the same pixels as PIL's NEAREST.

    Output pixel (i, j) takes the input pixel (floor(y_i), floor(x_j)) with
    x_j = (W_in / W_out) / 2 + j * (W_in / W_out) accumulated in float64 step by step
    (so the choice is bit-for-bit PIL's ``Image.resize(..., Image.NEAREST)``, whose running
    sum sometimes falls just below an integer), likewise y_i. Ids are copied, never mixed.

    Args:
        ids: (H, W) or (T, H, W) integer map (any dtype; values are copied).
        size: (height, width) of the output (numpy order, not PIL's (width, height)).

    Returns:
        (H_out, W_out) or (T, H_out, W_out) array of the input's dtype.
    """
    ids = np.asarray(ids)
    if ids.ndim not in (2, 3):
        raise ValueError(f"resize_nearest: expected an (H, W) or (T, H, W) id map, got shape {ids.shape}")
    out_h, out_w = (int(s) for s in size)
    if out_h < 1 or out_w < 1 or 0 in ids.shape[-2:]:
        raise ValueError(f"resize_nearest: cannot resize {ids.shape[-2:]} to {(out_h, out_w)}")
    rows = _nearest_source_index(ids.shape[-2], out_h)
    cols = _nearest_source_index(ids.shape[-1], out_w)
    return ids[..., rows[:, None], cols[None, :]]


def _nearest_source_index(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) source index of each output pixel, as PIL's affine NEAREST scaler sums it."""
    step = n_in / n_out
    centres = np.cumsum(np.concatenate([[step * 0.5], np.full(n_out - 1, step)]))  # sequential sum
    return np.minimum(centres.astype(np.int64), n_in - 1)


def vip_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = VIP_NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of one or more frames: C[g, p] = #pixels with ground truth g, prediction p.

    Args:
        pred: (H, W) or (T, H, W) integer ids in [0, num_classes).
        gt:   same shape, integer ids; those outside [0, num_classes) are ignored.
        num_classes: number of classes (20 for VIP).

    Returns:
        (num_classes, num_classes) int64; rows = ground truth, columns = prediction.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or gt.ndim not in (2, 3):
        raise ValueError(
            f"vip_confusion: expected prediction and ground truth of the same (H, W) shape "
            f"(resize the prediction with resize_nearest), got {pred.shape} and {gt.shape}"
        )
    if not np.issubdtype(pred.dtype, np.integer) or not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"vip_confusion: expected integer id maps, got {pred.dtype} and {gt.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"vip_confusion: predicted ids must lie in [0, {num_classes}), got {pred.min()} .. {pred.max()}"
        )
    gt = gt.astype(np.int64)
    valid = (gt >= 0) & (gt < num_classes)
    pairs = num_classes * gt[valid] + pred[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def vip_iou_from_confusion(confusion: np.ndarray) -> dict:
    """{"mIoU": float, "IoU": [C] floats} from a confusion matrix (rows = ground truth).

    IoU_c = C[c, c] / (row_c + column_c - C[c, c]), NaN for a class in neither;
    mIoU = nanmean (NaN if every class is NaN).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"vip_iou_from_confusion: expected a square matrix, got shape {confusion.shape}")
    hits = np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = hits / (confusion.sum(axis=1) + confusion.sum(axis=0) - hits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        miou = float(np.nanmean(iou))
    return {"mIoU": miou, "IoU": [float(v) for v in iou]}


def vip_miou(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int = VIP_NUM_CLASSES) -> dict:
    """VIP mIoU from one confusion matrix over every frame of every video.

    Args:
        preds: list of (H, W) (one frame) or (T, H, W) (one video) predicted id maps in
            [0, num_classes), each of its ground truth's size (see :func:`resize_nearest`).
        gts:   list of ground-truth id maps, entry by entry the same shapes; ids outside
            [0, num_classes) (e.g. 255) are ignored.
        num_classes: 20 for VIP.

    Returns:
        {"mIoU": float, "IoU": list of num_classes floats (NaN = class in neither)}.
    """
    if len(preds) != len(gts):
        raise ValueError(f"vip_miou: {len(preds)} predictions but {len(gts)} ground-truth maps")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        try:
            confusion += vip_confusion(pred, gt, num_classes)
        except ValueError as err:
            raise ValueError(f"{err} (entry {index})") from None
    return vip_iou_from_confusion(confusion)
