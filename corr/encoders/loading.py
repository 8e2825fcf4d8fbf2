"""Building encoders and loading weights into them: :func:`build_encoder`, :func:`load_checkpoint`.

Weights are matched strictly (:func:`load_encoder_weights`); files in any layout of
:mod:`corr.encoders.formats` are read. Nothing is downloaded.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from corr.errors import CheckpointError, OptionError
from corr.io import file_sha256

from .contract import check_encoder
from .formats import CHECKPOINT_FORMATS, EncoderState, read_encoder_state, read_torch_file, resnet_name_from_keys
from .registry import ENCODERS, EVALUATION_DEFAULTS, is_import_spec, resolve_encoder

__all__ = ["load_encoder_weights", "load_weights_file", "build_encoder", "load_checkpoint"]


def load_encoder_weights(encoder: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load ``state_dict`` into ``encoder`` strictly.

    The only tolerance: BatchNorm ``num_batches_tracked`` counters absent from old
    torchvision files keep the encoder's values. Any missing, unexpected or mis-shaped key
    raises :class:`corr.errors.CheckpointError` listing them (first 10 of each, with counts) and naming ``source``.
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
        raise CheckpointError("\n".join(lines))
    encoder.load_state_dict(state, strict=True)


def build_encoder(name: str, weights: str | Path | None = None, *, format: str | None = None,
                  **kwargs: Any) -> nn.Module:
    """Build encoder ``name`` (``ENCODERS[name]`` or ``package.module:function``) with ``kwargs``;
    optionally load ``weights`` from a local file.

    ``weights`` may be in any layout of :mod:`corr.encoders.formats` (a torchvision ImageNet
    ResNet state dict, whose ``fc.*`` keys are ignored; DINO's or DINOv2's released files or
    training checkpoints; ours; the published correspondence checkpoints), named by
    ``format`` or recognised; for a user encoder a plain state dict of its own keys loads as it
    is. Everything must then match (:func:`load_encoder_weights`). A user encoder must meet
    the contract of :mod:`corr.encoders.contract` (checked on one small frame).
    """
    constructor = resolve_encoder(name)
    encoder = constructor(**kwargs)
    if is_import_spec(name):
        check_encoder(encoder, f"encoder {name!r}")
    if weights is not None:
        load_weights_file(encoder, weights, format, plain_ok=is_import_spec(name))
    return encoder


def load_weights_file(encoder: nn.Module, path: str | Path, format: str | None = None,
                      plain_ok: bool = False) -> str:
    """Load the encoder weights of the file ``path`` (layout ``format`` or recognised) into
    ``encoder`` strictly; returns the layout's name. ``plain_ok``: a plain state dict that no
    layout recognises loads as it is (``"state-dict"``; user encoders)."""
    if not any(True for _ in encoder.parameters()):
        raise OptionError(f"the {type(encoder).__name__} encoder has no weights to load (got {path})")
    obj = read_torch_file(path)
    if plain_ok and format is None and isinstance(obj, Mapping) and obj and all(
            torch.is_tensor(v) for v in obj.values()) and not any(f.detect(obj) for f in CHECKPOINT_FORMATS.values()):
        found = EncoderState("state-dict", dict(obj))
    else:
        found = read_encoder_state(obj, path, format)
    load_encoder_weights(encoder, found.state_dict, str(path))
    return found.format


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    *,
    name: str | None = None,
    allow_pickle: bool = False,
    format: str | None = None,
    **overrides: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an encoder from a checkpoint file, ready for evaluation.

    Args:
        path: a file in one of the layouts of :mod:`corr.encoders.formats` (ours, a published
            checkpoint, a torchvision ResNet or DINO / DINOv2 state dict).
        device: where the returned encoder lives.
        name: encoder name for a plain state dict (inferred from its keys when omitted:
            bottleneck blocks -> "resnet50", else "resnet18-crw"); must agree with the
            name a checkpoint records.
        allow_pickle: read files that need full unpickling (only for trusted files).
        format: the file's layout (``CHECKPOINT_FORMATS``); recognised from its content when omitted.
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
    found = read_encoder_state(read_torch_file(path, allow_pickle), path, format)
    if name is not None and found.name is not None and name != found.name:
        raise CheckpointError(f"{path} holds a {found.name!r} encoder, not the {name!r} asked for (--encoder); "
                              "leave the encoder name out to use the checkpoint's")
    encoder_name = found.name or name or resnet_name_from_keys(found.state_dict)
    if encoder_name not in ENCODERS:
        raise CheckpointError(f"{path}: unknown encoder {encoder_name!r}; known encoders: {', '.join(ENCODERS)}")
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
