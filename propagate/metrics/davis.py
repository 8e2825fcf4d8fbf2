"""DAVIS-2017 semi-supervised J&F, identical to the official scorer (docs/benchmarks.md, DAVIS).

Reference: davisvideochallenge/davis2017-evaluation, ``--task semi-supervised``. Rules:

* Ground truth is an id map per frame: 0 = background, 1..N = objects, 255 = void
  (:data:`datasets.davis.VOID_ID`). The semi-supervised task passes *no* void mask: void is
  set to 0, so foreground predicted on void counts as a false positive. N is the object
  count of frame 0 (:func:`datasets.davis.count_objects`); larger ids later are ignored.
* Only frames 1 .. T-2 are scored: the first (given) and the last frame are excluded and
  their predictions are never read.
* The prediction's object count is its maximum id over the scored frames. Fewer objects
  than N: the missing ones are empty masks. More: an error.
* Per object and frame, J (:func:`db_iou`) and F (:func:`db_boundary_f`); per object,
  mean, recall and decay of each (:func:`db_statistics`). Global numbers average over
  *objects*, not sequences; J&F-Mean = (J-Mean + F-Mean) / 2 (:func:`davis_summary`).
* One departure: sequences of more than 256 scored frames, where the scorer's uint8 decay
  bins overflow, get the intended bins.

Arrays are indexed ``[t, y, x]``: T frames of H rows and W columns. Scores are in [0, 1].
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from datasets.davis import VOID_ID, count_objects
from datasets.frames import DatasetError, read_name_list

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
        precision, recall = _boundary_precision_recall(gt_b[t], pred_b[t], kernel)
        f[t] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return f.reshape(()) if squeeze else f


def _boundary_precision_recall(
    gt_b: np.ndarray, pred_b: np.ndarray, kernel: np.ndarray
) -> tuple[float, float]:
    """(P, R) of one frame's (H, W) boundary maps, with the empty-boundary rules of :func:`db_boundary_f`."""
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        return 1.0, 0.0
    if n_pred > 0 and n_gt == 0:
        return 0.0, 1.0
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    # cv2.dilate pads with the neutral value: nothing is dilated in from outside.
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    precision = int(np.sum(pred_b & gt_dil)) / float(n_pred)
    recall = int(np.sum(gt_b & pred_dil)) / float(n_gt)
    return precision, recall


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
                  1..N = objects, 255 = void. N = largest non-void id of frame 0.
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
    _check_sequence_shapes(gt, pred, where)
    gt = np.where(gt == VOID_ID, 0, gt)  # semi-supervised task: void is background
    num_objects = count_objects(gt[0])
    gt_scored, pred_scored = gt[1:-1], pred[1:-1]  # (T-2, H, W): first and last frame excluded
    num_pred_objects = int(pred_scored.max())
    if num_pred_objects > num_objects:
        raise ValueError(
            f"davis_sequence_scores{where}: the prediction has id {num_pred_objects} but the "
            f"first ground-truth frame has only {num_objects} object(s)"
        )
    # pred_scored == k is all False for an object never predicted (an empty mask).
    objects = {k: _object_scores(gt_scored == k, pred_scored == k) for k in range(1, num_objects + 1)}
    return {"objects": objects, "num_objects": num_objects, "num_scored_frames": gt.shape[0] - 2}


def _check_sequence_shapes(gt: np.ndarray, pred: np.ndarray, where: str) -> None:
    """An error unless gt and pred share one (T, H, W) shape with T >= 3."""
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


def _object_scores(gt_k: np.ndarray, pred_k: np.ndarray) -> dict:
    """Per-frame J and F of one object's (T-2, H, W) masks, with their mean, recall and decay."""
    j = db_iou(gt_k, pred_k)
    f = db_boundary_f(gt_k, pred_k)
    j_mean, j_recall, j_decay = db_statistics(j)
    f_mean, f_recall, f_decay = db_statistics(f)
    return {
        "J": j, "F": f,
        "J-Mean": j_mean, "J-Recall": j_recall, "J-Decay": j_decay,
        "F-Mean": f_mean, "F-Recall": f_recall, "F-Decay": f_decay,
    }


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
    its colours are not ids. Any other single-channel mode is read as the scorer reads it
    (1-bit as bool, 16-bit grey as uint16), which is why this is not the stricter
    :func:`datasets.palette.read_indexed_png` (modes "P" and "L" only, uint8).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as image:
        ids = np.array(image)
    if ids.ndim != 2:
        raise DatasetError(
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
        sequences = read_name_list(list_file)
    scores = {}
    for seq in sequences:
        gt_files = _ground_truth_files(davis_root / "Annotations" / resolution / seq)
        gt_ids = _read_davis_stack(gt_files)  # (T, H, W)
        pred_ids = _read_scored_predictions(results_root, seq, gt_files, gt_ids.shape[1:])  # (T, H, W)
        try:
            scores[seq] = davis_sequence_scores(gt_ids, pred_ids, sequence=seq)
        except ValueError as err:
            raise DatasetError(f"{err}; predictions in {results_root / seq}") from None
    return davis_summary(scores)


def _ground_truth_files(gt_dir: Path) -> list[Path]:
    """The ``*.png`` files of one sequence's annotation folder, sorted by name (at least 3)."""
    gt_files = sorted(gt_dir.glob("*.png"))
    if not gt_files:
        raise FileNotFoundError(f"no ground-truth PNGs in {gt_dir}")
    if len(gt_files) < 3:
        raise DatasetError(
            f"{gt_dir}: {len(gt_files)} frame(s); DAVIS scores frames 1..T-2, so at least 3 are needed"
        )
    return gt_files


def _read_scored_predictions(
    results_root: Path, seq: str, gt_files: list[Path], size: tuple[int, int]
) -> np.ndarray:
    """(T, H, W) predictions of one sequence: frames 1..T-2 read from ``<results_root>/<seq>/<frame>.png``.

    Frames 0 and T-1 are never read (they are not scored) and hold zeros. ``<frame>`` is the
    ground-truth file name without its last suffix (the scorer's frame id).
    """
    unscored = np.zeros(size, dtype=np.uint8)
    pred_frames = [unscored]
    for gt_file in gt_files[1:-1]:
        frame = "".join(gt_file.name.split(".")[:-1])  # the scorer's frame id
        pred_file = results_root / seq / f"{frame}.png"
        if not pred_file.is_file():
            raise FileNotFoundError(f"prediction missing for sequence {seq!r}, frame {frame}: {pred_file}")
        pred = read_davis_png(pred_file)
        if pred.shape != tuple(size):
            raise DatasetError(f"{pred_file}: size {pred.shape} differs from the ground truth's {tuple(size)}")
        pred_frames.append(pred)
    pred_frames.append(unscored)
    return np.stack(pred_frames)


def _read_davis_stack(files: list[Path]) -> np.ndarray:
    """(T, H, W) stack of the id maps in ``files``; every file must have the first one's size."""
    frames = [read_davis_png(files[0])]
    for path in files[1:]:
        ids = read_davis_png(path)
        if ids.shape != frames[0].shape:
            raise DatasetError(f"{path}: size {ids.shape} differs from {files[0]}'s {frames[0].shape}")
        frames.append(ids)
    return np.stack(frames)


def _as_bool_pair(gt: np.ndarray, pred: np.ndarray, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """``gt`` and ``pred`` cast to bool; an error unless they share one (..., H, W) shape."""
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(
            f"{caller}: expected gt and pred masks of the same (T, H, W) shape, "
            f"got {gt.shape} and {pred.shape}"
        )
    return gt, pred
