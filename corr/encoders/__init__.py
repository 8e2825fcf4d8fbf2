"""Image encoders: (B, 3, H, W) normalised frames -> (B, C, ceil(H/s), ceil(W/s)) feature maps.

The contract every encoder meets: :mod:`corr.encoders.contract`. Registry (``ENCODERS``):

- ``resnet18-crw``: ResNet-18 of the contrastive random walk (docs/objectives.md, CRW): reflect
  padding, layer3 and layer4 at stride 1, so layer3 (256-d) and layer4 (512-d) are at stride 8;
- ``resnet50``: the same for ResNet-50 (TimeCycle; layer3 1024-d);
- ``resnet18-s4`` / ``resnet18-s2``: ``resnet18-crw`` with layer2 (and the stem's max-pool) at
  stride 1 as well: stride 4 / 2 (docs/objectives.md, fine-grained pixel); same weights;
- ``pixel``: raw pixels averaged over s x s cells (3-d), no parameters;
- ``resnet18-stt``, ``resnet50-stt`` (stride 8), ``resnet18-stt-s4``, ``resnet50-stt-s4``
  (stride 4), ``resnet18-fgvc`` (stride 2), ``resnet18-uvc`` (layer4, stride 8): the ResNets of
  Spa-then-Temp, FGVC and UVC with their stem, strides and LAB input
  (:mod:`corr.encoders.published`, :mod:`corr.encoders.lab`);
- ``mast``: MAST's own ResNet-18 and projection, 64-d, stride 4, LAB (:mod:`corr.encoders.mast`);
- ``dino-vits16``, ``dino-vits8``, ``dino-vitb16``, ``dino-vitb8``, ``dinov2-vits14``,
  ``dinov2-vitb14`` and ``dinov2-vits14-reg``, ``dinov2-vitb14-reg``: self-supervised ViTs,
  stride = patch size (:mod:`corr.encoders.vit`);
- ``package.module:function``: a user's encoder (:func:`corr.encoders.registry.resolve_encoder`).

ResNets always hold layer1..layer4 (torchvision key names minus ``fc.*``); ``forward`` runs up
to ``out_layer`` (layer4 in training, layer3 in evaluation), :func:`encoder_features` any stage.
Weights: :func:`build_encoder` (``weights=FILE``) and :func:`load_checkpoint`, reading every
layout of :mod:`corr.encoders.formats` (ours, the published CRW, VFS, Spa-then-Temp, FGVC,
MAST, UVC, TimeCycle, DINO and DINOv2 files, torchvision state dicts).
"""
from __future__ import annotations

from .contract import check_encoder, check_images
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_FORMATS, read_torch_file
from .lab import normalised_lab, opencv_lab
from .loading import build_encoder, load_checkpoint, load_encoder_weights, load_weights_file
from .mast import MASTEncoder
from .pixel import PixelEncoder
from .published import LAB_ENCODERS, PublishedResNet, reads_lab
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
    "PublishedResNet",
    "MASTEncoder",
    "normalised_lab",
    "opencv_lab",
    "ViTEncoder",
    "interpolate_pos_embed",
    "build_encoder",
    "check_encoder",
    "check_images",
    "is_import_spec",
    "LAB_ENCODERS",
    "reads_lab",
    "load_checkpoint",
    "load_encoder_weights",
    "load_weights_file",
    "read_torch_file",
    "encoder_features",
    "resolve_encoder",
]
