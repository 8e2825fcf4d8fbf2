"""Pixel, cell, crop and affine geometry under one convention.

Pixels: continuous coordinates ``(x, y)``, ``(0, 0)`` the top-left corner of the top-left
pixel; pixel ``i`` covers ``[i, i + 1)`` and has its centre at ``i + 0.5`` (the TAP-Vid
convention, docs/benchmarks.md). Cells: a feature grid of stride ``s`` over an ``H x W``
image has ``ceil(H / s) x ceil(W / s)`` cells; cell ``c`` covers pixels ``[c s, (c + 1) s)``
and its centre is ``(c + 0.5) s``. Cell coordinates are continuous, with cell centres at
integers: cell coordinate ``u`` is pixel ``u s + o``, ``o = s / 2`` (:func:`cell_centre_offset`).

Integer-centre coordinates (pixel ``i``'s centre at ``i``, as in ``corr.warps`` and
``propagate.labels``) are these minus 0.5: :func:`to_integer_centres` converts points, and
``to_integer_centres(cell_centre_offset(s))`` is the cell offset ``(s - 1) / 2`` there.

``grid_sample`` coordinates: with ``align_corners=False`` -1 and 1 are the outer edges of an
``n``-pixel axis, ``u = 2 x / n - 1`` (:func:`normalise_pixels`); with ``align_corners=True``
they are the centres of its first and last cell, ``u = 2 c / (n - 1) - 1`` (:func:`normalise_cells`).
Affine maps are ``(..., 2, 3)`` matrices ``M``: ``(x, y) -> M [x, y, 1]^T``. Crop boxes are
``(top, left, h, w)`` in source pixels; a box resized to ``S x S`` maps source point ``p`` to
``(p - (left, top)) S / (w, h)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["grid_size", "cell_centre_offset", "cell_to_pixel", "pixel_to_cell", "cell_centres",
           "to_integer_centres", "from_integer_centres", "normalise_pixels", "denormalise_pixels",
           "normalise_cells", "apply_affine", "crop_box_affine"]


def grid_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """``(h, w) = (ceil(H / s), ceil(W / s))``: the cells of an ``H x W`` image at stride ``s``."""
    return math.ceil(height / stride), math.ceil(width / stride)


def cell_centre_offset(stride: float) -> float:
    """Pixel coordinate ``s / 2`` of cell 0's centre."""
    return stride / 2


def cell_to_pixel(cells, stride: float, offset: Optional[float] = None):
    """Cell coordinates -> pixel coordinates: ``p = u s + o`` (``o``: :func:`cell_centre_offset` unless given)."""
    return cells * stride + (cell_centre_offset(stride) if offset is None else offset)


def pixel_to_cell(points, stride: float, offset: Optional[float] = None):
    """Pixel coordinates -> cell coordinates: ``u = (p - o) / s`` (inverse of :func:`cell_to_pixel`)."""
    return (points - (cell_centre_offset(stride) if offset is None else offset)) / stride


def cell_centres(height: int, width: int, stride: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(height, width, 2)`` pixel centres ``(x, y)`` of a ``height x width`` grid of cells."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([cell_to_pixel(xs, stride), cell_to_pixel(ys, stride)], dim=-1)


def to_integer_centres(coordinates):
    """Pixel coordinates of this module -> integer-centre coordinates (pixel ``i``'s centre at ``i``): ``- 0.5``."""
    return coordinates - 0.5


def from_integer_centres(coordinates):
    """Integer-centre coordinates -> pixel coordinates of this module: ``+ 0.5``."""
    return coordinates + 0.5


def normalise_pixels(points, size):
    """Pixel coordinates on an axis of ``size`` pixels -> ``grid_sample(align_corners=False)``: ``2 p / n - 1``."""
    return 2 * points / size - 1


def denormalise_pixels(coordinates, size):
    """Inverse of :func:`normalise_pixels`: ``(u + 1) n / 2``."""
    return (coordinates + 1) * size / 2


def normalise_cells(cells, size: int):
    """Cell coordinates on an axis of ``size`` cells -> ``grid_sample(align_corners=True)``:
    ``2 u / max(n - 1, 1) - 1``."""
    return 2 * cells / max(size - 1, 1) - 1


def apply_affine(affine: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``affine (B, 2, 3)``, ``points (B, N, 2)`` or ``(N, 2)`` (x, y) -> ``(B, N, 2)``: ``M [x, y, 1]^T``.

    At least float32, also under autocast (pixel positions in bfloat16 would be off by pixels).
    """
    if affine.ndim != 3 or affine.shape[1:] != (2, 3):
        raise ValueError(f"affine must be (B, 2, 3), got {tuple(affine.shape)}")
    if points.ndim == 2:
        points = points.expand(affine.shape[0], *points.shape)
    with torch.autocast(device_type=affine.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(affine.dtype, points.dtype), torch.float32)
        affine, points = affine.to(dtype), points.to(dtype)
        return points @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]


def crop_box_affine(box_a: torch.Tensor, box_b: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 2, 3)`` map from crop-a pixels to crop-b pixels, boxes ``(B, 4)`` (top, left, h, w) both
    resized to ``size``.

    ``x_b = x_a w_a / w_b + (left_a - left_b) size / w_b`` (likewise y with tops and heights).
    """
    ta, la, ha, wa = box_a.unbind(1)
    tb, lb, hb, wb = box_b.unbind(1)
    zero = torch.zeros_like(ta)
    return torch.stack([torch.stack([wa / wb, zero, (la - lb) * size / wb], dim=1),
                        torch.stack([zero, ha / hb, (ta - tb) * size / hb], dim=1)], dim=1)
