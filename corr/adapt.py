"""Test-time adaptation: a few contrastive-random-walk steps on the test video itself
(docs/propagation.md; Jabri et al. 2020, section 4).

A deep copy of the encoder is trained (every video starts from the loaded weights). Each step
draws ``batch_size`` clips of ``clip_len`` distinct frames, in order, within ``window`` frames of a
random centre, all cut at one random ``crop_size`` box. Nodes are the unit cells of the encoder's
own output (no head); the loss is ``ContrastiveRandomWalk(temperature, edge_dropout)``
(:mod:`corr.losses.walk`). BatchNorm stays in eval mode (running statistics frozen, affine
parameters trained). Adam at ``lr``; all randomness comes from ``seed``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.losses.walk import ContrastiveRandomWalk
from datasets.transforms import normalize_frames


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of test-time adaptation (``steps = 0`` turns it off)."""

    steps: int = 0
    window: int = 10
    lr: float = 1e-4
    clip_len: int = 4
    batch_size: int = 2
    crop_size: int = 256
    temperature: float = 0.05
    edge_dropout: float = 0.1
    seed: int = 0


def sample_clip_times(rng: np.random.Generator, num_frames: int, clip_len: int, window: int) -> list[int]:
    """``clip_len`` distinct frame indices within ``window`` of a random centre, increasing."""
    centre = int(rng.integers(num_frames))
    lo, hi = max(0, centre - window), min(num_frames, centre + window + 1)
    pool = np.arange(lo, hi)
    if len(pool) < clip_len:
        pool = np.arange(num_frames)
    return sorted(rng.choice(pool, size=min(clip_len, len(pool)), replace=False).tolist())


def adapt_encoder(encoder: nn.Module, frames: np.ndarray, cfg: AdaptConfig,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``encoder`` on one video's frames ``uint8 (T, H, W, 3)``.

    Returns ``(adapted encoder in eval mode, {"losses": [...], "steps": S})``; with
    ``cfg.steps == 0`` the encoder itself is returned.
    """
    if cfg.steps <= 0:
        return encoder, {"steps": 0, "losses": []}
    if frames.shape[0] < 2:
        raise ValueError(f"test-time adaptation needs at least 2 frames, got {frames.shape[0]}")
    model = copy.deepcopy(encoder).to(device)
    model.eval()  # BatchNorm statistics frozen (see module docstring); gradients still flow
    for p in model.parameters():
        p.requires_grad_(True)
    loss_fn = ContrastiveRandomWalk(cfg.temperature, cfg.edge_dropout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    T, H, W = frames.shape[:3]
    crop_h, crop_w = min(cfg.crop_size, H), min(cfg.crop_size, W)
    clip_len = max(3, min(cfg.clip_len, T)) if T >= 3 else 2
    losses = []
    for _ in range(cfg.steps):
        clips = []
        for _ in range(cfg.batch_size):
            times = sample_clip_times(rng, T, clip_len, cfg.window)
            y, x = int(rng.integers(H - crop_h + 1)), int(rng.integers(W - crop_w + 1))
            clips.append(frames[times, y:y + crop_h, x:x + crop_w])
        clip = normalize_frames(np.concatenate(clips), device=device)  # (B*T, 3, h, w)
        feats = model(clip)  # (B*T, C, h/s, w/s)
        nodes = F.normalize(rearrange(feats, "(b t) c h w -> b t (h w) c", b=cfg.batch_size), dim=-1)
        with _seeded(generator):
            loss, _ = loss_fn(nodes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, {"steps": cfg.steps, "losses": losses}


class _seeded:
    """Run a block with torch's global RNG drawn from ``generator`` (edge-dropout masks)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __enter__(self):
        self.saved = torch.get_rng_state()
        torch.set_rng_state(self.generator.get_state())

    def __exit__(self, *exc):
        self.generator.set_state(torch.get_rng_state())
        torch.set_rng_state(self.saved)
        return False
