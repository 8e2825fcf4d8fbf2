"""ResNets of published correspondence models that read LAB: Spa-then-Temp, FGVC, UVC.

Each is a torchvision ResNet (the keys of :class:`corr.encoders.resnet.StrideEightResNet`,
zero padding, no dilation) with the authors' stem pooling, stage strides and input step:

- stem: 7x7 conv at stride 2, BN, ReLU, then ``stem_pool``: "max" (torchvision's 3x3 max-pool,
  stride 2, padding 1), "avg" (3x3 average pool, stride 2, padding 1, zero padding counted)
  or "none";
- ``strides = (s1, s2, s3, s4)``: the stride of each stage's first block (its strided 3x3
  conv, conv1 of a basic block and conv2 of a bottleneck, and its 1x1 downsample conv);
  every other conv has stride 1. Output stride ``2 * (2 if pooled else 1) * s1 * ... * s_k``
  up to the evaluated stage k; a stride-s conv maps n -> ceil(n / s), so H -> ceil(H / stride);
- ``input``: "lab" = :func:`corr.encoders.lab.normalised_lab` (OpenCV LAB of the float image,
  mean (50, 0, 0), std (50, 127, 127)); "lightness" (UVC) = the 8-bit L channel of OpenCV's
  ``uint8`` conversion, ``g = L8 / 256`` (UVC's ``((L8 - 128) / 128 + 1) / 2``), copied to three
  channels and normalised with the ImageNet mean and std, ``(g - mean_c) / std_c``.

Registered (:data:`corr.encoders.ENCODERS`):

=================== ====== ========= ================ ======= ===============================
name                depth  stem pool strides          output  authors' configuration
=================== ====== ========= ================ ======= ===============================
``resnet18-stt``    18     none      (1, 2, 2, 1)     layer3  Spa-then-Temp ``res18_d8.py``, stride 8
``resnet50-stt``    50     none      (1, 2, 2, 1)     layer3  ``res50_d8.py``, stride 8
``resnet18-stt-s4`` 18     avg       (1, 1, 1, 1)     layer3  ``res18_d4.py``, stride 4
``resnet50-stt-s4`` 50     avg       (1, 1, 1, 1)     layer3  ``res50_d4.py``, stride 4
``resnet18-fgvc``   18     none      (1, 1, 1, 4)     layer3  FGVC ``res18_d1_eval.py``, stride 2
``resnet18-uvc``    18     max       (1, 2, 1, 1)     layer4  UVC ``test.py`` (``uselayer=4``), stride 8
=================== ====== ========= ================ ======= ===============================

The Spa-then-Temp and FGVC variants take the same weights (``--checkpoint-format``
``spa-then-temp`` / ``fgvc``); ``--encoder`` picks the stride.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

from .lab import normalised_lab, opencv_lab
from .resnet import STAGES, StrideEightResNet

__all__ = ["PublishedResNet", "PUBLISHED_RESNETS", "LAB_ENCODERS", "reads_lab"]

_POOLS: dict[str, Callable[[], nn.Module]] = {
    "max": lambda: nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    "avg": lambda: nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
    "none": nn.Identity,
}


def _set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """The first block's strided 3x3 conv and downsample conv at ``stride``; all other convs at 1."""
    for conv in stage.modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride = (1, 1)
    first = stage[0]
    if stride != 1 and first.downsample is None:
        raise ValueError("a stage without a downsample branch cannot be strided")
    strided = first.conv2 if isinstance(first, torchvision.models.resnet.Bottleneck) else first.conv1
    strided.stride = (stride, stride)
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)


class PublishedResNet(StrideEightResNet):
    """A ResNet with a published model's stem pool, stage strides and input (module docstring).

    ``forward(images (B, 3, H, W) normalised RGB) -> (B, C, ceil(H / stride), ceil(W / stride))``;
    :meth:`stage_features` converts the input the same way (:meth:`prepare`), unless ``prepared``.
    """

    def __init__(self, depth: int = 18, out_layer: str = "layer3", stem_pool: str = "none",
                 strides: Sequence[int] = (1, 2, 2, 1), input: str = "lab", zero_init_residual: bool = False):
        super().__init__(depth=depth, out_layer=out_layer, padding_mode="zeros")
        if stem_pool not in _POOLS:
            raise ValueError(f"stem_pool must be one of {sorted(_POOLS)}, got {stem_pool!r}")
        if len(strides) != 4 or any(s < 1 for s in strides):
            raise ValueError(f"strides must be four integers >= 1, got {tuple(strides)}")
        if input not in ("lab", "lightness"):
            raise ValueError(f"input must be 'lab' or 'lightness', got {input!r}")
        self.maxpool = _POOLS[stem_pool]()
        for name, stride in zip(STAGES, strides):
            _set_stage_stride(getattr(self, name), stride)
        self.stem_pool, self.strides, self.input = stem_pool, tuple(strides), input
        if zero_init_residual:              # each block's last BatchNorm starts at 0 (the block starts as identity)
            for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
                nn.init.zeros_(block.bn3.weight if hasattr(block, "bn3") else block.bn2.weight)

        self.stride = 2 * (1 if stem_pool == "none" else 2) * math.prod(strides[: self.num_stages])

    @property
    def reads_lab(self) -> bool:
        return self.input == "lab"

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised RGB ``(B, 3, H, W)`` -> the network's input ``(B, 3, H, W)`` (module docstring)."""
        if self.input == "lab":
            return normalised_lab(images)
        lightness = opencv_lab(images, "uint8")[:, :1] / 256  # B, 1, H, W
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        return (lightness.expand(-1, 3, -1, -1) - mean) / std


    def extra_repr(self) -> str:
        return (f"depth={self.depth}, out_layer={self.out_layer!r}, stem_pool={self.stem_pool!r}, "
                f"strides={self.strides}, input={self.input!r}, stride={self.stride}")


def _published(depth: int, default_layer: str, stem_pool: str, strides: tuple[int, ...], input: str,
               doc: str, zero_init_residual: bool = False) -> Callable[..., PublishedResNet]:
    def build(out_layer: str = default_layer) -> PublishedResNet:
        return PublishedResNet(depth, out_layer, stem_pool, strides, input, zero_init_residual)

    build.__doc__ = doc
    build.input, build.evaluated_layer = input, default_layer
    return build


PUBLISHED_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18-stt": _published(18, "layer3", "none", (1, 2, 2, 1), "lab", "Spa-then-Temp ResNet-18, stride 8, LAB."),
    "resnet50-stt": _published(50, "layer3", "none", (1, 2, 2, 1), "lab", "Spa-then-Temp ResNet-50, stride 8, LAB."),
    "resnet18-stt-s4": _published(18, "layer3", "avg", (1, 1, 1, 1), "lab",
                                  "Spa-then-Temp ResNet-18, stride 4 (average-pooled stem), LAB."),
    "resnet50-stt-s4": _published(50, "layer3", "avg", (1, 1, 1, 1), "lab",
                                  "Spa-then-Temp ResNet-50, stride 4 (average-pooled stem), LAB."),
    "resnet18-fgvc": _published(18, "layer3", "none", (1, 1, 1, 4), "lab", "FGVC ResNet-18, stride 2, LAB "
                                "(zero-initialised residuals, as their training builds it).", zero_init_residual=True),
    "resnet18-uvc": _published(18, "layer4", "max", (1, 2, 1, 1), "lightness",
                               "UVC ResNet-18, layer4 at stride 8, the LAB lightness as grey input."),
}


#: The encoders that read LAB (the fine-grained pixel loss's input).
LAB_ENCODERS = tuple(name for name, build in PUBLISHED_RESNETS.items() if build.input == "lab")


def reads_lab(encoder: nn.Module) -> bool:
    """Whether ``encoder`` converts its normalised RGB input to normalised LAB (:meth:`PublishedResNet.prepare`)."""
    return isinstance(encoder, PublishedResNet) and encoder.reads_lab
