"""Image encoders: (B, 3, H, W) normalised frames -> (B, C, ceil(H/s), ceil(W/s)) feature maps.

The contract every encoder meets: :mod:`corr.encoders.contract`. Registry (``ENCODERS``):

- ``resnet18-crw``: ResNet-18 of the contrastive random walk (docs/objectives.md, CRW): reflect
  padding, layer3 and layer4 at stride 1, so layer3 (256-d) and layer4 (512-d) are at stride 8;
- ``resnet50``: the same for ResNet-50 (TimeCycle; layer3 1024-d);
- ``resnet18-s4`` / ``resnet18-s2``: ``resnet18-crw`` with layer2 (and the stem's max-pool) at
  stride 1 as well: stride 4 / 2 (docs/objectives.md, fine-grained pixel); same weights;
- ``pixel``: raw pixels averaged over s x s cells (3-d), no parameters;
- ``dino-vits16``, ``dino-vits8``, ``dino-vitb16``, ``dino-vitb8``, ``dinov2-vits14``,
  ``dinov2-vitb14`` and ``dinov2-vits14-reg``, ``dinov2-vitb14-reg``: self-supervised ViTs,
  stride = patch size (:mod:`corr.encoders.vit`);
- ``package.module:function``: a user's encoder (:func:`corr.encoders.registry.resolve_encoder`).

ResNets always hold layer1..layer4 (torchvision key names minus ``fc.*``); ``forward`` runs up
to ``out_layer`` (layer4 in training, layer3 in evaluation), :func:`encoder_features` any stage.
Weights: :func:`build_encoder` (``weights=FILE``) and :func:`load_checkpoint`, reading every
layout of :mod:`corr.encoders.formats` (ours, the published CRW, VFS, TimeCycle, DINO and
DINOv2 files, torchvision state dicts).
"""
from __future__ import annotations

from .contract import check_encoder, check_images
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_FORMATS, read_torch_file
from .loading import build_encoder, load_checkpoint, load_encoder_weights, load_weights_file
from .pixel import PixelEncoder
from .registry import ENCODERS, EVALUATION_DEFAULTS, VIT_ENCODERS, encoder_features, is_import_spec, resolve_encoder
from .resnet import STAGES, StrideEightResNet
from .vit import ViTEncoder, interpolate_pos_embed

__all__ = [
    "ENCODERS",
    "VIT_ENCODERS",
    "EVALUATION_DEFAULTS",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMATS",
    "STAGES",
    "StrideEightResNet",
    "PixelEncoder",
    "ViTEncoder",
    "interpolate_pos_embed",
    "build_encoder",
    "check_encoder",
    "check_images",
    "is_import_spec",
    "load_checkpoint",
    "load_encoder_weights",
    "load_weights_file",
    "read_torch_file",
    "encoder_features",
    "resolve_encoder",
]
