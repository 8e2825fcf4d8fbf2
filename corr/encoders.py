"""Image encoders: (B, 3, H, W) normalised frames -> (B, C, ceil(H/s), ceil(W/s)) feature maps.

Inputs are normalised with ``datasets.transforms.normalize_frames``. Every encoder has
``stride`` (s) and ``out_channels`` (C); cell (i, j) covers pixels [i s, (i+1) s) x [j s, (j+1) s)
(:mod:`corr.geometry`), border cells may be partial. Registry (``ENCODERS``):

- ``resnet18-crw``: ResNet-18 of the contrastive random walk (docs/objectives.md, CRW): reflect
  padding, layer3 and layer4 at stride 1, so layer3 (256-d) and layer4 (512-d) are at stride 8;
- ``resnet50``: the same for ResNet-50 (TimeCycle; layer3 1024-d);
- ``resnet18-s4`` / ``resnet18-s2``: ``resnet18-crw`` with layer2 (and the stem's max-pool) at
  stride 1 as well: stride 4 / 2 (docs/objectives.md, fine-grained pixel); same weights;
- ``resnet18-fgvc``: the released fine-grained pixel encoder (docs/objectives.md, fine-grained
  pixel): ResNet-18 without max-pool, layer1..layer4 strides (1, 1, 1, 4), zero padding, the
  last BatchNorm of each block initialised to 0; layer3 (256-d) at stride 2, layer4 at stride 8;
  LAB input (:func:`datasets.transforms.normalised_lab`, applied inside the encoder);
- ``pixel``: raw pixels averaged over s x s cells (3-d), no parameters.

ResNets always hold layer1..layer4 (torchvision key names minus ``fc.*``); ``forward`` runs up
to ``out_layer`` (layer4 in training, layer3 in evaluation), :func:`encoder_features` any stage.
Checkpoints (:func:`load_checkpoint`): ours (``{"format": "corr-checkpoint-v1", "encoder":
{"name", "kwargs", "state_dict"}, ...}``), the published CRW layout (``{"model": ...}``, keys
``[module.]encoder.model.<torchvision key>``) or a plain ResNet state dict.
"""
from __future__ import annotations

import argparse
import collections
import math
import pathlib
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torchvision
from einops import reduce

from corr.io import file_sha256
from datasets.transforms import normalised_lab

__all__ = [
    "ENCODERS",
    "CHECKPOINT_FORMAT",
    "StrideEightResNet",
    "LabResNet",
    "PixelEncoder",
    "build_encoder",
    "load_checkpoint",
    "load_encoder_weights",
    "encoder_features",
]

CHECKPOINT_FORMAT = "corr-checkpoint-v1"
STAGES = ("layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------- encoders


def _check_images(images: torch.Tensor, min_size: int = 1) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected normalised images shaped (B, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got {tuple(images.shape[-2:])}")


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
        _check_images(images, min_size=9 if self.padding_mode != "zeros" else 1)
        return self.stage_features(images, (self.out_layer,))[self.out_layer]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input from normalised RGB frames ``(B, 3, H, W)`` (here: themselves)."""
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


class LabResNet(StrideEightResNet):
    """``resnet18-fgvc`` (module docstring): the authors' ResNet-18 with strides (1, 1, 1, 4) and
    no max-pool, reading normalised LAB. Output stride 2 up to layer3 (layer1..layer3 keep the
    stem's resolution, ceil(H / 2)), 8 at layer4. ``forward`` takes normalised RGB frames like
    every encoder; :meth:`prepare` turns them into the network's LAB input."""

    def __init__(self, out_layer: str = "layer3", padding_mode: str = "zeros"):
        super().__init__(depth=18, out_layer=out_layer, padding_mode=padding_mode)
        self.maxpool = nn.Identity()
        for conv in self.layer2.modules():
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
        first = self.layer4[0]
        first.conv1.stride = first.downsample[0].stride = (4, 4)
        for block in (*self.layer1, *self.layer2, *self.layer3, *self.layer4):
            nn.init.zeros_(block.bn2.weight)                                  # zero-initialised residuals
        self.stride = 8 if out_layer == "layer4" else 2

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised RGB ``(B, 3, H, W)`` -> normalised LAB (:func:`datasets.transforms.normalised_lab`)."""
        return normalised_lab(images)


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
        _check_images(images)
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


ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18-crw": resnet18_crw,
    "resnet50": resnet50_stride8,
    "resnet18-s4": resnet18_stride4,
    "resnet18-s2": resnet18_stride2,
    "resnet18-fgvc": LabResNet,
    "pixel": PixelEncoder,
}

# What load_checkpoint uses for evaluation unless the caller overrides it (docs/objectives.md, CRW:
# evaluation uses raw layer3 features).
EVALUATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18-crw": {"out_layer": "layer3"},
    "resnet50": {"out_layer": "layer3"},
    "resnet18-s4": {"out_layer": "layer3"},
    "resnet18-s2": {"out_layer": "layer3"},
    "resnet18-fgvc": {"out_layer": "layer3"},
}


# --------------------------------------------------------------------------- weights


def load_encoder_weights(encoder: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load ``state_dict`` into ``encoder`` strictly.

    The only tolerance: BatchNorm ``num_batches_tracked`` counters absent from old
    torchvision files keep the encoder's values. Any missing, unexpected or mis-shaped key
    raises ``ValueError`` listing them (first 10 of each, with counts) and naming ``source``.
    """
    expected = encoder.state_dict()
    state = dict(state_dict)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__},"
        f" model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and (not torch.is_tensor(state[k]) or state[k].shape != expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"weights in {source} do not match the {type(encoder).__name__} encoder:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f", ... ({len(keys) - 10} more)" if len(keys) > 10 else ""
                lines.append(f"  {len(keys)} {label} keys: {', '.join(keys[:10])}{more}")
        raise ValueError("\n".join(lines))
    encoder.load_state_dict(state, strict=True)


def build_encoder(name: str, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build ``ENCODERS[name](**kwargs)``; optionally load ``weights`` from a local file.

    ``weights`` is typically a torchvision ImageNet state dict (e.g. resnet18-f37072fd.pth);
    ``fc.*`` keys are ignored and everything else must match (:func:`load_encoder_weights`).
    Our checkpoint format and the CRW layout are accepted too (their encoder weights are
    used). Nothing is downloaded.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}")
    encoder = ENCODERS[name](**kwargs)
    if weights is not None:
        if not any(True for _ in encoder.parameters()):
            raise ValueError(f"encoder {name!r} has no weights to load (got weights={weights})")
        found = _read_encoder_state(_torch_load(weights), weights)
        load_encoder_weights(encoder, found.state_dict, str(weights))
    return encoder


# --------------------------------------------------------------------------- checkpoints


@dataclass
class _EncoderState:
    """Encoder weights found in a file, whatever its layout."""

    format: str
    state_dict: dict[str, torch.Tensor]
    name: str | None = None  # None: not recorded in the file
    kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# Classes that appear in reference checkpoints (argparse args, LR-scheduler milestones,
# paths in configs) and are safe to rebuild; anything else needs allow_pickle=True.
_SAFE_GLOBALS = [argparse.Namespace, collections.Counter, collections.OrderedDict,
                 pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def _torch_load(path: str | Path, allow_pickle: bool = False) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        raise ValueError(
            f"{path} holds Python objects that a weights-only load refuses"
            f"{' (' + lines[0] + ')' if lines else ''}; if you trust the file, pass allow_pickle=True"
        ) from error
    except Exception as error:  # truncated or foreign files fail in many ways inside the unpickler
        raise ValueError(f"cannot read {path} as a torch file ({type(error).__name__}: {error})") from error


def _strip_module_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _is_tensor_dict(obj: Any, allow_empty: bool = False) -> bool:
    return isinstance(obj, Mapping) and (allow_empty or len(obj) > 0) and all(torch.is_tensor(v) for v in obj.values())


def _resnet_name_from_keys(keys) -> str:
    """Bottleneck blocks have conv3: ResNet-50; basic blocks: ResNet-18."""
    return "resnet50" if "layer1.0.conv3.weight" in keys else "resnet18-crw"


# Early reference checkpoints wrapped padded convs as Sequential(pad, conv):
# "...conv1.1.weight" -> "...conv1.weight" (the reference test script renames them the same way).
_WRAPPED_CONV = re.compile(r"(^|\.)(conv[12])\.1\.weight$")


def _read_encoder_state(obj: Any, path: str | Path) -> _EncoderState:
    """Recognise one of the three layouts (module docstring) and return its encoder weights."""
    if isinstance(obj, Mapping) and "format" in obj:
        if obj["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {obj['format']!r} "
                             f"(expected {CHECKPOINT_FORMAT!r})")
        enc = obj.get("encoder")
        if not (isinstance(enc, Mapping) and {"name", "state_dict"} <= set(enc)
                and _is_tensor_dict(enc["state_dict"], allow_empty=True)):
            found = sorted(enc) if isinstance(enc, Mapping) else type(enc).__name__
            raise ValueError(f"{path}: 'encoder' entry must hold 'name', 'kwargs' and a 'state_dict' of tensors; "
                             f"found {found}")
        info = {k: obj.get(k) for k in ("step", "config", "losses")}
        state = {_strip_module_prefix(k): v for k, v in enc["state_dict"].items()}  # DDP-wrapped saves
        return _EncoderState(CHECKPOINT_FORMAT, state, enc["name"], dict(enc.get("kwargs") or {}), info)

    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and any(
        _strip_module_prefix(k).startswith("encoder.model.") for k in obj["model"]
    ):
        state, ignored = {}, []
        for key, value in obj["model"].items():
            k = _strip_module_prefix(key)
            if k.startswith("encoder.model.") and not k.startswith("encoder.model.fc."):
                state[_WRAPPED_CONV.sub(r"\1\2.weight", k[len("encoder.model."):])] = value
            else:
                ignored.append(key)
        args = obj.get("args")
        model_type = args.get("model_type") if isinstance(args, Mapping) else getattr(args, "model_type", None)
        # Reference model types: "scratch" = reflect padding; the others keep zero padding.
        padding_mode = "reflect" if model_type in (None, "scratch") else "zeros"
        info = {"step": None, "epoch": obj.get("epoch"), "ignored_keys": ignored, "reference_model_type": model_type}
        return _EncoderState("crw-reference", state, _resnet_name_from_keys(state), {"padding_mode": padding_mode},
                             info)

    if _is_tensor_dict(obj) and "conv1.weight" in {_strip_module_prefix(k) for k in obj}:
        state = {_strip_module_prefix(k): v for k, v in obj.items()}
        ignored = [k for k in state if k.startswith("fc.")]
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return _EncoderState("torchvision-state-dict", state, None, {}, {"step": None, "ignored_keys": ignored})

    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in keys[:20])
        more = f", ... ({len(keys) - 20} more)" if len(keys) > 20 else ""
        raise ValueError(
            f"{path}: unrecognised checkpoint layout; expected a {CHECKPOINT_FORMAT!r} dict, a CRW dict with 'model' "
            f"holding 'encoder.model.*' keys, or a ResNet state dict with 'conv1.weight'. Found {len(keys)} "
            f"top-level keys: {{{shown}{more}}}"
        )
    raise ValueError(f"{path}: unrecognised checkpoint layout; found a {type(obj).__name__}, expected a dict")


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    name: str | None = None,
    allow_pickle: bool = False,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an encoder from a checkpoint file, ready for evaluation.

    Args:
        path: our ``corr-checkpoint-v1`` file, a reference CRW checkpoint, or a plain
            torchvision-style ResNet state dict (see the module docstring).
        device: where the returned encoder lives.
        name: encoder name for a plain state dict (inferred from its keys when omitted:
            bottleneck blocks -> "resnet50", else "resnet18-crw"); must agree with the
            name a checkpoint records.
        allow_pickle: read files that need full unpickling (only for trusted files).
        **overrides: constructor kwargs replacing the recorded ones. By default ResNets are
            rebuilt with ``out_layer="layer3"`` (evaluation features, docs/objectives.md, CRW).

    Returns:
        ``(encoder in eval mode on device, info)`` with info keys "encoder", "kwargs",
        "format", "sha256", "path", "step", "layer4_loaded" and, where the file has them,
        "config", "losses", "epoch", "ignored_keys", "reference_model_type".

    A file with no layer4 weights (the reference evaluation drops layer4) loads as long as
    the requested out_layer does not use layer4; layer4 then keeps its random init and
    ``info["layer4_loaded"]`` is False.
    """
    path = Path(path)
    found = _read_encoder_state(_torch_load(path, allow_pickle), path)
    if name is not None and found.name is not None and name != found.name:
        raise ValueError(f"{path} holds a {found.name!r} encoder, but name={name!r} was requested")
    encoder_name = found.name or name or _resnet_name_from_keys(found.state_dict)
    if encoder_name not in ENCODERS:
        raise ValueError(f"{path}: unknown encoder {encoder_name!r}; known encoders: {', '.join(ENCODERS)}")
    kwargs = {**found.kwargs, **EVALUATION_DEFAULTS.get(encoder_name, {}), **overrides}
    encoder = ENCODERS[encoder_name](**kwargs)

    state = found.state_dict
    layer4_loaded = any(k.startswith("layer4.") for k in state)
    if not layer4_loaded and getattr(encoder, "out_layer", None) in ("layer1", "layer2", "layer3"):
        state = {**state, **{k: v for k, v in encoder.state_dict().items() if k.startswith("layer4.")}}
    load_encoder_weights(encoder, state, str(path))

    info = {
        "encoder": encoder_name,
        "kwargs": kwargs,
        "format": found.format,
        "sha256": file_sha256(path),
        "path": str(path),
        "layer4_loaded": layer4_loaded if hasattr(encoder, "layer4") else None,
        **found.info,
    }
    return encoder.to(device).eval(), info
