"""The network an evaluation runs: an encoder for label propagation, or a global-match network.

:func:`load_encoder` gives a feature encoder (``(B, 3, H, W)`` normalised frames ->
``(B, C, H / stride, W / stride)``) from ``--checkpoint`` (ours or the published CRW one),
``--weights`` (torchvision ImageNet, DINO / DINOv2 files) or a random initialisation seeded by ``--seed``;
``--encoder global-match`` takes the convolutional backbone of a global-match network.
:func:`load_global_match_model` gives the whole network for the TAP-Vid walk tracker
(docs/objectives.md, GMRW). Each also returns a description of where the weights came
from (name, format, path and SHA-256 or seed), recorded as results.json's ``"checkpoint"``.
"""
from __future__ import annotations

import dataclasses

import torch

from corr.encoders import build_encoder, is_import_spec, load_checkpoint, load_weights_file
from corr.errors import OptionError
from corr.global_match import load_global_match, seeded_global_match
from corr.io import file_sha256

from .eval_config import DEFAULT_ENCODER, GLOBAL_MATCH, EvalConfig


def load_global_match_model(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A :class:`corr.global_match.GlobalMatchNet` from ``--checkpoint`` (a ``train.py --loss
    global_walk`` checkpoint, :func:`corr.global_match.load_global_match`) or randomly initialised
    with ``--seed``, and its description (``encoder``, ``format``, ``path``/``sha256`` or ``seed``, ``config``)."""
    if cfg.weights:
        raise OptionError("--weights are torchvision ResNet weights; a global-match network takes --checkpoint")
    if cfg.checkpoint:
        model = load_global_match(cfg.checkpoint)
        info = {"encoder": GLOBAL_MATCH, "format": "checkpoint", "path": str(cfg.checkpoint),
                "sha256": file_sha256(cfg.checkpoint)}
    else:
        model = seeded_global_match(cfg.seed)  # the same random network for the same seed
        info = {"encoder": GLOBAL_MATCH, "format": "random-init", "seed": cfg.seed}
    info["config"] = dataclasses.asdict(model.cfg)
    return model.to(device).eval(), info


def load_encoder(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The encoder to evaluate and a description of where its weights came from.

    ``--encoder global-match``: the convolutional backbone (``features``, stride 4) of a
    global-match network (:func:`load_global_match_model`), e.g. to propagate labels with the
    features the walk tracker was trained on.
    """
    if cfg.checkpoint and cfg.weights:
        raise OptionError("give --checkpoint or --weights, not both")
    if cfg.encoder == GLOBAL_MATCH:
        model, info = load_global_match_model(cfg, device)
        return model.features, {**info, "part": "features (convolutional backbone, stride 4)"}
    if cfg.checkpoint:
        encoder, info = load_checkpoint(cfg.checkpoint, device, name=cfg.encoder, format=cfg.checkpoint_format)
        recorded = ("encoder", "kwargs", "format", "sha256", "path", "step", "entry")
        return encoder, {k: v for k, v in info.items() if k in recorded}
    torch.manual_seed(cfg.seed)  # a random-init encoder is the same for the same seed
    name = cfg.encoder or DEFAULT_ENCODER
    encoder = build_encoder(name)
    if not cfg.weights:
        return encoder.to(device).eval(), {"encoder": name, "format": "random-init", "seed": cfg.seed}
    layout = load_weights_file(encoder, cfg.weights, cfg.checkpoint_format, plain_ok=is_import_spec(name))
    return encoder.to(device).eval(), {"encoder": name, "format": layout, "path": str(cfg.weights),
                                       "sha256": file_sha256(cfg.weights)}
