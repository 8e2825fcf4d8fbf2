"""The raw-pixel baseline encoder (``pixel`` in :data:`corr.encoders.ENCODERS`)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import reduce

from .contract import check_images

__all__ = ["PixelEncoder"]


class PixelEncoder(nn.Module):
    """Raw-pixel baseline: the mean image value over each s x s cell (no parameters).

    out[b, c, i, j] = mean of images[b, c, y, x] over the valid pixels
    i*s <= y < min((i+1)*s, H), j*s <= x < min((j+1)*s, W);
    ``(B, 3, H, W) -> (B, 3, ceil(H/s), ceil(W/s))``. Partial border cells average only
    the pixels they contain.
    """

    out_channels = 3

    def __init__(self, stride: int = 8):
        super().__init__()
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride}")
        self.stride = int(stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        s = self.stride
        H, W = images.shape[-2:]
        h, w = math.ceil(H / s), math.ceil(W / s)
        padded = nn.functional.pad(images, (0, w * s - W, 0, h * s - H))  # zeros, B 3 h*s w*s
        sums = reduce(padded, "b c (h sh) (w sw) -> b c h w", "sum", sh=s, sw=s)
        rows = (H - s * torch.arange(h, device=images.device)).clamp(max=s)  # valid pixels per cell row
        cols = (W - s * torch.arange(w, device=images.device)).clamp(max=s)
        counts = (rows[:, None] * cols[None, :]).to(images.dtype)  # h, w
        return sums / counts

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
