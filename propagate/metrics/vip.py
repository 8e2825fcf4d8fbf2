"""VIP human-parsing mIoU, as the CRW reference scorer computes it (docs/benchmarks.md, VIP).

Reference: ajabri/videowalk, code/eval/eval_vip.py. Rules:

* Per frame, a ground-truth and a predicted (H, W) map of class ids 0..19
  (:data:`datasets.vip.VIP_CLASSES`, 0 = background). The prediction must have the ground
  truth's size: the caller resizes it with :func:`resize_nearest` (the pixels PIL's NEAREST
  picks, as the scorer resizes). A bilinear or antialiased resize would mix neighbouring
  ids into ids of other classes.
* One confusion matrix C (rows = ground truth, columns = prediction) is accumulated over
  every pixel of every frame of every video; IoUs are computed once from it, not per frame
  or per video and then averaged.
* Ground-truth ids outside [0, num_classes) (e.g. 255) are ignored: the pixel adds nothing
  to C (the scorer's rule). Predicted ids outside [0, num_classes) are an error here.
* IoU_c = C[c, c] / (sum_j C[c, j] + sum_i C[i, c] - C[c, c]); a class in neither ground
  truth nor prediction has 0/0 = NaN and is left out of the mean; a class only predicted
  has IoU 0 and counts. mIoU = nanmean over the classes.
"""
from __future__ import annotations

import warnings

import numpy as np

from datasets.vip import NUM_CLASSES


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


def vip_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Confusion matrix of one or more frames: C[g, p] = #pixels with ground truth g, prediction p.

    Args:
        pred: (H, W) or (T, H, W) integer ids in [0, num_classes).
        gt:   same shape, integer ids; those outside [0, num_classes) are ignored.
        num_classes: number of classes (VIP: 20, :data:`datasets.vip.NUM_CLASSES`).

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

    IoU_c = C[c, c] / (row_c + column_c - C[c, c]) (index c = class id), NaN for a class
    in neither ground truth nor prediction;
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


def vip_miou(preds: list[np.ndarray], gts: list[np.ndarray], num_classes: int = NUM_CLASSES) -> dict:
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
