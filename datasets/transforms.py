"""The one image normalisation shared by training and evaluation (LAB encoders convert from it:
``corr.encoders.lab``).

Frames are RGB ``uint8`` arrays laid out ``(T, H, W, 3)`` (or ``(H, W, 3)``); models take
``float32`` tensors ``(T, 3, H, W)`` normalised with the ImageNet mean and standard
deviation. (The reference CRW code normalised training frames with CIFAR-10 statistics and
test frames with ImageNet statistics; here both use ImageNet statistics.)
"""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_frames(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None,
                     mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """``uint8`` RGB frames ``(T, H, W, 3)`` or ``(H, W, 3)`` -> normalised ``(T, 3, H, W)`` float32.

    ``(x / 255 - mean) / std`` per channel (ImageNet statistics unless given), computed as
    ``(x - 255 mean) * (1 / (255 std))`` after moving channels first while the data are
    still bytes (fewer float passes).
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB frames shaped (T, H, W, 3), got {tuple(x.shape)}")
    x = x.to(device=device).permute(0, 3, 1, 2).contiguous().float()
    shift = torch.tensor([255.0 * m for m in mean], device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device).view(1, 3, 1, 1)
    return x.sub_(shift).mul_(scale)


def denormalize_frames(x: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_frames`: ``(T, 3, H, W)`` -> ``uint8 (T, H, W, 3)``."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x * std + mean).clamp(0, 1).mul(255).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()
