"""The space-time graph of the contrastive random walk (docs/objectives.md, CRW; Jabri et al.,
NeurIPS 2020).

A clip of ``T`` frames becomes ``T`` sets of ``N`` nodes with unit ``C``-dim embeddings,
``nodes (B, T, N, C)``; consecutive frames are joined by dense edges:

    S_t = Q_t Q_{t+1}^T                      (B, T-1, N, N)  cosine similarities
    A_t = softmax_rows(drop(S_t)   / tau)    forward transitions  t -> t+1
    B_t = softmax_rows(drop(S_t^T) / tau)    backward transitions t+1 -> t

(``Q_t``: frame ``t``'s nodes as rows.) Edge dropout ``drop`` sets each similarity to ``-inf``
with probability ``p``, with a fresh mask per transition and per direction; with
``shared_mask`` the backward direction also keeps the edges the forward direction dropped
(``B_t = softmax_rows(drop(drop_f(S_t)^T) / tau)``, what CRW's code computes: it drops edges
in place in the similarity both directions read).

Nodes come from :class:`WalkModel`: ``mode="grid"`` pools each patch of ``(B, T, N, 3, h, w)``;
``mode="dense"`` makes every cell of the stride-``s`` feature map of ``(B, T, 3, H, W)`` a node
(row-major ``(y, x)``). Feature dropout (``featdrop``, training only) acts on the encoder's maps
before pooling; the head (:func:`walk_head`: linear 512 -> 128 for ResNet-18 layer4 at depth 0)
and L2 normalisation follow.
"""
from __future__ import annotations

from typing import Optional

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


def edge_mask(logits: torch.Tensor, p: float, dropped: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool mask of the entries of ``logits (..., N, M)`` to drop: each with probability ``p``,
    or-ed with ``dropped`` (entries already dropped) when given. A row whose every entry would
    be dropped is kept whole (probability ``p**M`` without ``dropped``), so the softmax stays defined."""
    mask = torch.rand(logits.shape, device=logits.device) < p
    if dropped is not None:
        mask |= dropped
    return mask & ~mask.all(dim=-1, keepdim=True)


def drop_edges(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Set each entry of ``logits (..., N, M)`` to ``-inf`` with probability ``p`` (:func:`edge_mask`).

    The mask is drawn independently for every entry (so independently per transition and
    per direction when called once per direction).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"edge dropout must be in [0, 1), got {p}")
    if p == 0.0:
        return logits
    return logits.masked_fill(edge_mask(logits, p), float("-inf"))


def forward_backward_logits(nodes: torch.Tensor, temperature: float, edge_dropout: float = 0.0,
                            shared_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward transition logits, each ``(B, T-1, N, N)``.

    forward[:, t]  = drop(S_t)   / tau   (rows: nodes of frame t,   columns: frame t+1)
    backward[:, t] = drop(S_t^T) / tau   (rows: nodes of frame t+1, columns: frame t)

    With ``shared_mask`` the backward mask is a fresh draw or-ed with the transposed forward
    mask (the forward one is drawn first; both draws have the same shape as without it).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= edge_dropout < 1.0:
        raise ValueError(f"edge dropout must be in [0, 1), got {edge_dropout}")
    similarity = affinities(nodes)                                   # B, T-1, N, N
    if edge_dropout == 0.0:
        return similarity / temperature, similarity.transpose(-1, -2) / temperature
    forward_mask = edge_mask(similarity, edge_dropout)
    backward_mask = edge_mask(similarity, edge_dropout, forward_mask.transpose(-1, -2) if shared_mask else None)
    forward = similarity.masked_fill(forward_mask, float("-inf")) / temperature
    backward = similarity.transpose(-1, -2).masked_fill(backward_mask, float("-inf")) / temperature
    return forward, backward


def transition_matrices(nodes: torch.Tensor, temperature: float, edge_dropout: float = 0.0,
                        shared_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-stochastic ``A_t`` (frame t -> t+1) and ``B_t`` (frame t+1 -> t), each ``(B, T-1, N, N)``."""
    forward, backward = forward_backward_logits(nodes, temperature, edge_dropout, shared_mask)
    return forward.softmax(dim=-1), backward.softmax(dim=-1)


def walk_head(in_dim: int, out_dim: int, depth: int = 0) -> nn.Module:
    """CRW's head: ``depth`` hidden ``Linear(in, in) + ReLU`` layers, then ``Linear(in, out)``
    (depth 0: one linear layer); depth -1: no head (identity, the nodes keep ``in_dim``)."""
    if depth < -1:
        raise ValueError(f"head depth must be >= -1, got {depth}")
    if depth == -1:
        return nn.Identity()
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(in_dim, in_dim), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim)) if depth else nn.Linear(in_dim, out_dim)


class WalkModel(nn.Module):
    """Encoder + head: a clip batch -> unit node embeddings ``(B, T, N, head_dim)`` (``C`` at head depth -1).

    ``encoder`` maps ``(B, 3, H, W)`` to ``(B, C, H/s, W/s)`` and has ``out_channels = C``.
    Grid mode takes ``(B, T, N, 3, h, w)`` patches, dense mode ``(B, T, 3, H, W)`` frames.
    ``featdrop``: ``nn.Dropout`` on the feature maps (training mode only).
    """

    def __init__(self, encoder: nn.Module, head_dim: int = 128, mode: str = "grid", head_depth: int = 0,
                 featdrop: float = 0.0):
        super().__init__()
        if mode not in GRAPH_MODES:
            raise ValueError(f"mode must be one of {GRAPH_MODES}, got {mode!r}")
        self.encoder = encoder
        self.mode = mode
        self.head = walk_head(encoder.out_channels, head_dim, head_depth)
        self.featdrop = nn.Dropout(featdrop) if featdrop > 0 else nn.Identity()

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if self.mode == "grid":
            if clip.ndim != 6:
                raise ValueError(f"grid mode expects patches (B, T, N, 3, h, w), got {tuple(clip.shape)}")
            b, t, n = clip.shape[:3]
            maps = self.featdrop(self.encoder(rearrange(clip, "b t n c h w -> (b t n) c h w")))  # BTN, C, h', w'
            pooled = maps.mean(dim=(-2, -1))                                        # BTN, C
            pooled = rearrange(pooled, "(b t n) c -> b t n c", b=b, t=t, n=n)
        else:
            if clip.ndim != 5:
                raise ValueError(f"dense mode expects frames (B, T, 3, H, W), got {tuple(clip.shape)}")
            b, t = clip.shape[:2]
            maps = self.featdrop(self.encoder(rearrange(clip, "b t c h w -> (b t) c h w")))  # BT, C, h', w'
            pooled = rearrange(maps, "(b t) c h w -> b t (h w) c", b=b, t=t)       # every cell a node
        return F.normalize(self.head(pooled), dim=-1)                               # B, T, N, head_dim
