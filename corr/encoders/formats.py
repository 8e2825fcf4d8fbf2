"""Checkpoint layouts: read a file and find the encoder weights in it, whoever wrote it.

Each layout (``CHECKPOINT_FORMATS``) recognises its files and converts their key names and
tensor shapes to those of an encoder of :data:`corr.encoders.ENCODERS`:

- ``corr-checkpoint-v1`` (ours): ``{"format", "encoder": {"name", "kwargs", "state_dict"}, ...}``;
- ``crw-reference`` (Jabri et al.): ``{"model": {"[module.]encoder.model.<torchvision key>"}, "args"}``;
  padded convs of early files wrapped as ``conv1.1.weight``; reflect padding unless
  ``args.model_type`` is not "scratch";
- ``torchvision-state-dict``: a plain ResNet state dict (``conv1.weight``, ``fc.*`` ignored);
- ``vfs`` (Xu & Wang, mmaction2 layout): ``{"state_dict": {"backbone.<mmcv ConvModule key>"}, "meta"}``,
  i.e. ``conv1.conv.weight`` / ``conv1.bn.*`` for torchvision's ``conv1.weight`` / ``bn1.*``,
  ``layerI.J.convK.conv|bn`` for ``layerI.J.convK`` / ``layerI.J.bnK`` and
  ``layerI.J.downsample.conv|bn`` for ``downsample.0|1``; zero padding; heads ignored;
- ``timecycle`` (Wang et al.): ``{"state_dict": {"[module.]encoderVideo.<torchvision key>"}}``
  of an inflated ResNet-50: every conv kernel is 3-D ``(O, I, 1, k, k)`` with temporal size 1
  and is squeezed to ``(O, I, k, k)``; zero padding; the tracker head (``afterconv*``, ...) ignored;
- ``spa-then-temp`` (Li & Liu) and ``fgvc`` (Li et al.): the same mmcv layout as ``vfs`` for
  ``resnet18-stt`` / ``resnet50-stt`` (or the stride-4 ``-s4`` variants, chosen with
  ``--encoder``) and ``resnet18-fgvc`` (:mod:`corr.encoders.published`, LAB input). Recognised
  when the file also holds the training teacher (``backbone_t.*``, resp. ``teacher.*``);
  a file holding ``backbone.*`` alone reads as ``vfs`` unless the format is named;
- ``mast`` (Lai et al.): ``{"state_dict": {"feature_extraction.*", "post_convolution.*", ...}}``,
  the authors' key names of :class:`corr.encoders.mast.MASTEncoder`, loaded unchanged;
- ``uvc`` (Li et al. 2019): ``{"state_dict": {"[module.]gray_encoder.<torchvision key>", ...}}``
  -> ``resnet18-uvc``; the colour auto-encoder (``rgb_encoder``, ``decoder``) and the
  ``normalize`` constants are ignored;
- ``dino`` / ``dinov2``: the authors' ViT state dicts (:mod:`corr.encoders.vit`), plain or the
  ``teacher`` (else ``student``) entry of a full training checkpoint, ``module.`` and
  ``backbone.`` prefixes stripped, projection heads (``head.*``) ignored. The model
  (size, patch, registers) is read from the shapes.

:func:`read_encoder_state` tries them in that order (or uses the one named).
"""
from __future__ import annotations

import argparse
import collections
import errno
import pathlib
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from corr.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_FORMATS", "EncoderState", "read_torch_file", "read_encoder_state",
           "is_gmrw", "gmrw_key", "gmrw_state",
           "resnet_name_from_keys"]

CHECKPOINT_FORMAT = "corr-checkpoint-v1"


@dataclass
class EncoderState:
    """Encoder weights found in a file, whatever its layout."""

    format: str
    state_dict: dict[str, torch.Tensor]
    name: Optional[str] = None  # None: not recorded in the file
    kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    variants: tuple[str, ...] = ()  # other encoders the same weights build (e.g. another stride)


# Classes that appear in reference checkpoints (argparse args, LR-scheduler milestones,
# paths in configs) and are safe to rebuild; anything else is refused.
_SAFE_GLOBALS = [argparse.Namespace, collections.Counter, collections.OrderedDict,
                 pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath]


def read_torch_file(path: str | Path, allow_pickle: bool = False) -> Any:
    """The object a ``torch.save`` file holds, read weights-only (plus :data:`_SAFE_GLOBALS`), on the CPU.

    A missing file is a ``FileNotFoundError``; a truncated, corrupt or foreign file, or one
    holding other Python objects, a :class:`corr.errors.CheckpointError` naming the file.
    ``allow_pickle`` (trusted files only) unpickles anything; no message ever suggests it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", str(path))
    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if "Unsupported global" in line]
        if not lines:
            raise CheckpointError(f"{path}: not a readable PyTorch file (corrupt, or another kind of file)") from error
        raise CheckpointError(f"{path} holds Python objects a weights-only load refuses ({lines[0]}); save its "
                              "tensors as a plain state dict") from error
    except Exception as error:  # truncated or foreign files fail in many ways inside the unpickler
        raise CheckpointError(f"{path}: not a readable PyTorch file (truncated, corrupt, or another kind of file; "
                              f"{type(error).__name__})") from error


def _strip_prefixes(key: str, prefixes: tuple[str, ...] = ("module.",)) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def _is_tensor_dict(obj: Any, allow_empty: bool = False) -> bool:
    return isinstance(obj, Mapping) and (allow_empty or len(obj) > 0) and all(torch.is_tensor(v) for v in obj.values())


def resnet_name_from_keys(keys) -> str:
    """Bottleneck blocks have conv3: ResNet-50; basic blocks: ResNet-18."""
    return "resnet50" if "layer1.0.conv3.weight" in keys else "resnet18-crw"


# --------------------------------------------------------------------------- ours, CRW, torchvision


def _is_ours(obj: Any) -> bool:
    return isinstance(obj, Mapping) and "format" in obj


def _ours(obj: Mapping, path: str | Path) -> EncoderState:
    if obj["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {obj['format']!r} "
                              f"(expected {CHECKPOINT_FORMAT!r})")
    enc = obj.get("encoder")
    if not (isinstance(enc, Mapping) and {"name", "state_dict"} <= set(enc)
            and _is_tensor_dict(enc["state_dict"], allow_empty=True)):
        found = sorted(enc) if isinstance(enc, Mapping) else type(enc).__name__
        raise CheckpointError(f"{path}: 'encoder' entry must hold 'name', 'kwargs' and a 'state_dict' of tensors; "
                         f"found {found}")
    info = {k: obj.get(k) for k in ("step", "config", "losses")}
    state = {_strip_prefixes(k): v for k, v in enc["state_dict"].items()}  # DDP-wrapped saves
    return EncoderState(CHECKPOINT_FORMAT, state, enc["name"], dict(enc.get("kwargs") or {}), info)


def _is_crw(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and any(
        _strip_prefixes(k).startswith("encoder.model.") for k in obj["model"])


# Early reference checkpoints wrapped padded convs as Sequential(pad, conv):
# "...conv1.1.weight" -> "...conv1.weight" (the reference test script renames them the same way).
_WRAPPED_CONV = re.compile(r"(^|\.)(conv[12])\.1\.weight$")


def _crw(obj: Mapping, path: str | Path) -> EncoderState:
    state, ignored = {}, []
    for key, value in obj["model"].items():
        k = _strip_prefixes(key)
        if k.startswith("encoder.model.") and not k.startswith("encoder.model.fc."):
            state[_WRAPPED_CONV.sub(r"\1\2.weight", k[len("encoder.model."):])] = value
        else:
            ignored.append(key)
    args = obj.get("args")
    model_type = args.get("model_type") if isinstance(args, Mapping) else getattr(args, "model_type", None)
    # Reference model types: "scratch" = reflect padding; the others keep zero padding.
    padding_mode = "reflect" if model_type in (None, "scratch") else "zeros"
    info = {"step": None, "epoch": obj.get("epoch"), "ignored_keys": ignored, "reference_model_type": model_type}
    return EncoderState("crw-reference", state, resnet_name_from_keys(state), {"padding_mode": padding_mode}, info)


def _is_torchvision(obj: Any) -> bool:
    return _is_tensor_dict(obj) and "conv1.weight" in {_strip_prefixes(k) for k in obj}


def _torchvision(obj: Mapping, path: str | Path) -> EncoderState:
    state = {_strip_prefixes(k): v for k, v in obj.items()}
    ignored = [k for k in state if k.startswith("fc.")]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    return EncoderState("torchvision-state-dict", state, None, {}, {"step": None, "ignored_keys": ignored})


# --------------------------------------------------------------------------- VFS (mmaction2)


def _is_vfs(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and any(
        _strip_prefixes(k) == "backbone.conv1.conv.weight" for k in obj["state_dict"])


_MM_STEM = re.compile(r"^conv1\.(conv|bn)\.")
_MM_BLOCK = re.compile(r"^(layer\d+\.\d+)\.(conv\d)\.(conv|bn)\.")
_MM_DOWN = re.compile(r"^(layer\d+\.\d+)\.downsample\.(conv|bn)\.")


def _mmcv_to_torchvision(key: str) -> str:
    """An mmcv ConvModule ResNet key -> torchvision's (module docstring, ``vfs``)."""
    if m := _MM_STEM.match(key):
        return ("conv1." if m[1] == "conv" else "bn1.") + key[m.end():]
    if m := _MM_BLOCK.match(key):
        name = m[2] if m[3] == "conv" else m[2].replace("conv", "bn")
        return f"{m[1]}.{name}." + key[m.end():]
    if m := _MM_DOWN.match(key):
        return f"{m[1]}.downsample.{0 if m[2] == 'conv' else 1}." + key[m.end():]
    raise CheckpointError(f"unexpected mmaction2 ResNet key {key!r}")


def _mmcv_backbone(obj: Mapping) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The ``backbone.*`` weights of an mmcv/mmaction2 file under torchvision's key names, and the
    file's info (the other keys are ignored and listed)."""
    state, ignored = {}, []
    for key, value in obj["state_dict"].items():
        k = _strip_prefixes(key)
        if k.startswith("backbone."):
            state[_mmcv_to_torchvision(k[len("backbone."):])] = value
        else:
            ignored.append(key)
    return state, {"step": None, "ignored_keys": ignored, "meta": _plain(obj.get("meta"))}


def _vfs(obj: Mapping, path: str | Path) -> EncoderState:
    state, info = _mmcv_backbone(obj)
    return EncoderState("vfs", state, resnet_name_from_keys(state), {"padding_mode": "zeros"}, info)


def _plain(value: Any) -> Any:
    """JSON-friendly copy of small metadata (tensors and unknown objects as their type name)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__


# --------------------------------------------------------------------------- TimeCycle


def _is_timecycle(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and any(
        _strip_prefixes(k).startswith("encoderVideo.") for k in obj["state_dict"])


def _timecycle(obj: Mapping, path: str | Path) -> EncoderState:
    state, ignored = {}, []
    for key, value in obj["state_dict"].items():
        k = _strip_prefixes(key)
        if not k.startswith("encoderVideo.") or k.startswith("encoderVideo.fc."):
            ignored.append(key)
            continue
        if torch.is_tensor(value) and value.ndim == 5:
            if value.shape[2] != 1:
                raise CheckpointError(f"{path}: {key} has temporal kernel size {value.shape[2]}; only size 1 "
                                 f"(a 2-D kernel inflated to 3-D) converts to a 2-D ResNet")
            value = value[:, :, 0]
        state[k[len("encoderVideo."):]] = value
    return EncoderState("timecycle", state, resnet_name_from_keys(state), {"padding_mode": "zeros"},
                        {"step": None, "epoch": obj.get("epoch"), "ignored_keys": ignored})


# --------------------------------------------------------------------------- Spa-then-Temp, FGVC (mmcv ResNets on LAB)


def _is_mmcv_resnet(obj: Any) -> bool:
    """A ``state_dict`` holding an mmcv ResNet under ``backbone.`` (VFS, Spa-then-Temp, FGVC)."""
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(state, Mapping) and any(_strip_prefixes(k) == "backbone.conv1.conv.weight" for k in state)


def _is_spa_then_temp(obj: Any) -> bool:
    """Recognised by the training teacher their ``Framework`` saves next to it (``backbone_t.*``)."""
    return _is_mmcv_resnet(obj) and any(_strip_prefixes(k).startswith("backbone_t.") for k in obj["state_dict"])


def _is_fgvc(obj: Any) -> bool:
    """Recognised by the frozen teacher their ``Mixed_Tracker`` saves next to it (``teacher.*``)."""
    return _is_mmcv_resnet(obj) and any(_strip_prefixes(k).startswith("teacher.") for k in obj["state_dict"])


def _mm_backbone(obj: Mapping, family: str, name: str, variants: tuple[str, ...]) -> EncoderState:
    state, info = _mmcv_backbone(obj)
    return EncoderState(family, state, name, {}, info, variants)


def _spa_then_temp(obj: Mapping, path: str | Path) -> EncoderState:
    depth = 50 if "backbone.layer1.0.conv3.conv.weight" in {_strip_prefixes(k) for k in obj["state_dict"]} else 18
    return _mm_backbone(obj, "spa-then-temp", f"resnet{depth}-stt", (f"resnet{depth}-stt-s4",))


def _fgvc(obj: Mapping, path: str | Path) -> EncoderState:
    return _mm_backbone(obj, "fgvc", "resnet18-fgvc", ())


# --------------------------------------------------------------------------- MAST, UVC


def _training_state(obj: Any, *keys: str) -> Optional[Mapping]:
    """``obj["state_dict"]`` if it holds every key of ``keys`` (``module.`` prefixes stripped)."""
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    if isinstance(state, Mapping) and set(keys) <= {_strip_prefixes(k) for k in state}:
        return state
    return None


def _is_mast(obj: Any) -> bool:
    return _training_state(obj, "feature_extraction.conv1.0.weight", "post_convolution.weight") is not None


def _mast(obj: Mapping, path: str | Path) -> EncoderState:
    state, ignored = {}, []
    for key, value in obj["state_dict"].items():
        k = _strip_prefixes(key)
        if k.startswith(("feature_extraction.", "post_convolution.")):
            state[k] = value
        else:
            ignored.append(key)
    return EncoderState("mast", state, "mast", {}, {"step": None, "epoch": _plain(obj.get("epoch")),
                                                     "ignored_keys": ignored})


def _is_uvc(obj: Any) -> bool:
    return _training_state(obj, "gray_encoder.conv1.weight") is not None


def _uvc(obj: Mapping, path: str | Path) -> EncoderState:
    state, ignored = {}, []
    for key, value in obj["state_dict"].items():
        k = _strip_prefixes(key)
        if k.startswith("gray_encoder.") and not k.startswith("gray_encoder.fc."):
            state[k[len("gray_encoder."):]] = value
        else:
            ignored.append(key)
    return EncoderState("uvc", state, "resnet18-uvc", {}, {"step": None, "epoch": _plain(obj.get("epoch")),
                                                            "ignored_keys": ignored})


# --------------------------------------------------------------------------- DINO / DINOv2


def _vit_entry(obj: Any) -> tuple[Optional[Mapping], Optional[str]]:
    """The ViT state dict in ``obj`` (itself, or its teacher / student entry) and the entry's name."""
    for entry in ("teacher", "student"):
        if isinstance(obj, Mapping) and _is_tensor_dict(obj.get(entry)):
            return obj[entry], entry
    return (obj, None) if _is_tensor_dict(obj) else (None, None)


def _vit_keys(state: Mapping) -> dict[str, torch.Tensor]:
    return {_strip_prefixes(k, ("module.", "backbone.")): v for k, v in state.items()}


def _vit_family(obj: Any) -> Optional[str]:
    state, _ = _vit_entry(obj)
    if state is None:
        return None
    keys = _vit_keys(state)
    if not {"pos_embed", "cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= set(keys):
        return None
    return "dinov2" if "blocks.0.ls1.gamma" in keys else "dino"


def _vit(family: str) -> Callable[[Any, str | Path], EncoderState]:
    def convert(obj: Any, path: str | Path) -> EncoderState:
        state, entry = _vit_entry(obj)
        keys = _vit_keys(state)
        ignored = [k for k in keys if k.startswith("head.")]
        keys = {k: v for k, v in keys.items() if not k.startswith("head.")}
        width, _, patch, _ = keys["patch_embed.proj.weight"].shape
        arch = {384: "vits", 768: "vitb"}.get(width)
        if arch is None:
            raise CheckpointError(f"{path}: a {family} ViT of width {width}; supported: 384 (ViT-S), 768 (ViT-B)")
        name = f"{family}-{arch}{patch}" + ("-reg" if "register_tokens" in keys else "")
        return EncoderState(family, keys, name, {}, {"step": None, "entry": entry, "ignored_keys": ignored})

    return convert


@dataclass(frozen=True)
class CheckpointFormat:
    """A layout: ``detect(obj) -> bool`` and ``convert(obj, path) -> EncoderState``."""

    detect: Callable[[Any], bool]
    convert: Callable[[Any, str | Path], EncoderState]
    description: str
    accepts: Optional[Callable[[Any], bool]] = None  # when the format is named; None: detect


CHECKPOINT_FORMATS: dict[str, CheckpointFormat] = {
    CHECKPOINT_FORMAT: CheckpointFormat(_is_ours, _ours, "ours (train.py)"),
    "crw-reference": CheckpointFormat(_is_crw, _crw, "CRW, ajabri/videowalk"),
    "spa-then-temp": CheckpointFormat(_is_spa_then_temp, _spa_then_temp,
                                      "Spa-then-Temp, qianduoduolr/Spa-then-Temp (mmcv ResNet, LAB)", _is_mmcv_resnet),
    "fgvc": CheckpointFormat(_is_fgvc, _fgvc, "FGVC, qianduoduolr/FGVC (mmcv ResNet-18, LAB)", _is_mmcv_resnet),
    "vfs": CheckpointFormat(_is_vfs, _vfs, "VFS, xvjiarui/VFS (mmaction2)"),
    "mast": CheckpointFormat(_is_mast, _mast, "MAST, zlai0/MAST"),
    "uvc": CheckpointFormat(_is_uvc, _uvc, "UVC, Liusifei/UVC (gray_encoder)"),
    "timecycle": CheckpointFormat(_is_timecycle, _timecycle, "TimeCycle, xiaolonw/TimeCycle (inflated ResNet-50)"),
    "dino": CheckpointFormat(lambda obj: _vit_family(obj) == "dino", _vit("dino"), "DINO, facebookresearch/dino"),
    "dinov2": CheckpointFormat(lambda obj: _vit_family(obj) == "dinov2", _vit("dinov2"),
                               "DINOv2, facebookresearch/dinov2"),
    "torchvision-state-dict": CheckpointFormat(_is_torchvision, _torchvision, "a torchvision ResNet state dict"),
}


def read_encoder_state(obj: Any, path: str | Path, format: Optional[str] = None) -> EncoderState:
    """The encoder weights of ``obj`` (a file's content): in layout ``format``, or the first that
    recognises it (``CHECKPOINT_FORMATS`` order)."""
    if format is not None:
        if format not in CHECKPOINT_FORMATS:
            raise CheckpointError(f"unknown checkpoint format {format!r}; known: {', '.join(CHECKPOINT_FORMATS)}")
        layout = CHECKPOINT_FORMATS[format]
        if not (layout.accepts or layout.detect)(obj):
            raise CheckpointError(f"{path} is not in the {format!r} layout ({layout.description})")
        return layout.convert(obj, path)
    for layout in CHECKPOINT_FORMATS.values():
        if layout.detect(obj):
            return layout.convert(obj, path)
    if isinstance(obj, Mapping):
        keys = list(obj)
        shown = ", ".join(f"{k!r}: {type(obj[k]).__name__}" for k in keys[:20])
        more = f", ... ({len(keys) - 20} more)" if len(keys) > 20 else ""
        raise CheckpointError(
            f"{path}: unrecognised checkpoint layout; expected one of {', '.join(CHECKPOINT_FORMATS)} "
            f"(a {CHECKPOINT_FORMAT!r} dict, a CRW dict with 'model' holding 'encoder.model.*' keys, a ResNet "
            f"state dict with 'conv1.weight', ...). Found {len(keys)} top-level keys: {{{shown}{more}}}"
        )
    raise CheckpointError(f"{path}: unrecognised checkpoint layout; found a {type(obj).__name__}, expected a dict")


# ------------------------------------------------------------------- GMRW's global-match network

#: GMRW's (GMFlow's) state-dict names -> :class:`corr.global_match.GlobalMatchNet`'s, after
#: ``module.`` is stripped; ``{i}`` a backbone stage (1-based there, 0-based here).
_GMRW_KEYS = [
    (re.compile(r"^backbone\.conv1\.weight$"), "features.stem.weight"),
    (re.compile(r"^backbone\.layer([123])\.([01])\.(conv[12])\.weight$"), "features.stages.{stage}.{1}.{2}.weight"),
    (re.compile(r"^backbone\.layer([123])\.([01])\.downsample\.0\.(weight|bias)$"),
     "features.stages.{stage}.{1}.shortcut.0.{2}"),
    (re.compile(r"^backbone\.conv2\.(weight|bias)$"), "features.project.{0}"),
    (re.compile(r"^backbone\.trident_conv\.weight$"), "features.refine.weight"),
    (re.compile(r"^transformer\.layers\.(\d+)\.(self_attn|cross_attn_ffn)\.(q_proj|k_proj|v_proj|merge)\.weight$"),
     "transformer.layers.{0}.{attention}.{projection}.weight"),
    (re.compile(r"^transformer\.layers\.(\d+)\.(self_attn|cross_attn_ffn)\.(norm1|norm2)\.(weight|bias)$"),
     "transformer.layers.{0}.{attention}.{norm}.{3}"),
    (re.compile(r"^transformer\.layers\.(\d+)\.cross_attn_ffn\.mlp\.([02])\.weight$"),
     "transformer.layers.{0}.cross_attention.mlp.{1}.weight"),
]
_GMRW_NAMES = {"self_attn": "self_attention", "cross_attn_ffn": "cross_attention", "q_proj": "query",
               "k_proj": "key", "v_proj": "value", "merge": "merge", "norm1": "norm", "norm2": "mlp_norm"}


def _gmrw_weights(obj: Any) -> Optional[Mapping]:
    """The state dict of a GMRW file: ``{"model": state dict, ...}`` (their ``save_model_checkpoint``)
    or the state dict itself."""
    weights = obj.get("model", obj) if isinstance(obj, Mapping) else None
    return weights if _is_tensor_dict(weights) else None


def is_gmrw(obj: Any) -> bool:
    """A GMRW release: a state dict (or ``{"model": ...}``) with GMFlow's ``backbone.trident_conv``."""
    weights = _gmrw_weights(obj)
    return weights is not None and any(_strip_prefixes(k) == "backbone.trident_conv.weight" for k in weights)


def gmrw_key(key: str) -> Optional[str]:
    """Our name for one of GMRW's state-dict keys (``module.`` stripped), None if it has none."""
    key = _strip_prefixes(key)
    for pattern, target in _GMRW_KEYS:
        match = pattern.match(key)
        if match:
            groups = match.groups()
            names = {"stage": int(groups[0]) - 1 if key.startswith("backbone.layer") else None}
            if len(groups) > 1 and groups[1] in _GMRW_NAMES:
                names["attention"] = _GMRW_NAMES[groups[1]]
            if len(groups) > 2 and groups[2] in _GMRW_NAMES:
                names["projection" if groups[2] not in ("norm1", "norm2") else "norm"] = _GMRW_NAMES[groups[2]]
            return target.format(*groups, **names)
    return None


def gmrw_state(obj: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """GMRW's released network (ayshrv/gmrw ``models/gmrw.py``: GMFlow's ``CNNEncoder`` with two
    output scales, of which GMRW uses the stride-4 one, and ``FeatureTransformer``) -> our state
    dict of :class:`corr.global_match.GlobalMatchNet` and its sizes (``GlobalMatchConfig`` fields,
    read from the shapes; ``splits`` is their fixed 2). Keys without a counterpart, and our keys
    the file lacks, are a :class:`corr.errors.CheckpointError` naming them."""
    weights = _gmrw_weights(obj)
    if weights is None:
        raise CheckpointError(f"{path}: not a GMRW checkpoint (expected {{'model': state dict}} with "
                              "'backbone.trident_conv.weight')")
    converted, unmatched = {}, []
    for key, value in weights.items():
        ours = gmrw_key(key)
        if ours is None:
            unmatched.append(key)
        else:
            converted[ours] = value
    if unmatched:
        raise CheckpointError(f"{path}: GMRW checkpoint keys with no counterpart in the global-match network: "
                              f"{', '.join(sorted(unmatched))}")
    try:
        dim = converted["features.project.weight"].shape[0]
        widths = tuple(converted[f"features.stages.{i}.0.conv1.weight"].shape[0] for i in range(3))
        layers = sorted({int(k.split(".")[2]) for k in converted if k.startswith("transformer.layers.")})
        expansion = converted["transformer.layers.0.cross_attention.mlp.0.weight"].shape[0] // (2 * dim) \
            if layers else 4
    except KeyError as missing:
        raise CheckpointError(f"{path}: GMRW checkpoint without {missing.args[0]} (as our key)") from None
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{path}: GMRW checkpoint with transformer layers {layers} (expected 0..n-1)")
    sizes = {"feature_dim": int(dim), "num_layers": len(layers), "splits": 2, "mlp_expansion": int(expansion),
             "cnn_widths": widths}
    return converted, sizes
