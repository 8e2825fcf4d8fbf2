"""Label maps <-> the soft label channels the propagator carries.

Geometry: a feature grid of stride ``s`` has ``h = ceil(H / s)`` rows; cell ``i`` is centred
on pixel coordinate ``s * i + (s - 1) / 2`` (pixel centres at integers). Images are padded
(edge replicated) to ``h * s`` before downsampling and label maps are cropped after
upsampling, so that both directions use the same cell centres.

Mask labels: an id map (0 background, 1..N objects, 255 void) becomes ``K = N + 1`` one-hot
channels (channel 0 background, channel i object ``object_ids[i - 1]``), bilinearly resized
to the grid (PROTOCOLS.md section 4). Void pixels count as background, as in the official
DAVIS scorer, which sets 255 to 0 in the semi-supervised task. Decoding upsamples the soft
channels bilinearly to image size and takes the argmax. Beware: ids are palette indices,
never RGB colours.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

VOID_ID = 255


def grid_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(h, w) of the feature grid of an image of ``height`` x ``width`` pixels."""
    return math.ceil(height / stride), math.ceil(width / stride)


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


def labels_to_masks(labels: torch.Tensor, object_ids: Sequence[int], size: tuple[int, int], stride: int) -> np.ndarray:
    """Soft labels (K, h, w) -> id map uint8 (H, W): bilinear upsampling, argmax, channel -> object id."""
    winner = upsample_to_image(labels, size, stride).argmax(dim=0)  # (H, W) channel index
    lookup = torch.tensor([0, *object_ids], dtype=torch.uint8, device=winner.device)
    return lookup[winner].cpu().numpy()
