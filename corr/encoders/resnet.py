"""ResNet encoders at stride 8 (and 4, 2): torchvision ResNets with strided stages set to stride 1.

Registered in :data:`corr.encoders.ENCODERS` as ``resnet18-crw``, ``resnet50``, ``resnet18-s4``
and ``resnet18-s2`` (see the package docstring). State-dict keys are torchvision's without
``fc.*``; :meth:`StrideEightResNet.stage_features` gives any stage's output.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torchvision

from .contract import check_images

__all__ = ["STAGES", "StrideEightResNet", "resnet18_crw", "resnet50_stride8", "resnet18_stride4", "resnet18_stride2"]

STAGES = ("layer1", "layer2", "layer3", "layer4")


class StrideEightResNet(nn.Module):
    """A torchvision ResNet cut to a stride-8 feature extractor.

    Changes to the torchvision network:
      - every conv of layer3 and layer4 has stride 1 (the first block's strided 3x3 conv and
        its 1x1 downsample conv included); no dilation. Only the stem conv, the max-pool
        and layer2 halve the resolution: layer1 is at stride 4, layer2..layer4 at stride 8.
      - every conv with padding > 0 (the 7x7 stem and all 3x3 convs) uses
        ``padding_mode`` ("reflect" by default, as in CRW; "zeros" gives torchvision's).
        The max-pool keeps its implicit -inf padding.
      - no avgpool / fc.

    Output size: each strided layer maps n -> ceil(n / 2), so H -> ceil(H / s).
    ``forward(images (B, 3, H, W)) -> (B, out_channels, ceil(H/s), ceil(W/s))``.
    State-dict keys equal torchvision's ``resnet{depth}`` keys without ``fc.*``.
    With reflect padding, H and W must be at least 9 (a padded map must be >= 2 wide).
    """

    _CHANNELS = {18: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}

    def __init__(self, depth: int = 18, out_layer: str = "layer3", padding_mode: str = "reflect"):
        super().__init__()
        if depth not in self._CHANNELS:
            raise ValueError(f"depth must be one of {sorted(self._CHANNELS)}, got {depth}")
        if out_layer not in STAGES:
            raise ValueError(f"out_layer must be one of {STAGES}, got {out_layer!r}")
        if padding_mode not in ("reflect", "zeros", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        for stage in (self.layer3, self.layer4):
            for conv in stage.modules():
                if isinstance(conv, nn.Conv2d):
                    conv.stride = (1, 1)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d) and any(p > 0 for p in conv.padding):
                conv.padding_mode = padding_mode

        self.depth = depth
        self.out_layer = out_layer
        self.padding_mode = padding_mode
        self.num_stages = STAGES.index(out_layer) + 1
        self.out_channels = self._CHANNELS[depth][self.num_stages - 1]
        self.stride = 4 if out_layer == "layer1" else 8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, min_size=9 if self.padding_mode != "zeros" else 1)
        return self.stage_features(images, (self.out_layer,))[self.out_layer]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input from normalised RGB frames ``(B, 3, H, W)`` (here: themselves; LAB
        encoders convert, :class:`corr.encoders.published.PublishedResNet`)."""
        return images

    def stage_features(self, images: torch.Tensor, layers: Sequence[str], prepared: bool = False
                       ) -> dict[str, torch.Tensor]:
        """The outputs of the stages ``layers`` (any of layer1..layer4) in one pass of the stem and
        the stages up to the last one asked for: ``(B, 3, H, W) -> {layer: (B, C_layer, h, w)}``.
        ``images`` are normalised RGB frames, or with ``prepared`` already the network's input
        (:meth:`prepare`)."""
        if not prepared:
            images = self.prepare(images)
        unknown = [name for name in layers if name not in STAGES]
        if unknown or not layers:
            raise ValueError(f"layers must be a non-empty subset of {STAGES}, got {list(layers)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # B, 64, H/4, W/4
        out = {}
        for name in STAGES[: max(STAGES.index(name) for name in layers) + 1]:
            x = getattr(self, name)(x)  # B, C_layer, H/s, W/s
            if name in layers:
                out[name] = x
        return out

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, out_layer={self.out_layer!r}, padding_mode={self.padding_mode!r}, "
                f"stride={self.stride}")


def resnet18_crw(out_layer: str = "layer3", padding_mode: str = "reflect") -> StrideEightResNet:
    """CRW encoder: ResNet-18, stride 8, reflect padding; layer3 256-d / layer4 512-d."""
    return StrideEightResNet(depth=18, out_layer=out_layer, padding_mode=padding_mode)


def resnet50_stride8(out_layer: str = "layer3", padding_mode: str = "reflect") -> StrideEightResNet:
    """ResNet-50, stride 8 (TimeCycle style); layer3 1024-d / layer4 2048-d."""
    return StrideEightResNet(depth=50, out_layer=out_layer, padding_mode=padding_mode)


def resnet18_stride4(out_layer: str = "layer3", padding_mode: str = "reflect") -> StrideEightResNet:
    """``resnet18-crw`` with layer2's strided 3x3 conv and downsample conv at stride 1: stride 4."""
    encoder = StrideEightResNet(depth=18, out_layer=out_layer, padding_mode=padding_mode)
    for conv in encoder.layer2.modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride = (1, 1)
    encoder.stride = 4
    return encoder


def resnet18_stride2(out_layer: str = "layer3", padding_mode: str = "reflect") -> StrideEightResNet:
    """``resnet18-s4`` with the stem's max-pool at stride 1 (a 3x3 max filter): stride 2."""
    encoder = resnet18_stride4(out_layer=out_layer, padding_mode=padding_mode)
    encoder.maxpool.stride = 1
    encoder.stride = 2
    return encoder
