"""The encoder registry (``ENCODERS``), user encoders named ``package.module:function``, and
:func:`encoder_features`.

``resolve_encoder(name)`` gives the constructor of a registered name, or, for a name with a
colon, imports ``package.module`` and returns its ``function`` (called with the same keyword
arguments; what it returns must meet :mod:`corr.encoders.contract`).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from corr.errors import OptionError

from .mast import MASTEncoder
from .pixel import PixelEncoder
from .published import PUBLISHED_RESNETS
from .resnet import STAGES, StrideEightResNet, resnet18_crw, resnet18_stride2, resnet18_stride4, resnet50_stride8
from .vit import ViTEncoder

__all__ = ["ENCODERS", "EVALUATION_DEFAULTS", "VIT_ENCODERS", "is_import_spec", "resolve_encoder", "encoder_features"]


def _vit(arch: str, patch: int, family: str) -> Callable[..., ViTEncoder]:
    def build(features: str = "tokens") -> ViTEncoder:
        return ViTEncoder(arch=arch, patch=patch, family=family, features=features)

    build.__doc__ = f"{family} {arch}/{patch} (:class:`corr.encoders.vit.ViTEncoder`); features tokens|keys."
    return build


#: DINO and DINOv2 ViTs by the names of their released files' models.
VIT_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    **{f"dino-{arch}{patch}": _vit(arch, patch, "dino") for arch in ("vits", "vitb") for patch in (16, 8)},
    **{f"dinov2-{arch}14": _vit(arch, 14, "dinov2") for arch in ("vits", "vitb")},
    **{f"dinov2-{arch}14-reg": _vit(arch, 14, "dinov2-reg") for arch in ("vits", "vitb")},
}

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18-crw": resnet18_crw,
    "resnet50": resnet50_stride8,
    "resnet18-s4": resnet18_stride4,
    "resnet18-s2": resnet18_stride2,
    "pixel": PixelEncoder,
    **PUBLISHED_RESNETS,
    "mast": MASTEncoder,
    **VIT_ENCODERS,
}

# What load_checkpoint uses for evaluation unless the caller overrides it (docs/objectives.md, CRW:
# evaluation uses raw layer3 features).
EVALUATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18-crw": {"out_layer": "layer3"},
    "resnet50": {"out_layer": "layer3"},
    "resnet18-s4": {"out_layer": "layer3"},
    "resnet18-s2": {"out_layer": "layer3"},
    **{name: {"out_layer": build.evaluated_layer} for name, build in PUBLISHED_RESNETS.items()},
}


def is_import_spec(name: str) -> bool:
    """Whether ``name`` names a user encoder, ``package.module:function``."""
    return ":" in name


def resolve_encoder(name: str) -> Callable[..., nn.Module]:
    """The constructor of ``name``: ``ENCODERS[name]``, or the function of ``package.module:function``."""
    if not is_import_spec(name):
        if name not in ENCODERS:
            raise OptionError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}, or "
                             f"package.module:function")
        return ENCODERS[name]
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise OptionError(f"encoder {name!r}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise OptionError(f"encoder {name!r}: cannot import {module_name!r} ({error})") from error
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise OptionError(f"encoder {name!r}: {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise OptionError(f"encoder {name!r}: {attribute!r} is not callable")
    return function


def encoder_features(encoder: nn.Module, images: torch.Tensor, layer: Optional[str] = None,
                     prepared: bool = False) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, C, h, w)``: the encoder's output (``layer=None``), or the output of
    stage ``layer`` of a :class:`StrideEightResNet` (:meth:`StrideEightResNet.stage_features`).
    With ``prepared`` (ResNets only) ``images`` are already the network's input (its ``prepare``)."""
    if layer is None and not prepared:
        return encoder(images)
    if not isinstance(encoder, StrideEightResNet) or (layer is not None and layer not in STAGES):
        raise ValueError(f"layer={layer!r}, prepared={prepared} needs a ResNet encoder with stages {STAGES}; "
                         f"got {type(encoder).__name__} (use layer=None for its own output)")
    layer = layer or encoder.out_layer
    return encoder.stage_features(images, (layer,), prepared=prepared)[layer]
