"""What a run trains and how: the weighted losses, the module that holds everything trained,
its DDP wrapper and the optimiser.

Under ``torchrun`` one ``DistributedDataParallel`` wraps :class:`TrainModule` (the walk model
and the losses together), so every loss runs the encoder inside the wrapper and the gradients
of every parameter (the encoder, the walk head and the weights the losses own, such as the
TimeCycle tracker) are averaged over the processes (``find_unused_parameters`` when a frame
loss leaves some of them out of the graph). The optimiser is Adam over all of them, in the
order walk model then losses (the checkpoint's order), with the configured learning-rate
schedule, stepped once per iteration: ``step`` is CRW's (a ``MultiStepLR`` whose milestones are
the ``lr_milestones`` epochs times the batches per epoch, as the reference computes them;
none: a constant rate), ``cosine`` the pixel configuration's; and a gradient scaler for mixed
precision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Optional

import torch
import torch.nn as nn

from corr.encoders import build_encoder
from corr.graph import WalkModel
from corr.runtime import Runtime
from corr.train.config import TrainConfig
from corr.train.objectives import OBJECTIVES, encoder_kwargs, parse_loss_spec


class WeightedLosses(nn.Module):
    """Weighted sum of named losses; diagnostics prefixed ``name/`` plus ``name/loss``.

    ``forward(nodes, clip, encoder) -> (loss, diagnostics)``: node losses take ``nodes (B, T, N,
    C)``, the ``frame_losses`` the clip and the encoder. With ``visuals=True`` also a third
    item ``{name: figure data}``: the node losses' detached ``{"nodes": nodes}`` and what each
    of the ``figure_losses`` among the frame losses returns for its figure.
    """

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float],
                 frame_losses: Collection[str] = (), figure_losses: Collection[str] = (),
                 flow_pair_losses: Collection[str] = ()):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)
        self.frame_losses, self.figure_losses = frozenset(frame_losses), frozenset(figure_losses)
        self.flow_pair_losses = frozenset(flow_pair_losses)

    @property
    def needs_nodes(self) -> bool:
        return any(name not in self.frame_losses for name in self.losses)

    def forward(self, nodes: Optional[torch.Tensor], clip: Optional[torch.Tensor] = None,
                encoder: Optional[nn.Module] = None, visuals: bool = False,
                flow_pairs: Optional[dict[str, torch.Tensor]] = None):
        total, diagnostics, figures = 0.0, {}, {}
        for name, loss_fn in self.losses.items():
            pairs = {"flow_pairs": flow_pairs} if flow_pairs is not None and name in self.flow_pair_losses else {}
            if name not in self.frame_losses:
                value, diag = loss_fn(nodes)
                if visuals:
                    figures[name] = {"nodes": nodes.detach()}
            elif visuals and name in self.figure_losses:
                value, diag, figures[name] = loss_fn(clip, encoder, visuals=True, **pairs)
            else:
                value, diag = loss_fn(clip, encoder, **pairs)
            total = total + self.weights[name] * value
            diagnostics[f"{name}/loss"] = float(value.detach())
            diagnostics.update({f"{name}/{key}": v for key, v in diag.items()})
        return (total, diagnostics, figures) if visuals else (total, diagnostics)


def build_losses(cfg: TrainConfig) -> WeightedLosses:
    """The losses of ``cfg.loss``, each built by its objective from the resolved ``cfg``."""
    weights = parse_loss_spec(cfg.loss)
    objectives = [OBJECTIVES[name] for name in weights]
    return WeightedLosses({o.name: o.build(cfg) for o in objectives}, weights,
                          frame_losses=[o.name for o in objectives if o.needs_frames],
                          figure_losses=[o.name for o in objectives if o.figure is not None],
                          flow_pair_losses=[o.name for o in objectives if o.takes_flow_pairs])


class TrainModule(nn.Module):
    """Everything trained, as one module: the walk model (encoder + head) and the losses
    (with the heads and networks they own, e.g. the TimeCycle tracker).

    ``forward(clip) -> (loss, diagnostics)`` (``visuals=True``: plus the losses' figure
    data, :class:`WeightedLosses`). ``clip`` is ``(B, T, N, 3, h, w)`` patches in grid mode
    and ``(B, T, 3, H, W)`` frames in dense mode.
    """

    def __init__(self, model: WalkModel, losses: WeightedLosses):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, clip: torch.Tensor, visuals: bool = False, flow_pairs: Optional[dict] = None):
        nodes = self.model(clip) if self.losses.needs_nodes else None          # B, T, N, C
        return self.losses(nodes, clip, self.model.encoder, visuals=visuals, flow_pairs=flow_pairs)

    def unused_parameters_possible(self) -> bool:
        """Whether some parameters can miss the graph: the frame losses use parts of the
        encoder (layer3) and not the walk head, or their own networks only."""
        return bool(self.losses.frame_losses)


def build_train_module(cfg: TrainConfig, runtime: Runtime) -> TrainModule:
    """The encoder, walk head and losses of ``cfg``, on the runtime's device (SyncBatchNorm under DDP
    with ``sync_bn``)."""
    encoder = build_encoder(cfg.encoder, **encoder_kwargs(cfg.encoder, cfg.padding))
    model = WalkModel(encoder, head_dim=cfg.head_dim, mode=cfg.mode, head_depth=cfg.head_depth, featdrop=cfg.featdrop)
    module = TrainModule(model, build_losses(cfg))
    if runtime.distributed and cfg.sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(runtime.device)
    apply_speed_options(module.model.encoder, cfg)
    return module


def apply_speed_options(encoder: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``channels_last``: the encoder's 4-d weights in NHWC order (its convolutions then run and
    return channels-last); ``compile``: its forward compiled in place (``nn.Module.compile``,
    parameter names unchanged, so checkpoints are the same). Neither changes what is computed."""
    if cfg.channels_last:
        encoder.to(memory_format=torch.channels_last)
    if cfg.compile:
        encoder.compile()
    return encoder


def distribute(module: TrainModule, runtime: Runtime) -> nn.Module:
    """``module`` in one DDP wrapper under several processes (all gradients all-reduced), else itself."""
    if not runtime.distributed:
        return module
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
        find_unused_parameters=module.unused_parameters_possible())


#: The cosine schedule's final learning rate, as a fraction of ``lr`` (the released pixel configuration).
COSINE_MIN_RATIO = 1e-3


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """Learning rate of the update after ``step`` optimiser steps, as a fraction of ``lr``:
    ``step`` 1 (its milestones are a ``MultiStepLR``'s); ``cosine`` ``m + (1 - m) (1 + cos(pi step / steps)) / 2`` with
    ``m = COSINE_MIN_RATIO`` (annealed per step over the whole run, no warm-up)."""
    if schedule == "step":
        return 1.0
    if schedule == "cosine":
        return COSINE_MIN_RATIO + (1 - COSINE_MIN_RATIO) * (1 + math.cos(math.pi * step / steps)) / 2
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


@dataclass
class Optimisation:
    """Adam (or AdamW, ``optimizer``) over ``parameters``, the learning-rate schedule of ``lr_schedule``
    and the AMP gradient scaler.

    ``step``: step ``s`` (1-based) trains at ``lr * gamma ** #{m : m * per_epoch <= s - 1}`` for
    the milestones ``m`` (epochs): epoch ``e`` (0-based) starts at iteration ``e * per_epoch``.
    ``cosine``: at ``lr * lr_factor("cosine", s - 1, steps)`` (:func:`lr_factor`).
    """

    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler

    @classmethod
    def build(cls, module: nn.Module, cfg: TrainConfig, runtime: Runtime, per_epoch: int) -> "Optimisation":
        """``per_epoch``: batches per epoch of this process (the milestones' unit)."""
        parameters = list(module.parameters())
        if cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        else:
            optimizer = torch.optim.Adam(parameters, lr=cfg.lr, betas=cfg.betas)
        if cfg.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor("cosine", step, cfg.steps))
        else:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=[per_epoch * m for m in cfg.lr_milestones], gamma=cfg.lr_gamma)
        return cls(parameters, optimizer, scheduler, torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fast_forward(self, step: int) -> None:
        """Put the schedule where it is after ``step`` steps (for checkpoints saved without one)."""
        self.scheduler.last_epoch = step
        decays = sum(count for milestone, count in self.scheduler.milestones.items() if milestone <= step)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.scheduler.gamma ** decays

    def step(self, loss: torch.Tensor, grad_clip: float) -> Optional[float]:
        """Backward, clip the gradient norm to ``grad_clip`` (0: off), step; the norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        norm = None
        if grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return norm
