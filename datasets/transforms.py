"""The one image normalisation shared by training and evaluation, and the LAB input of LAB encoders.

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


def normalize_frames(frames: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """``uint8`` RGB frames ``(T, H, W, 3)`` or ``(H, W, 3)`` -> normalised ``(T, 3, H, W)`` float32.

    ``(x / 255 - mean) / std`` per channel, computed as ``(x - 255 mean) * (1 / (255 std))``
    after moving channels first while the data are still bytes (fewer float passes).
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB frames shaped (T, H, W, 3), got {tuple(x.shape)}")
    x = x.to(device=device).permute(0, 3, 1, 2).contiguous().float()
    shift = torch.tensor([255.0 * m for m in IMAGENET_MEAN], device=x.device).view(1, 3, 1, 1)
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=x.device).view(1, 3, 1, 1)
    return x.sub_(shift).mul_(scale)


def denormalize_frames(x: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_frames`: ``(T, 3, H, W)`` -> ``uint8 (T, H, W, 3)``."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x * std + mean).clamp(0, 1).mul(255).round().byte()
    return x.permute(0, 2, 3, 1).cpu().numpy()


#: LAB normalisation of the fine-grained pixel features (docs/objectives.md, fine-grained pixel):
#: ``(L - 50) / 50``, ``a / 127``, ``b / 127``.
LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)                   # D65 white point, X and Z divided by it


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in ``[0, 1]`` ``(..., 3, H, W)`` -> CIE LAB ``(..., 3, H, W)`` (L in [0, 100], a, b about
    [-127, 127]), OpenCV's ``COLOR_RGB2Lab`` for float images:

        c_lin = c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055)^2.4     (sRGB, c clipped to [0, 1])
        (X, Y, Z) = M c_lin / white,   f(t) = t^(1/3) if t > 0.008856 else 7.787 t + 16/116
        L = 116 f(Y) - 16 if Y > 0.008856 else 903.3 Y,   a = 500 (f(X) - f(Y)),   b = 200 (f(Y) - f(Z))
    """
    c = rgb.clamp(0, 1)
    linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    matrix = matrix / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device)[:, None]
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-3)
    y = xyz[..., 1, :, :]
    lightness = torch.where(y > 0.008856, 116 * fy - 16, 903.3 * y)
    return torch.stack([lightness, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def normalised_lab(frames: torch.Tensor) -> torch.Tensor:
    """Frames normalised by :func:`normalize_frames` ``(..., 3, H, W)`` -> LAB normalised with
    :data:`LAB_MEAN` / :data:`LAB_STD` (the input of a LAB encoder), same shape."""
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype, device=frames.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=frames.dtype, device=frames.device).view(shape)
    lab = rgb_to_lab(frames * std + mean)
    lab_mean = torch.tensor(LAB_MEAN, dtype=frames.dtype, device=frames.device).view(shape)
    lab_std = torch.tensor(LAB_STD, dtype=frames.dtype, device=frames.device).view(shape)
    return (lab - lab_mean) / lab_std
