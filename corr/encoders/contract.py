"""What every encoder is: the contract that registered and user-supplied encoders share.

An encoder is an ``nn.Module`` with an integer attribute ``stride`` (s) whose forward maps
normalised frames ``(B, 3, H, W)`` (``datasets.transforms.normalize_frames``: RGB, ImageNet
mean and standard deviation) to features ``(B, C, ceil(H/s), ceil(W/s))``; cell (i, j) covers
pixels [i s, (i+1) s) x [j s, (j+1) s) (:mod:`corr.geometry`), border cells may be partial.
``out_channels`` (C) is optional. Evaluation calls it in eval mode under ``torch.inference_mode``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["check_images", "check_encoder"]


def check_images(images: torch.Tensor, min_size: int = 1) -> None:
    """Raise ``ValueError`` unless ``images`` is ``(B, 3, H, W)`` with ``H, W >= min_size``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected normalised images shaped (B, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got {tuple(images.shape[-2:])}")


def check_encoder(encoder: object, source: str, probe: tuple[int, int] | None = (37, 53)) -> nn.Module:
    """``encoder`` if it meets the contract, else ``TypeError``/``ValueError`` naming ``source``.

    With ``probe = (H, W)`` one random frame of that size is run through it (in eval mode, no
    gradients) and the output's shape is checked against ``(1, C, ceil(H/s), ceil(W/s))``.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"{source} returned a {type(encoder).__name__}, not a torch.nn.Module")
    stride = getattr(encoder, "stride", None)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{source}: the encoder needs an integer attribute stride >= 1 (its output's cell size "
                         f"in pixels), got {stride!r}")
    if probe is not None:
        H, W = probe
        training = encoder.training
        encoder.eval()
        try:
            with torch.no_grad():
                parameter = next(encoder.parameters(), None)
                device = parameter.device if parameter is not None else "cpu"
                out = encoder(torch.randn(1, 3, H, W, device=device))
        finally:
            encoder.train(training)
        expected = (math.ceil(H / stride), math.ceil(W / stride))
        if not torch.is_tensor(out) or out.ndim != 4 or out.shape[0] != 1 or tuple(out.shape[-2:]) != expected:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"{source}: a (1, 3, {H}, {W}) frame gave {shape}; the encoder contract asks for "
                             f"(1, C, {expected[0]}, {expected[1]}) at stride {stride}")
    return encoder
