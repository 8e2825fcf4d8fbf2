"""LAB inputs of published encoders, computed from the encoder contract's normalised RGB frames.

Every encoder receives ``(B, 3, H, W)`` RGB frames normalised with the ImageNet statistics
(:mod:`corr.encoders.contract`). Models trained on LAB read what OpenCV's ``cv2.cvtColor``
gives for the 8-bit frame, so the conversion here goes back to those bytes and calls
OpenCV itself:

1. :func:`frames_to_bytes`: ``k = round(255 (x std + mean))`` clipped to 0..255, per pixel and
   channel; for frames made by :func:`datasets.transforms.normalize_frames` from ``uint8``
   pixels this recovers the pixels exactly.
2. :func:`opencv_lab`: ``cv2.cvtColor(float32(k) / 255, COLOR_RGB2Lab)`` (``depth="float"``: L in
   [0, 100], a and b in about [-128, 127]) or ``cv2.cvtColor(k, COLOR_RGB2LAB)`` (``depth="uint8"``:
   8-bit L = round(255 L / 100), a + 128, b + 128). OpenCV's float path interpolates a
   table rather than evaluating the CIE formula (with OpenCV 4.14 it differs from the
   closed form by up to about 0.2 in L and 0.3 in a, b), which is why it is called rather
   than re-implemented. BGR-ordered input with ``COLOR_BGR2Lab`` (MAST, UVC read frames with
   ``cv2.imread``) gives the same values as RGB with ``COLOR_RGB2Lab``.
3. :func:`normalised_lab`: ``(lab - LAB_MEAN) / LAB_STD`` with mean (50, 0, 0) and standard
   deviation (50, 127, 127), the statistics of Spa-then-Temp, FGVC and MAST.

The conversion runs on the CPU (NumPy) and returns float32 on the frames' device; it is not
differentiable (evaluation only).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from einops import rearrange

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

from .contract import check_images

__all__ = ["LAB_MEAN", "LAB_STD", "frames_to_bytes", "opencv_lab", "normalised_lab"]

LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)


def frames_to_bytes(images: torch.Tensor) -> np.ndarray:
    """Normalised RGB ``(B, 3, H, W)`` -> ``uint8`` RGB ``(B, H, W, 3)``: ``round(255 (x std + mean))``, clipped."""
    check_images(images)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    pixels = (images.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(rearrange(pixels, "b c h w -> b h w c").cpu().numpy())


def opencv_lab(images: torch.Tensor, depth: str = "float") -> torch.Tensor:
    """Normalised RGB ``(B, 3, H, W)`` -> OpenCV's LAB of the 8-bit frames, float32 ``(B, 3, H, W)``
    (channels L, a, b) on the same device; ``depth`` "float" or "uint8" (module docstring)."""
    if depth not in ("float", "uint8"):
        raise ValueError(f"depth must be 'float' or 'uint8', got {depth!r}")
    frames = frames_to_bytes(images)
    if depth == "float":
        lab = [cv2.cvtColor(np.float32(frame) / 255.0, cv2.COLOR_RGB2Lab) for frame in frames]
    else:
        lab = [cv2.cvtColor(frame, cv2.COLOR_RGB2LAB).astype(np.float32) for frame in frames]
    return rearrange(torch.from_numpy(np.stack(lab)), "b h w c -> b c h w").to(images.device)


def normalised_lab(images: torch.Tensor) -> torch.Tensor:
    """Normalised RGB ``(B, 3, H, W)`` -> ``(opencv_lab(images) - LAB_MEAN) / LAB_STD``, float32 ``(B, 3, H, W)``."""
    lab = opencv_lab(images, "float")
    mean = torch.tensor(LAB_MEAN, device=lab.device).view(1, 3, 1, 1)
    std = torch.tensor(LAB_STD, device=lab.device).view(1, 3, 1, 1)
    return (lab - mean) / std
