"""DINO's frame protocol for DAVIS (Caron et al. 2021, ``eval_video_segmentation.py``;
docs/propagation.md, DINO's video-segmentation protocol): the ``frames = "dino"`` setting.

* **Frames**: an ``H x W`` frame is resized (bilinear, ``cv2.INTER_LINEAR``) so that its
  short side is 480 and its long side ``floor(480 * long / short / 64) * 64`` (854 -> 832; a
  square frame counts as landscape, as in the script), then cropped at the bottom and right
  to a multiple of the stride p: a stride-p patch embedding ignores those pixels, which is
  what the script's ViT does when p does not divide the size (p = 14); with p = 8 or 16
  nothing is cropped. Inputs are normalised with the script's statistics, mean
  (0.485, 0.456, 0.406), std (0.228, 0.224, 0.225).
* **First labels**: the annotation (ids, void -> background) resized with nearest neighbour
  (PIL) straight to the feature grid ``(h, w)``, then one-hot.
* **Output**: the soft labels (K, h, w) upsampled by p (bilinear, ``align_corners=False``) to
  ``(h p, w p)``, optionally min-max normalised per channel (:func:`propagate.labels.normalize_output`),
  argmaxed, and the id map resized to the annotation's ``H x W`` with nearest neighbour (PIL).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.palette import VOID_ID

from .labels import normalize_output

__all__ = ["DINO_SHORT_SIDE", "DINO_MULTIPLE", "DINO_STATISTICS", "dino_frame_size", "dino_frame",
           "dino_first_labels", "dino_masks"]

DINO_SHORT_SIDE = 480
DINO_MULTIPLE = 64
#: (mean, std) of the script's ``color_normalize`` (0.228, not ImageNet's 0.229, for red).
DINO_STATISTICS = ((0.485, 0.456, 0.406), (0.228, 0.224, 0.225))


def _resized_size(height: int, width: int) -> tuple[int, int]:
    """The script's ``read_frame`` size: short side 480, long side floored to a multiple of 64."""
    if height > width:
        return int(((DINO_SHORT_SIDE * height) / width) // DINO_MULTIPLE * DINO_MULTIPLE), DINO_SHORT_SIDE
    return DINO_SHORT_SIDE, int(((DINO_SHORT_SIDE * width) / height) // DINO_MULTIPLE * DINO_MULTIPLE)


def dino_frame_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(H, W) of a frame -> (H', W') the encoder sees: DINO's resize, then the crop to multiples of ``stride``."""
    th, tw = _resized_size(height, width)
    return th - th % stride, tw - tw % stride


def dino_frame(frame: np.ndarray, stride: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H', W', 3) of :func:`dino_frame_size`: resized, then cropped."""
    th, tw = _resized_size(*frame.shape[:2])
    resized = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized[: th - th % stride, : tw - tw % stride])


def _resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 id map -> (size[0], size[1]) with PIL's nearest neighbour (what the script uses)."""
    return np.asarray(Image.fromarray(np.asarray(ids, dtype=np.uint8)).resize((size[1], size[0]), Image.NEAREST))


def dino_first_labels(ids: np.ndarray, object_ids: Sequence[int], grid: tuple[int, int],
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Annotation (H, W) -> one-hot labels (1 + len(object_ids), h, w): nearest-neighbour resize to the grid."""
    small = torch.as_tensor(_resize_nearest(ids, grid).astype(np.int64), device=device)
    small = torch.where(small == VOID_ID, torch.zeros_like(small), small)
    channel_ids = torch.tensor([0, *object_ids], device=small.device)
    return (small[None] == channel_ids[:, None, None]).float()


def dino_masks(labels: torch.Tensor, object_ids: Sequence[int], size: tuple[int, int], stride: int,
               output_norm: str = "minmax") -> np.ndarray:
    """Soft labels (K, h, w) -> id map uint8 (H, W) of the annotation's ``size``: bilinear x stride,
    ``output_norm``, argmax, nearest-neighbour resize, channel -> object id."""
    up = F.interpolate(labels[None].float(), scale_factor=stride, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]
    winner = normalize_output(up, output_norm).argmax(dim=0).to(torch.uint8).cpu().numpy()
    lookup = np.array([0, *object_ids], dtype=np.uint8)
    return lookup[_resize_nearest(winner, size)]
