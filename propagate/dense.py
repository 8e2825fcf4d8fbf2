"""The direct, dense formulation of label propagation (docs/propagation.md).

This is the executable specification that :class:`propagate.Propagator` must match: for
every target frame it concatenates all context frames, computes the full affinity between
every query position and every context position, and masks disallowed keys afterwards. It
is simple and slow (about 9x the arithmetic of the local windows the propagator computes)
and exists for tests and for ``bench/propagate.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import PropagationConfig


def context_frames(t: int, cfg: PropagationConfig) -> list[int]:
    """Indices of the short-memory frames for target frame ``t >= 1`` (frame 0 is long memory).

    With ``pad_with_first`` the video is front-padded with n copies of frame 0, so the short
    memory is always frames ``t-n .. t-1`` with negative indices meaning frame 0. Without it,
    the short memory is frames ``max(1, t-n) .. t-1``: frame 0 is in the context once.
    """
    n = cfg.context
    if cfg.pad_with_first:
        return [max(j, 0) for j in range(t - n, t)]
    return list(range(max(1, t - n), t))


def grid_distance_allowed(h: int, w: int, radius: float | None, device=None,
                          neighbourhood: str = "disk") -> torch.Tensor:
    """(h*w, h*w) bool: key position allowed for query position: Euclidean grid distance
    ``< radius`` (``"disk"``) or ``|dy| <= radius and |dx| <= radius`` (``"square"``)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()  # (h*w, 2)
    if radius is None:
        return torch.ones(h * w, h * w, dtype=torch.bool, device=device)
    if neighbourhood == "square":
        return torch.cdist(pos, pos, p=float("inf")) <= radius
    return torch.cdist(pos, pos) < radius


def normalize_label(label: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-channel label normalisation of a (K, h, w) map: ``none`` or ``minmax`` to [0, 1]."""
    if mode == "none":
        return label
    flat = label.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    return (label - lo) / (hi - lo).clamp_min(1e-12)


@torch.no_grad()
def propagate_dense(feats: torch.Tensor, first_label: torch.Tensor, cfg: PropagationConfig,
                    query_chunk: int = 1024) -> torch.Tensor:
    """Dense-masked label propagation.

    feats: (T, C, h, w) features; first_label: (K, h, w) soft labels of frame 0.
    Returns (T, K, h, w); frame 0 is ``first_label``.
    """
    T, C, h, w = feats.shape
    if cfg.normalize_features:
        feats = F.normalize(feats, dim=1)
    keys_all = feats.flatten(2)  # (T, C, hw)
    allowed_local = grid_distance_allowed(h, w, cfg.radius, feats.device, cfg.neighbourhood)  # (hw, hw)
    everywhere = torch.ones(h * w, h * w, dtype=torch.bool, device=feats.device)
    allowed_first = allowed_local if cfg.restrict_first else everywhere
    labels = [first_label.float().flatten(1)]  # (K, hw) per frame
    for t in range(1, T):
        ctx = context_frames(t, cfg)
        keys = torch.cat([keys_all[0]] + [keys_all[j] for j in ctx], dim=1)  # (C, M*hw)
        ctx_labels = torch.cat([labels[0]] + [labels[j] for j in ctx], dim=1)  # (K, M*hw)
        query = keys_all[t]  # (C, hw)
        out = torch.empty_like(labels[0])
        for q0 in range(0, h * w, query_chunk):
            q1 = min(q0 + query_chunk, h * w)
            affinity = query[:, q0:q1].T @ keys  # (q, M*hw) cosine similarities
            allowed = torch.cat([allowed_first[q0:q1]] + [allowed_local[q0:q1]] * len(ctx), dim=1)
            affinity = affinity.masked_fill(~allowed, float("-inf"))
            k = min(cfg.topk, affinity.shape[1])
            values, index = affinity.topk(k, dim=1)  # (q, k)
            weights = torch.softmax(values / cfg.temperature, dim=1)  # (q, k)
            out[:, q0:q1] = (ctx_labels[:, index] * weights[None]).sum(-1)  # (K, q)
        out = normalize_label(out.view(-1, h, w), cfg.label_norm).flatten(1)
        labels.append(out)
    return torch.stack(labels).view(T, -1, h, w)
