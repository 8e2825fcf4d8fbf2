"""The space-time graph of the contrastive random walk (docs/objectives.md, CRW; Jabri et al.,
NeurIPS 2020).

A clip of ``T`` frames becomes ``T`` sets of ``N`` nodes with unit ``C``-dim embeddings,
``nodes (B, T, N, C)``; consecutive frames are joined by dense edges:

    S_t = Q_t Q_{t+1}^T                      (B, T-1, N, N)  cosine similarities
    A_t = softmax_rows(drop(S_t)   / tau)    forward transitions  t -> t+1
    B_t = softmax_rows(drop(S_t^T) / tau)    backward transitions t+1 -> t

(``Q_t``: frame ``t``'s nodes as rows.) Edge dropout ``drop`` sets each similarity to ``-inf``
with probability ``p``, with a fresh mask per transition and per direction.

Nodes come from :class:`WalkModel`: ``mode="grid"`` pools each patch of ``(B, T, N, 3, h, w)``;
``mode="dense"`` makes every cell of the stride-``s`` feature map of ``(B, T, 3, H, W)`` a node
(row-major ``(y, x)``). A linear head (512 -> 128 for ResNet-18 layer4) and L2 normalisation follow.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

GRAPH_MODES = ("grid", "dense")


def affinities(nodes: torch.Tensor) -> torch.Tensor:
    """Similarities of consecutive frames' nodes: ``(B, T, N, C) -> (B, T-1, N, N)``.

    ``S[:, t, n, m] = <nodes[:, t, n], nodes[:, t+1, m]>`` (cosine when nodes are unit).
    """
    if nodes.ndim != 4:
        raise ValueError(f"nodes must be (B, T, N, C), got shape {tuple(nodes.shape)}")
    return torch.einsum("btnc,btmc->btnm", nodes[:, :-1], nodes[:, 1:])


def drop_edges(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Set each entry of ``logits (..., N, M)`` to ``-inf`` with probability ``p``.

    The mask is drawn independently for every entry (so independently per transition and
    per direction when called once per direction). A row whose every entry was drawn is
    left intact (probability ``p**M``), so the softmax stays defined.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"edge dropout must be in [0, 1), got {p}")
    if p == 0.0:
        return logits
    mask = torch.rand(logits.shape, device=logits.device) < p
    mask &= ~mask.all(dim=-1, keepdim=True)
    return logits.masked_fill(mask, float("-inf"))


def forward_backward_logits(nodes: torch.Tensor, temperature: float, edge_dropout: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward transition logits, each ``(B, T-1, N, N)``.

    forward[:, t]  = drop(S_t)   / tau   (rows: nodes of frame t,   columns: frame t+1)
    backward[:, t] = drop(S_t^T) / tau   (rows: nodes of frame t+1, columns: frame t)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    similarity = affinities(nodes)                                   # B, T-1, N, N
    forward = drop_edges(similarity, edge_dropout) / temperature
    backward = drop_edges(similarity.transpose(-1, -2), edge_dropout) / temperature
    return forward, backward


def transition_matrices(nodes: torch.Tensor, temperature: float, edge_dropout: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-stochastic ``A_t`` (frame t -> t+1) and ``B_t`` (frame t+1 -> t), each ``(B, T-1, N, N)``."""
    forward, backward = forward_backward_logits(nodes, temperature, edge_dropout)
    return forward.softmax(dim=-1), backward.softmax(dim=-1)


class WalkModel(nn.Module):
    """Encoder + linear head: a clip batch -> unit node embeddings ``(B, T, N, head_dim)``.

    ``encoder`` maps ``(B, 3, H, W)`` to ``(B, C, H/s, W/s)`` and has ``out_channels = C``.
    Grid mode takes ``(B, T, N, 3, h, w)`` patches, dense mode ``(B, T, 3, H, W)`` frames.
    """

    def __init__(self, encoder: nn.Module, head_dim: int = 128, mode: str = "grid"):
        super().__init__()
        if mode not in GRAPH_MODES:
            raise ValueError(f"mode must be one of {GRAPH_MODES}, got {mode!r}")
        self.encoder = encoder
        self.mode = mode
        self.head = nn.Linear(encoder.out_channels, head_dim)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if self.mode == "grid":
            if clip.ndim != 6:
                raise ValueError(f"grid mode expects patches (B, T, N, 3, h, w), got {tuple(clip.shape)}")
            b, t, n = clip.shape[:3]
            maps = self.encoder(rearrange(clip, "b t n c h w -> (b t n) c h w"))   # BTN, C, h', w'
            pooled = maps.mean(dim=(-2, -1))                                        # BTN, C
            pooled = rearrange(pooled, "(b t n) c -> b t n c", b=b, t=t, n=n)
        else:
            if clip.ndim != 5:
                raise ValueError(f"dense mode expects frames (B, T, 3, H, W), got {tuple(clip.shape)}")
            b, t = clip.shape[:2]
            maps = self.encoder(rearrange(clip, "b t c h w -> (b t) c h w"))       # BT, C, h', w'
            pooled = rearrange(maps, "(b t) c h w -> b t (h w) c", b=b, t=t)       # every cell a node
        return F.normalize(self.head(pooled), dim=-1)                               # B, T, N, head_dim
