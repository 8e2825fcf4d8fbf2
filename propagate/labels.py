"""Label maps <-> the soft label channels the propagator carries (docs/propagation.md).

Geometry (:mod:`corr.geometry`): a feature grid of stride ``s`` has ``ceil(H / s)`` rows; label
points here are integer-centre pixels (:func:`corr.geometry.to_integer_centres`), so cell ``i``
is centred on ``s i + (s - 1) / 2``. Images are edge-padded to ``h s`` before downsampling and
label maps cropped after upsampling, so both directions use the same cell centres.

Masks: an id map (0 background, 1..N objects, 255 void = background, as the DAVIS scorer does)
becomes ``K = N + 1`` one-hot channels (channel ``i``: ``object_ids[i - 1]``) bilinearly resized
to the grid; decoding upsamples bilinearly and takes the argmax. Ids are palette indices.

* keypoints (JHMDB): one Gaussian channel per joint plus background, decoded as the weighted
  mean of each channel's top-3 cells (:func:`keypoints_to_heatmaps`; CRW's own integer-cell
  encoding: :func:`reference_keypoints_to_heatmaps`);
* part maps (VIP): one-hot channels of class ids 0..19, decoded by argmax (:func:`parts_to_labels`);
* query points (TAP-Vid): one small Gaussian per query plus background, decoded to sub-cell
  positions, with occlusion from fading or a forward-backward check (:func:`track_points`);
  FGVC's own drawing and top-5 decoding at image resolution with ``decoding="fgvc"``
  (:func:`fgvc_queries_to_heatmaps`, :func:`fgvc_heatmaps_to_points`).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from corr.geometry import (
    cell_centre_offset,
    cell_to_pixel,
    from_integer_centres,
    grid_size,
    normalise_cells,
    pixel_to_cell,
    to_integer_centres,
)
from datasets.palette import VOID_ID
from datasets.vip import NUM_CLASSES

__all__ = ["grid_size", "downsample_to_grid", "upsample_to_image", "normalize_output", "masks_to_labels",
           "labels_to_masks",
           "rescale_points", "KEYPOINT_SIGMA", "KEYPOINT_TOPK", "KEYPOINT_ENCODINGS", "keypoints_to_heatmaps",
           "heatmaps_to_keypoints", "reference_rescale_points", "reference_keypoints_to_heatmaps",
           "reference_heatmaps_to_keypoints",
           "parts_to_labels", "labels_to_parts", "QUERY_SIGMA", "QUERY_WINDOW",
           "OCCLUSION_THRESHOLD", "MIN_PEAK_RATIO", "queries_to_heatmaps", "heatmaps_to_points",
           "backmatch_distance", "POINT_DECODINGS", "FGVC_SIGMA", "FGVC_TOPK", "fgvc_queries_to_heatmaps",
           "fgvc_heatmaps_to_points", "track_points", "decode_points"]



def downsample_to_grid(maps: torch.Tensor, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """(K, H, W) -> (K, h, w): replicate-pad to (h*s, w*s), bilinear resize (align_corners=False)."""
    h, w = grid
    H, W = maps.shape[-2:]
    padded = F.pad(maps[None], (0, w * stride - W, 0, h * stride - H), mode="replicate")
    return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)[0]


def upsample_to_image(maps: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(K, h, w) -> (K, H, W): bilinear resize to (h*s, w*s) (align_corners=False), crop to (H, W)."""
    h, w = maps.shape[-2:]
    up = F.interpolate(maps[None].float(), size=(h * stride, w * stride), mode="bilinear", align_corners=False)[0]
    return up[:, : size[0], : size[1]]


def masks_to_labels(ids: np.ndarray, object_ids: Sequence[int], grid: tuple[int, int], stride: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Id map (H, W) -> soft one-hot labels (1 + len(object_ids), h, w) on the feature grid."""
    ids_t = torch.as_tensor(np.asarray(ids).astype(np.int64), device=device)
    ids_t = torch.where(ids_t == VOID_ID, torch.zeros_like(ids_t), ids_t)
    channel_ids = torch.tensor([0, *object_ids], device=ids_t.device)
    one_hot = (ids_t[None] == channel_ids[:, None, None]).float()  # (K, H, W)
    return downsample_to_grid(one_hot, grid, stride)


def normalize_output(maps: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """Output normalisation of upsampled label maps (K, H, W) before the argmax (``output_norm``).

    ``"minmax"``: each channel whose maximum is > 0 becomes ``(m - min) / (max - min)`` (DINO's
    ``norm_mask``; a constant channel becomes 0 where the script divides 0 by 0); other channels
    are left as they are. ``"none"``: unchanged.
    """
    if mode == "none":
        return maps
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    scaled = (maps - lo) / (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(hi > 0, scaled, maps)


def labels_to_masks(labels: torch.Tensor, object_ids: Sequence[int], size: tuple[int, int], stride: int,
                    output_norm: str = "none") -> np.ndarray:
    """Soft labels (K, h, w) -> id map uint8 (H, W): bilinear upsampling, ``output_norm``
    (:func:`normalize_output`), argmax, channel -> object id."""
    winner = normalize_output(upsample_to_image(labels, size, stride), output_norm).argmax(dim=0)  # (H, W)
    lookup = torch.tensor([0, *object_ids], dtype=torch.uint8, device=winner.device)
    return lookup[winner].cpu().numpy()


# ----------------------------------------------------------------------------- points on the grid
#
# Points here are integer-centre (x, y) pixels; TAP-Vid's coordinates (those of corr.geometry)
# are these plus 0.5 (see :func:`track_points`).

def pixel_to_grid(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Integer-centre pixels (..., 2) -> grid coordinates (..., 2): ``g = (p - (s - 1) / 2) / s``."""
    return pixel_to_cell(points, stride, to_integer_centres(cell_centre_offset(stride)))


def grid_to_pixel(points: torch.Tensor, stride: int) -> torch.Tensor:
    """Grid coordinates (..., 2) -> integer-centre pixels (..., 2): ``p = s g + (s - 1) / 2``."""
    return cell_to_pixel(points, stride, to_integer_centres(cell_centre_offset(stride)))


def rescale_points(points: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Points (..., 2) (x, y) of an ``from_size`` (H, W) image -> the same points after a resize to ``to_size``.

    Pixel-centre convention: ``x' = (x + 0.5) * W' / W - 0.5`` (and likewise y), which is the
    geometry of ``cv2.resize`` / PIL resizing (pixel areas, not centres, are aligned).
    A point with a negative coordinate means "not predicted" and stays ``(-1, -1)``.
    """
    points = np.asarray(points, dtype=np.float64)
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    out = to_integer_centres(from_integer_centres(points) * scale)
    missing = (points < 0).any(axis=-1)
    out[missing] = -1.0
    return out


def _gaussian_channels(centres: torch.Tensor, present: torch.Tensor, grid: tuple[int, int],
                       sigma: float, cutoff: float) -> torch.Tensor:
    """One Gaussian per centre on the grid: (P, 2) grid (x, y), (P,) bool -> (P, h, w).

    ``G_p(i, j) = exp(-((j - x_p)^2 + (i - y_p)^2) / (2 sigma^2))`` where the distance is at
    most ``cutoff`` cells, 0 elsewhere; a channel whose point is not present is all zero.
    """
    h, w = grid
    rows = torch.arange(h, dtype=torch.float32, device=centres.device)
    cols = torch.arange(w, dtype=torch.float32, device=centres.device)
    dx2 = (cols[None, None, :] - centres[:, 0, None, None]) ** 2  # (P, 1, w)
    dy2 = (rows[None, :, None] - centres[:, 1, None, None]) ** 2  # (P, h, 1)
    dist2 = dx2 + dy2                                             # (P, h, w)
    heat = torch.exp(-dist2 / (2 * sigma ** 2)) * (dist2 <= cutoff ** 2)
    return heat * present[:, None, None]


# ----------------------------------------------------------------------------- keypoints (JHMDB)

#: Gaussian width of a keypoint channel in feature-grid cells: the reference CRW evaluator
#: draws each joint with ``sigma = 0.5`` (videowalk ``code/data/jhmdb.py``, ``JhmdbSet``
#: default, ``draw_labelmap_np``: value 1 at the joint, a window of +-3 sigma).
KEYPOINT_SIGMA = 0.5
KEYPOINT_TOPK = 3


def keypoints_to_heatmaps(keypoints: np.ndarray, image_size: tuple[int, int], grid: tuple[int, int],
                          stride: int, sigma: float = KEYPOINT_SIGMA,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Keypoints (J, 2) (x, y) of an (H, W) image -> heatmap labels (1 + J, h, w) on the grid.

    Channel ``1 + j`` holds a Gaussian of width ``sigma`` grid cells centred on joint j's
    sub-cell grid position ``g = (p - (s - 1) / 2) / s`` (peak 1, zero beyond 3 sigma), as
    the reference CRW recipe (videowalk ``code/data/jhmdb.py``), which places it at the
    integer cell ``int(p / s - 1.5) + 2`` instead. Channel 0 is the background: 1 where
    every joint channel is 0, else 0 (the reference's rule). A joint that is absent (a
    non-finite coordinate, or outside ``[0, W) x [0, H)``, tapnet's validity rule for
    JHMDB's first frame) gets an all-zero channel, which propagation keeps all zero, so it
    decodes as "not predicted" (see :func:`heatmaps_to_keypoints`).
    """
    points = torch.as_tensor(np.asarray(keypoints, dtype=np.float64), dtype=torch.float32, device=device)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"keypoints must be (J, 2) (x, y), got shape {tuple(points.shape)}")
    height, width = image_size
    x, y = points[:, 0], points[:, 1]
    present = torch.isfinite(points).all(1) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    centres = pixel_to_grid(torch.nan_to_num(points), stride)
    joints = _gaussian_channels(centres, present, grid, sigma, cutoff=3 * sigma)  # (J, h, w)
    background = (joints.sum(0, keepdim=True) == 0).float()
    return torch.cat([background, joints])


def _top_cells(labels: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft labels (1 + J, h, w) -> the weighted mean (J, 2) (col, row) of each joint channel's
    ``topk`` cells (weights normalised to sum 1) and the (J,) mask of all-zero channels."""
    if labels.ndim != 3 or labels.shape[0] < 2:
        raise ValueError(f"labels must be (1 + J, h, w), got shape {tuple(labels.shape)}")
    joints = labels[1:].float().flatten(1)                       # (J, h*w)
    w = labels.shape[-1]
    values, index = joints.topk(min(topk, joints.shape[1]), dim=1)  # (J, k)
    weights = values / values.sum(1, keepdim=True).clamp_min(1e-12)
    cells = torch.stack([index % w, index // w], dim=-1).float()  # (J, k, 2) (col, row)
    return (weights[..., None] * cells).sum(1), joints.sum(1) <= 0


def heatmaps_to_keypoints(labels: torch.Tensor, stride: int, topk: int = KEYPOINT_TOPK) -> np.ndarray:
    """Soft labels (1 + J, h, w) -> keypoints float64 (J, 2) (x, y) in pixels of the grid's image.

    Each joint: the ``topk`` largest cells of its channel (on the grid), weighted by their
    values normalised to sum 1; ``(x, y) = s * sum_i w_i (col_i, row_i) + (s - 1) / 2``
    (reference CRW ``process_pose``: top-3 on the grid, times the stride). A channel whose
    total is 0 (the joint was absent in the first frame) gives ``(-1, -1)``: not predicted.
    To map to the original image, use :func:`rescale_points`.
    """
    cells, missing = _top_cells(labels, topk)
    points = grid_to_pixel(cells, stride)                         # (J, 2)
    points[missing] = -1.0
    return points.cpu().double().numpy()


# CRW's own JHMDB encoding (videowalk code/data/jhmdb.py draw_labelmap_np, code/utils/test_utils.py
# process_pose), selected with ``--keypoint-encoding reference``.

#: ``sub-cell`` (:func:`keypoints_to_heatmaps`) or ``reference`` (:func:`reference_keypoints_to_heatmaps`).
KEYPOINT_ENCODINGS = ("sub-cell", "reference")


def reference_rescale_points(points: np.ndarray, from_size: tuple[int, int],
                             to_size: tuple[int, int]) -> np.ndarray:
    """CRW's point scaling between image sizes: ``x' = x W' / W``, ``y' = y H' / H`` (pixel
    centres at integers, without the half-pixel shift of :func:`rescale_points`); ``-1`` stays ``-1``."""
    points = np.asarray(points, dtype=np.float64)
    out = points * np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    out[(points < 0).any(axis=-1)] = -1.0
    return out


def reference_keypoints_to_heatmaps(keypoints: np.ndarray, grid: tuple[int, int], stride: int,
                                    sigma: float = KEYPOINT_SIGMA,
                                    device: torch.device | str | None = None) -> torch.Tensor:
    """Keypoints (J, 2) (x, y) in pixels of the input image -> labels (1 + J, h, w), as CRW draws them.

    Joint ``j`` at cells ``c = p / s``: the window ``[trunc(c - 3 sigma), trunc(c + 3 sigma + 1))``
    per axis (``trunc`` rounds toward zero), clipped to the grid, holds
    ``g(k) = exp(-((k_x - m)^2 + (k_y - m)^2) / (2 sigma^2))`` for its window index ``k`` and
    ``m = floor((6 sigma + 1) / 2)``: for sigma 0.5 a 4x4 integer window peaking at 1 on the cell
    ``trunc(c - 1.5) + 2`` (``round(c)`` for ``c >= 1.5``), not at the point itself. A window
    entirely off the grid, or a non-finite point, leaves the channel zero. Channel 0 is 1 where
    every joint channel is 0.
    """
    points = np.asarray(keypoints, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"keypoints must be (J, 2) (x, y), got shape {points.shape}")
    h, w = grid
    size = 6 * sigma + 1
    k = np.arange(0, size, 1, dtype=np.float64)
    m = size // 2
    window = np.exp(-((k[None, :] - m) ** 2 + (k[:, None] - m) ** 2) / (2 * sigma ** 2))   # (rows, cols)
    joints = np.zeros((len(points), h, w))
    for j, point in enumerate(points):
        if not np.isfinite(point).all():
            continue
        cx, cy = point / stride
        left, top = math.trunc(cx - 3 * sigma), math.trunc(cy - 3 * sigma)
        right, bottom = math.trunc(cx + 3 * sigma + 1), math.trunc(cy + 3 * sigma + 1)
        if left >= w or top >= h or right < 0 or bottom < 0:
            continue
        x0, x1, y0, y1 = max(0, left), min(right, w), max(0, top), min(bottom, h)
        joints[j, y0:y1, x0:x1] = window[y0 - top:y1 - top, x0 - left:x1 - left]
    joints = torch.as_tensor(joints, dtype=torch.float32, device=device)
    background = (joints.sum(0, keepdim=True) == 0).float()
    return torch.cat([background, joints])


def reference_heatmaps_to_keypoints(labels: torch.Tensor, stride: int, topk: int = KEYPOINT_TOPK) -> np.ndarray:
    """CRW's decoding: the weighted mean of each joint channel's top-``topk`` cells times the
    stride, ``(x, y) = s * sum_i w_i (col_i, row_i)`` (no cell-centre offset); an all-zero channel
    gives ``(-1, -1)``. Float64 (J, 2) pixels of the input image."""
    cells, missing = _top_cells(labels, topk)
    points = cells * stride
    points[missing] = -1.0
    return points.cpu().double().numpy()


# ----------------------------------------------------------------------------- part maps (VIP)



def parts_to_labels(ids: np.ndarray, grid: tuple[int, int], stride: int, num_classes: int = NUM_CLASSES,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Part map (H, W) of class ids 0..num_classes-1 -> soft one-hot labels (num_classes, h, w).

    Channel c is class c (0 = background), bilinearly resized to the grid exactly like mask
    labels (:func:`masks_to_labels`); a class absent from the map has an all-zero channel.
    The void id 255 counts as background; any other id >= num_classes is an error.
    """
    ids = np.asarray(ids)
    bad = (ids >= num_classes) & (ids != VOID_ID)
    if bad.any():
        raise ValueError(f"part map holds ids {sorted(np.unique(ids[bad]).tolist())[:5]} outside "
                         f"0..{num_classes - 1} (and 255 void)")
    return masks_to_labels(ids, range(1, num_classes), grid, stride, device=device)


def labels_to_parts(labels: torch.Tensor, size: tuple[int, int], stride: int) -> np.ndarray:
    """Soft labels (num_classes, h, w) -> part map uint8 (H, W): bilinear upsampling, argmax = class id."""
    return labels_to_masks(labels, range(1, labels.shape[0]), size, stride)


# ----------------------------------------------------------------------------- query points (TAP-Vid)

#: Width of a query point's heatmap in grid cells, and the window (radius in cells) around
#: the peak whose weighted mean is the decoded sub-cell position.
QUERY_SIGMA = 0.5
QUERY_WINDOW = 2
#: A tracked point is predicted occluded when the best match of its feature in the query
#: frame lies more than OCCLUSION_THRESHOLD grid cells from the query point, or when its
#: channel's peak falls below MIN_PEAK_RATIO times its peak in the query frame (see
#: :func:`track_points`).
OCCLUSION_THRESHOLD = 1.5
MIN_PEAK_RATIO = 0.25


def queries_to_heatmaps(points: torch.Tensor | np.ndarray, grid: tuple[int, int], stride: int,
                        sigma: float = QUERY_SIGMA, device: torch.device | str | None = None) -> torch.Tensor:
    """Query points (Q, 2) (x, y) in pixels -> labels (1 + Q, h, w): background + one Gaussian each.

    Channel ``1 + q`` is a Gaussian of width ``sigma`` cells at the query's sub-cell grid
    position (cut at 4 sigma, where it is < 4e-4), so its weighted mean is the point itself
    to a few hundredths of a cell. Channel 0 = ``clip(1 - sum of the query channels, 0, 1)``.
    """
    points = torch.as_tensor(points, dtype=torch.float32, device=device)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"query points must be (Q, 2) (x, y), got shape {tuple(points.shape)}")
    present = torch.isfinite(points).all(1)
    channels = _gaussian_channels(pixel_to_grid(torch.nan_to_num(points), stride), present, grid,
                                  sigma, cutoff=4 * sigma)
    background = (1 - channels.sum(0, keepdim=True)).clamp(0, 1)
    return torch.cat([background, channels])


def heatmaps_to_points(labels: torch.Tensor, stride: int, window: int = QUERY_WINDOW
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft labels (1 + Q, h, w) -> (points (Q, 2) (x, y) in pixels, peak values (Q,)).

    Position = weighted mean of the cell centres within ``window`` cells (a square of side
    ``2 * window + 1``) of the channel's largest cell, weights = the channel's values there
    (clamped at 0), mapped to pixels by ``p = s * g + (s - 1) / 2``. ``peak`` is that
    largest value; a channel that is all 0 has peak 0 and its position is meaningless.
    """
    if labels.ndim != 3 or labels.shape[0] < 2:
        raise ValueError(f"labels must be (1 + Q, h, w), got shape {tuple(labels.shape)}")
    heat = labels[1:].float().clamp_min(0)                    # (Q, h, w)
    Q, h, w = heat.shape
    peak, index = heat.flatten(1).max(dim=1)                  # (Q,)
    rows = torch.arange(h, device=heat.device, dtype=torch.float32)
    cols = torch.arange(w, device=heat.device, dtype=torch.float32)
    near_rows = ((rows[None, :] - (index // w)[:, None].float()).abs() <= window)  # (Q, h)
    near_cols = ((cols[None, :] - (index % w)[:, None].float()).abs() <= window)   # (Q, w)
    weights = heat * near_rows[:, :, None] * near_cols[:, None, :]                 # (Q, h, w)
    mass = weights.sum((1, 2)).clamp_min(1e-12)
    gx = (weights.sum(1) * cols).sum(1) / mass
    gy = (weights.sum(2) * rows).sum(1) / mass
    return grid_to_pixel(torch.stack([gx, gy], dim=1), stride), peak


# FGVC's TAP-Vid tracker (qianduoduolr/FGVC, mmpt/models/trackers/vanilla_tracker.py,
# VanillaTracker.forward_test_main): a Gaussian of 6 px per query drawn at image resolution
# and sampled every s pixels, propagated on the grid, upsampled bilinearly back to the image,
# and read as the weighted mean of its 5 largest pixels (img2coord).

#: ``decoding`` of :func:`track_points`: ``window`` (this project's sub-cell Gaussian and
#: windowed mean) or ``fgvc`` (FGVC's image-resolution Gaussian and top-5 pixels).
POINT_DECODINGS = ("window", "fgvc")
#: FGVC's query Gaussian width in image pixels, and the pixels averaged by its decoding.
FGVC_SIGMA = 6.0
FGVC_TOPK = 5


def fgvc_queries_to_heatmaps(points: torch.Tensor | np.ndarray, grid: tuple[int, int], stride: int,
                             sigma: float = FGVC_SIGMA, device: torch.device | str | None = None) -> torch.Tensor:
    """Query points (Q, 2) (x, y), integer-centre pixels -> labels (1 + Q, h, w), as FGVC draws them.

    FGVC reads TAP-Vid's corner coordinates ``c = p + 0.5`` as pixel indices: channel ``1 + q``
    at cell (i, j) is ``exp(-((s j - c_x)^2 + (s i - c_y)^2) / (2 sigma^2))``, the Gaussian of
    width ``sigma`` image pixels at pixel ``(s j, s i)`` (the grid samples the image-resolution
    map every ``s`` pixels from pixel 0), not truncated. FGVC has no background channel;
    channel 0 here is ``clip(1 - sum, 0, 1)`` so that the layout matches
    :func:`queries_to_heatmaps` (channels propagate independently; it is never decoded).
    """
    points = torch.as_tensor(points, dtype=torch.float32, device=device)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"query points must be (Q, 2) (x, y), got shape {tuple(points.shape)}")
    h, w = grid
    corner = from_integer_centres(points)                                     # FGVC's coordinates
    xs = stride * torch.arange(w, device=points.device, dtype=torch.float32)
    ys = stride * torch.arange(h, device=points.device, dtype=torch.float32)
    dx2 = (xs[None, :] - corner[:, 0:1]) ** 2                                 # (Q, w)
    dy2 = (ys[None, :] - corner[:, 1:2]) ** 2                                 # (Q, h)
    channels = torch.exp(-(dy2[:, :, None] + dx2[:, None, :]) / (2 * sigma ** 2))
    channels = torch.where(torch.isfinite(points).all(1)[:, None, None], channels, torch.zeros_like(channels))
    background = (1 - channels.sum(0, keepdim=True)).clamp(0, 1)
    return torch.cat([background, channels])


def fgvc_heatmaps_to_points(labels: torch.Tensor, image_size: tuple[int, int], topk: int = FGVC_TOPK
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft labels (1 + Q, h, w) -> (points (Q, 2) (x, y) integer-centre pixels, peak values (Q,)), as FGVC.

    Each query channel is upsampled bilinearly to ``image_size`` (H, W) (``align_corners=False``);
    its ``topk`` largest pixels ``k`` give ``c = sum_k v_k idx_k / (sum_k v_k + 1e-9)`` with
    ``idx = (k mod W, k div W)``, read as corner coordinates (returned as ``c - 0.5``). A
    channel whose upsampled map sums to 0 has peak 0 (FGVC reports -1 there). ``peak`` is the
    largest upsampled value.

    Drawn at pixel ``s j`` (:func:`fgvc_queries_to_heatmaps`) but upsampled as if cell ``j``
    were centred on ``s j + (s - 1) / 2``, a point comes back ``(s - 1) / 2`` px down and to
    the right (0.5 px at FGVC's stride 2, 3.5 px at stride 8). That is what FGVC's published
    TAP-Vid numbers measured, so ``decoding="fgvc"`` keeps it.
    """
    if labels.ndim != 3 or labels.shape[0] < 2:
        raise ValueError(f"labels must be (1 + Q, h, w), got shape {tuple(labels.shape)}")
    H, W = image_size
    heat = F.interpolate(labels[None, 1:].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    flat = heat.flatten(1)                                                    # (Q, H*W)
    values, index = flat.topk(topk, dim=1)                                    # (Q, k)
    weights = values / (values.sum(1, keepdim=True) + 1e-9)
    corner = torch.stack([((index % W).float() * weights).sum(1), ((index // W).float() * weights).sum(1)], dim=1)
    peak = torch.where(flat.sum(1) == 0, torch.zeros_like(values[:, 0]), values[:, 0])
    return to_integer_centres(corner), peak


def backmatch_distance(query_feat: torch.Tensor, target_feat: torch.Tensor, target_points: torch.Tensor,
                       query_points: torch.Tensor, stride: int) -> torch.Tensor:
    """Distance in grid cells from each query point to where its tracked feature matches back.

    query_feat, target_feat: (C, h, w) features of the query frame and of the target frame;
    target_points, query_points: (Q, 2) (x, y) pixels. The target feature at each tracked
    point (bilinear, L2-normalised) is compared by cosine with every cell of the query frame;
    the result is ``|argmax cell - query grid position|`` (Euclidean, cells). A visible point
    matches back near its query; an occluded one shows the occluder, which matches elsewhere.
    """
    C, h, w = target_feat.shape
    g = pixel_to_grid(target_points.float(), stride)          # (Q, 2)
    normalised = torch.stack([normalise_cells(g[:, 0], w), normalise_cells(g[:, 1], h)], dim=1)
    sampled = F.grid_sample(target_feat[None].float(), normalised[None, :, None, :], mode="bilinear",
                            padding_mode="border", align_corners=True)[0, :, :, 0]  # (C, Q)
    sampled = F.normalize(sampled, dim=0)
    keys = F.normalize(query_feat.float().flatten(1), dim=0)  # (C, h*w)
    best = (sampled.T @ keys).argmax(dim=1)                   # (Q,)
    matched = torch.stack([best % w, best // w], dim=1).float()
    return (matched - pixel_to_grid(query_points.float(), stride)).norm(dim=1)


@torch.no_grad()
def track_points(propagate, feats: torch.Tensor, query_points: np.ndarray, stride: int,
                 sigma: float = QUERY_SIGMA, window: int = QUERY_WINDOW,
                 occlusion_threshold: float = OCCLUSION_THRESHOLD, min_peak_ratio: float = MIN_PEAK_RATIO,
                 backward: bool = True, max_queries: int = 256, decoding: str = "window",
                 image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Track TAP-Vid query points by label propagation -> (tracks [Q, T, 2] x, y; occluded [Q, T]).

    propagate:    ``propagate(feats (T', C, h, w), first_label (K, h, w)) -> (T', K, h, w)``,
                  e.g. ``Propagator(cfg).propagate``; its frame 0 is the query frame.
    feats:        (T, C, h, w) features of the video's frames (image size ``(h*s, w*s)`` or less).
    query_points: (Q, 3) ``[t, y, x]``, TAP-Vid convention: pixels of the frames the features
                  were computed from, (0, 0) the top-left corner of the top-left pixel (a pixel
                  centre is at ``i + 0.5``); ``t`` is rounded to the nearest frame.

    Queries are grouped by query frame t0. Each group is encoded as heatmaps
    (:func:`queries_to_heatmaps`) on frame t0 and propagated forward over frames t0..T-1 and,
    if ``backward``, backward over t0, t0-1, ..., 0 (the same algorithm on the reversed
    video). Each frame's channels are decoded by :func:`heatmaps_to_points`. At most
    ``max_queries`` channels are propagated at once (memory is linear in them).

    Occlusion rule: a point is predicted occluded in frame t when either

    * its heatmap has faded: the channel's peak is below ``min_peak_ratio`` times its peak
      in the query frame. When the point is hidden, no cell of frame t matches the labelled
      keys well, so the propagated mass collapses (a peak of 0 means the channel died out;
      the position is then the previous frame's); or
    * it fails forward-backward consistency against the query frame: the feature at its
      predicted position, matched back to the query frame by cosine similarity (top-1),
      lands more than ``occlusion_threshold`` grid cells from the query point
      (:func:`backmatch_distance`).

    ``decoding="fgvc"`` draws and reads the heatmaps as FGVC does (:func:`fgvc_queries_to_heatmaps`,
    :func:`fgvc_heatmaps_to_points` at ``image_size``, default ``(h s, w s)``; ``sigma`` and
    ``window`` are then unused); the occlusion rule stays this one (FGVC predicts none).

    The query frame itself is visible at the query point. With ``backward=False`` frames
    before t0 are reported occluded at the query point (TAP-Vid "first" mode does not score
    them, and skipping them halves the work). Returned tracks use the TAP-Vid corner
    convention, like ``query_points``. Both thresholds depend on the encoder's features;
    record them with every result.
    """
    T, _, h, w = feats.shape
    if decoding not in POINT_DECODINGS:
        raise ValueError(f"decoding must be one of {', '.join(POINT_DECODINGS)}, got {decoding!r}")
    if decoding == "fgvc":
        encode = partial(fgvc_queries_to_heatmaps, grid=(h, w), stride=stride, device=feats.device)
        decode = partial(fgvc_heatmaps_to_points, image_size=image_size or (h * stride, w * stride))
    else:
        encode = partial(queries_to_heatmaps, grid=(h, w), stride=stride, sigma=sigma, device=feats.device)
        decode = partial(heatmaps_to_points, stride=stride, window=window)
    query_points = np.asarray(query_points, dtype=np.float64)
    if query_points.ndim != 2 or query_points.shape[1] != 3:
        raise ValueError(f"query_points must be (Q, 3) [t, y, x], got shape {query_points.shape}")
    Q = query_points.shape[0]
    query_frames = np.clip(np.round(query_points[:, 0]).astype(np.int64), 0, T - 1)
    centres = torch.as_tensor(to_integer_centres(query_points[:, [2, 1]]), dtype=torch.float32)  # (Q, 2) x, y
    tracks = np.repeat(query_points[:, None, [2, 1]], T, axis=1)  # (Q, T, 2), TAP-Vid coordinates
    occluded = np.ones((Q, T), dtype=bool)
    for t0 in np.unique(query_frames):
        group = np.flatnonzero(query_frames == t0)
        occluded[group, t0] = False
        directions = [np.arange(t0, T)] + ([np.arange(t0, -1, -1)] if backward else [])
        for chunk in np.array_split(group, math.ceil(len(group) / max_queries)):
            start = centres[chunk].to(feats.device)
            label0 = encode(start)
            _, peak0 = decode(label0)
            for frames in directions:
                if len(frames) < 2:
                    continue
                labels = propagate(feats[torch.as_tensor(frames, device=feats.device)], label0)
                previous = start
                for step, t in enumerate(frames[1:], start=1):
                    points, hidden = decode_points(labels[step], feats[t0], feats[t], start, previous, peak0, stride,
                                                   decode, occlusion_threshold, min_peak_ratio)
                    tracks[chunk, t] = from_integer_centres(points.cpu().double().numpy())
                    occluded[chunk, t] = hidden.cpu().numpy()
                    previous = points
    return tracks, occluded


def decode_points(labels: torch.Tensor, query_feat: torch.Tensor, feat: torch.Tensor, start: torch.Tensor,
                  previous: torch.Tensor, peak0: torch.Tensor, stride: int, decode=None,
                  occlusion_threshold: float = OCCLUSION_THRESHOLD, min_peak_ratio: float = MIN_PEAK_RATIO
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of :func:`track_points`: its propagated labels -> (points (Q, 2), occluded (Q,) bool).

    labels:     (1 + Q, h, w) soft labels of the frame; feat, query_feat: (C, h, w) features
                of the frame and of the query frame;
    start:      (Q, 2) the query points, previous: (Q, 2) the points of the frame before,
                both integer-centre (x, y) pixels; peak0: (Q,) each channel's peak in the
                query frame (``decode`` of the first labels);
    decode:     ``decode(labels) -> (points, peaks)``, :func:`heatmaps_to_points` (None: with its
                default window) or :func:`fgvc_heatmaps_to_points` (:func:`track_points`' ``decoding``).

    Points: ``decode``'s, where a channel died out (peak 0) the previous
    frame's. Occluded: the channel died out, or faded below ``min_peak_ratio * peak0``, or
    its feature matches back farther than ``occlusion_threshold`` cells from the query
    (:func:`backmatch_distance`); see :func:`track_points`.
    """
    points, peak = decode(labels) if decode is not None else heatmaps_to_points(labels, stride)
    alive = peak > 0
    points = torch.where(alive[:, None], points, previous)
    far = backmatch_distance(query_feat, feat, points, start, stride)
    faded = peak < min_peak_ratio * peak0
    return points, ~alive | faded | (far > occlusion_threshold)
