"""Training checkpoints (``corr-checkpoint-v1``, read by ``corr.encoders.load_checkpoint``) and
the random states that make a resumed run continue exactly.

Layout: ``format``; ``encoder`` ``{name, kwargs, state_dict}``; ``heads`` ``{walk, losses?}``
(``losses``: the weights the losses own, e.g. the TimeCycle tracker, when there are any);
``optimizer``, ``scaler``, ``scheduler``, ``step``; ``rng`` (torch, cuda, numpy, python
states, in a form a weights-only ``torch.load`` accepts); ``config`` (the resolved
:class:`TrainConfig` as a dict) and ``losses`` (name -> weight).

Each step's randomness (edge dropout) comes from the global torch generator reseeded with
(seed, step, rank) at the start of the step (:func:`step_seed`), so a run resumed from the
checkpoint of step s computes the same losses from step s+1 on as a run never stopped
(bit-identical on the CPU). A NaN or infinite loss stops the run before its step is saved
(:func:`check_finite`), so the checkpoint on disk is always the last good one.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from corr.encoders import CHECKPOINT_FORMAT, read_torch_file
from corr.errors import CheckpointError, UserError
from corr.graph import WalkModel
from corr.runtime import Runtime
from corr.train.config import CRW, TrainConfig
from corr.train.module import Optimisation, TrainModule
from corr.train.objectives import OBJECTIVES, encoder_kwargs, parse_loss_spec

logger = logging.getLogger("corr.train")


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving that step."""


#: Settings a resumed run must share with its checkpoint, before the objectives' ``resume_keys``.
RESUME_KEYS = ("encoder", "head_dim", "head_depth", "padding", "mode", "clip_len", "clip_offsets", "batch_size",
               "seed", "loss")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch generator for ``step`` (1-based) on process ``rank``."""
    return seed * 1_000_003 + step * 1_009 + rank


def rng_state() -> dict[str, Any]:
    """RNG states in a form a weights-only ``torch.load`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_dict(cfg: TrainConfig, model: WalkModel, optimizer, scaler, scheduler, step: int,
                    loss_fn: Optional[nn.Module] = None) -> dict[str, Any]:
    """The ``corr-checkpoint-v1`` layout (module docstring)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "encoder": {"name": cfg.encoder, "kwargs": encoder_kwargs(cfg.encoder, cfg.padding),
                    "state_dict": model.encoder.state_dict()},
        "heads": {"walk": model.head.state_dict(),
                  **({"losses": loss_fn.state_dict()} if loss_fn is not None and loss_fn.state_dict() else {})},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "rng": rng_state(),
        "config": asdict(cfg),
        "losses": parse_loss_spec(cfg.loss),
    }


def resume_keys(loss: str) -> tuple[str, ...]:
    """:data:`RESUME_KEYS`, then those of the objectives of ``loss`` (they fix the shapes of the
    weights those losses own)."""
    keys = list(RESUME_KEYS)
    for objective in (OBJECTIVES[name] for name in parse_loss_spec(loss)):
        keys += [key for key in objective.resume_keys if key not in keys]
    return tuple(keys)


def load_training_state(path: Path, cfg: TrainConfig, model: WalkModel, optimisation: Optimisation,
                        loss_fn: Optional[nn.Module] = None) -> int:
    """Restore everything from ``path``; return the step it was saved at. Settings older
    checkpoints lack count as the ``crw`` preset's; a checkpoint without a step schedule (saved
    with a constant rate) resumes on the configured schedule at its step."""
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint ({found!r}); --resume continues runs "
                              "of train.py")
    saved = {**asdict(CRW), **state.get("config", {})}
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}"
               for k in resume_keys(cfg.loss) if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise CheckpointError(f"{path} was trained with other settings; resuming would not continue it "
                         f"({'; '.join(changed)})")
    model.encoder.load_state_dict(state["encoder"]["state_dict"])
    model.head.load_state_dict(state["heads"]["walk"])
    if loss_fn is not None and "losses" in state["heads"]:
        loss_fn.load_state_dict(state["heads"]["losses"])       # heads that live in losses (cycle tracker, ...)
    optimisation.optimizer.load_state_dict(state["optimizer"])
    optimisation.scaler.load_state_dict(state["scaler"])
    if "milestones" in state.get("scheduler", {}):
        optimisation.scheduler.load_state_dict(state["scheduler"])
    else:
        optimisation.fast_forward(int(state["step"]))
    set_rng_state(state["rng"])
    return int(state["step"])


def resume(path: Path, cfg: TrainConfig, runtime: Runtime, module: TrainModule, optimisation: Optimisation) -> int:
    """The step to start after: the checkpoint's with ``cfg.resume`` (everything restored), else 0."""
    if not cfg.resume:
        return 0
    if not path.is_file():
        if runtime.is_main:
            logger.warning("--resume: %s does not exist; starting from step 0", path)
        return 0
    step = load_training_state(path, cfg, module.model, optimisation, module.losses)
    if runtime.is_main:
        logger.info("resumed from %s at step %d", path, step)
    return step


def check_finite(loss: float, step: int, checkpoint_path: Path, last_saved: Optional[int]) -> float:
    """``loss``, or :class:`NonFiniteLossError` naming the last good checkpoint."""
    if not math.isfinite(loss):
        where = (f"the last good checkpoint is {checkpoint_path} (step {last_saved})" if last_saved is not None
                 else "no checkpoint was written")
        raise NonFiniteLossError(f"the loss is {loss} at step {step}; stopping the run ({where}). "
                                 "Try a lower --lr, a higher --temperature, or --no-amp.")
    return loss
