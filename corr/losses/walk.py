"""Contrastive random walk loss (docs/objectives.md, CRW; Jabri, Owens, Efros, "Space-Time
Correspondence as a Contrastive Random Walk", NeurIPS 2020).

Input ``nodes (B, T, N, C)``, L2-normalised along ``C``. With the transition matrices of
:mod:`corr.graph` (``A_t``: frame t -> t+1, ``B_t``: frame t+1 -> t, both ``(B, N, N)``), the
palindrome walk of length ``k`` goes from frame 0 to frame ``k`` and back:

    P_k = A_0 A_1 ... A_{k-1} B_{k-1} ... B_1 B_0                 (B, N, N)
    loss_k = -mean_{b, i} log((P_k)_{ii} + eps),  eps = 1e-20
    loss   = mean over k in K of loss_k,   K = 2..T-1  (1..T-1 with include_one_step)

Products are taken in probability space, in float32 (or float64) even under autocast.
Diagnostics per length: ``loss/k=K`` and ``acc/k=K`` (fraction of start nodes whose most likely
end node is themselves). Edge dropout applies in training mode only, like ``nn.Dropout``; with
``shared_mask`` the backward transitions also drop the edges the forward ones dropped
(:func:`corr.graph.forward_backward_logits`, CRW's code).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from corr.graph import transition_matrices

EPS = 1e-20


class ContrastiveRandomWalk(nn.Module):
    """``(B, T, N, C)`` unit nodes -> ``(loss, {"loss/k=K": float, "acc/k=K": float, ...})``."""

    def __init__(self, temperature: float = 0.07, edge_dropout: float = 0.0, include_one_step: bool = False,
                 shared_mask: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"edge_dropout must be in [0, 1), got {edge_dropout}")
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.include_one_step = include_one_step
        self.shared_mask = shared_mask

    def walk_lengths(self, num_frames: int) -> list[int]:
        """The palindrome lengths ``k`` used for a clip of ``num_frames`` frames."""
        first = 1 if self.include_one_step else 2
        return list(range(first, num_frames))

    def forward(self, nodes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if nodes.ndim != 4:
            raise ValueError(f"nodes must be (B, T, N, C), got shape {tuple(nodes.shape)}")
        lengths = self.walk_lengths(nodes.shape[1])
        if not lengths:
            raise ValueError(f"a clip of {nodes.shape[1]} frames has no palindrome walk "
                             f"(need T >= {3 - int(self.include_one_step)})")
        dropout = self.edge_dropout if self.training else 0.0
        with torch.autocast(device_type=nodes.device.type, enabled=False):
            forward, backward = transition_matrices(
                nodes.to(torch.promote_types(nodes.dtype, torch.float32)), self.temperature, dropout,
                self.shared_mask)                                                               # B, T-1, N, N
            num_nodes = nodes.shape[2]
            identity = torch.arange(num_nodes, device=nodes.device)
            there = forward[:, 0]                 # A_0 ... A_{k-1}          B, N, N
            back = backward[:, 0]                 # B_{k-1} ... B_0          B, N, N
            losses, diagnostics = [], {}
            for k in range(1, max(lengths) + 1):
                if k > 1:
                    there = there @ forward[:, k - 1]
                    back = backward[:, k - 1] @ back
                if k not in lengths:
                    continue
                walk = there @ back                                          # P_k: B, N, N
                loss_k = -torch.log(walk.diagonal(dim1=-2, dim2=-1) + EPS).mean()
                accuracy = (walk.argmax(dim=-1) == identity).float().mean()
                losses.append(loss_k)
                diagnostics[f"loss/k={k}"] = float(loss_k.detach())
                diagnostics[f"acc/k={k}"] = float(accuracy)
            loss = torch.stack(losses).mean()
        return loss, diagnostics
