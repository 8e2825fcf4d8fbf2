"""MAST's feature extractor (Lai et al. 2020): its own ResNet-18 and a 3x3 projection, on LAB.

Keys and layers are the authors' (their ``models/submodule.py`` ``ResNet18`` and
``models/mast.py``), so their ``state_dict`` entries load unchanged:

- ``feature_extraction.conv1``: 7x7 conv, stride 2, padding 3, no bias (``.0``), BN (``.1``),
  ReLU; no max-pool;
- ``feature_extraction.layer1..layer4``: two residual blocks each with 64, 128, 256, 256
  channels; only layer2's first block has stride 2. A block is
  ``relu(left(x) + shortcut(x))`` with ``left`` = conv3x3(stride) (``.0``), BN (``.1``), ReLU,
  conv3x3 (``.3``), BN (``.4``), and ``shortcut`` = conv1x1(stride) (``.0``) + BN (``.1``) where
  the stride or the channel count changes, else the identity;
- ``post_convolution``: 3x3 conv 256 -> 64, padding 1, with bias.

All convs zero-pad. Output stride 4 (stem and layer2 halve: H -> ceil(ceil(H / 2) / 2) =
ceil(H / 4)), 64 channels. Input: :func:`corr.encoders.lab.normalised_lab` (their loader:
``cv2.cvtColor(float32(BGR) / 255, COLOR_BGR2Lab)``, then mean (50, 0, 0), std (50, 127, 127)).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import check_images
from .lab import normalised_lab

__all__ = ["MASTEncoder"]


class _Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.left(x) + self.shortcut(x))


class _ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        channels = 64
        for index, (width, stride) in enumerate(((64, 1), (128, 2), (256, 1), (256, 1)), start=1):
            setattr(self, f"layer{index}", nn.Sequential(_Block(channels, width, stride), _Block(width, width, 1)))
            channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # B, 64, H/2, W/2
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # B, 256, H/4, W/4


class MASTEncoder(nn.Module):
    """MAST's encoder (module docstring): normalised RGB ``(B, 3, H, W)`` -> ``(B, 64, ceil(H/4), ceil(W/4))``."""

    stride = 4
    out_channels = 64

    def __init__(self):
        super().__init__()
        self.feature_extraction = _ResNet18()
        self.post_convolution = nn.Conv2d(256, 64, 3, stride=1, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return self.post_convolution(self.feature_extraction(normalised_lab(images)))
