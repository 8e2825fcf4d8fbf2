"""The training loop: config -> seed -> data -> model -> losses -> steps.

``train(cfg)`` resolves ``cfg`` (:func:`corr.train.config.resolve_config`), joins the process
group under ``torchrun``, and trains until step ``cfg.steps``, writing to ``cfg.out``:
``checkpoint.pt`` every ``checkpoint_every`` steps and at the end (always the latest, written
atomically), ``config.json`` (the resolved config), ``losses.jsonl`` (every step's loss),
TensorBoard events and, when videos could not be used, ``skipped_videos.txt``; an ``--out``
that holds a run needs ``--resume`` or ``--overwrite`` (:mod:`corr.train.run_folder`). With
``resume`` it continues from ``checkpoint.pt`` exactly (:mod:`corr.train.checkpoint`,
:mod:`corr.train.data`). A NaN or infinite loss stops
the run before that step is saved (:class:`corr.train.checkpoint.NonFiniteLossError`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from corr.graph import WalkModel
from corr.io import atomic_torch_save, atomic_write_json
from corr.runtime import Runtime, start_runtime
from corr.train.checkpoint import check_finite, checkpoint_dict, resume, seed_everything, step_seed
from corr.train.config import EPOCHS, TrainConfig, resolve_config
from corr.train.data import (
    SKIPPED_FILE,
    SkippedVideos,
    batch_stream,
    batches_per_epoch,
    build_dataset,
    prepare_demo_data,
)
from corr.train.module import Optimisation, TrainModule, WeightedLosses, build_train_module, distribute
from corr.train.objectives import loss_images
from corr.train.report import Reporter, log_done, log_start
from corr.train.run_folder import CHECKPOINT_FILE, CONFIG_FILE, LOSS_LOG_FILE, LossLog, prepare_run_folder

logger = logging.getLogger("corr.train")


@dataclass
class TrainResult:
    cfg: TrainConfig
    model: WalkModel               # unwrapped (no DDP), on the training device
    first_step: int                # the step the run started after (0, or the resumed step)
    last_step: int
    losses: dict[int, float]       # step -> loss (averaged over processes)
    checkpoint: Optional[Path]
    skipped_videos: dict[str, str]  # path -> reason, as seen by this process
    loss_fn: Optional[WeightedLosses] = None  # the losses with the heads they own (no DDP)


def train(cfg: TrainConfig, dataset: Optional[Dataset] = None) -> TrainResult:
    """Run (or resume) training as configured; ``dataset`` replaces the one ``cfg.data`` names
    (items as :mod:`corr.train.data` describes)."""
    cfg = resolve_config(cfg)
    runtime = start_training_runtime(cfg)
    out = Path(cfg.out)
    prepare_run_folder(out, cfg.resume, cfg.overwrite, runtime.is_main)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if dataset is None:
        dataset = build_dataset(cfg, cfg.data if cfg.data is not None else prepare_demo_data(runtime))
    skipped = SkippedVideos(out / SKIPPED_FILE, write=runtime.is_main)
    skipped.left_out(getattr(dataset, "bad_videos", []))
    per_epoch = batches_per_epoch(len(dataset), cfg.batch_size, runtime.world_size)
    if cfg.steps is None:
        cfg = dataclasses.replace(cfg, steps=max(1, EPOCHS * per_epoch))

    module = build_train_module(cfg, runtime)
    optimisation = Optimisation.build(module, cfg, runtime, per_epoch)
    checkpoint_path = out / CHECKPOINT_FILE
    first_step = resume(checkpoint_path, cfg, runtime, module, optimisation)
    if runtime.is_main:
        atomic_write_json(out / CONFIG_FILE, asdict(cfg))
        log_start(cfg, runtime, len(dataset), per_epoch)
    losses, last_saved = run_steps(cfg, runtime, module, optimisation, dataset, skipped, first_step, checkpoint_path)
    last_step = max(losses, default=first_step)
    if runtime.is_main:
        log_done(last_step, losses, checkpoint_path)
    return TrainResult(cfg, module.model, first_step, last_step, losses,
                       checkpoint_path if last_saved is not None else None, skipped.videos, module.losses)


def run_steps(cfg: TrainConfig, runtime: Runtime, module: TrainModule, optimisation: Optimisation,
              dataset: Dataset, skipped: SkippedVideos, step: int, checkpoint_path: Path
              ) -> tuple[dict[int, float], Optional[int]]:
    """Steps ``step + 1 .. cfg.steps``; returns step -> loss (averaged over processes) and the
    step of the last checkpoint (``None``: none was written or resumed from)."""
    train_module = distribute(module, runtime)
    train_module.train()
    loss_log = LossLog(checkpoint_path.parent / LOSS_LOG_FILE, step, write=runtime.is_main)
    reporter = Reporter(cfg, runtime, step, earlier=loss_log.earlier)
    stream = batch_stream(dataset, cfg, runtime, step)
    losses: dict[int, float] = {}
    last_saved = step if checkpoint_path.is_file() and cfg.resume else None
    stride = getattr(module.model.encoder, "stride", 8)
    try:
        while step < cfg.steps:
            tick = time.perf_counter()
            batch = next(stream)
            clip = batch["clip"].to(runtime.device, non_blocking=True)
            flow_pairs = ({key: pair.to(runtime.device, non_blocking=True) for key, pair in batch["flow_pair"].items()}
                          if "flow_pair" in batch else None)
            waited = time.perf_counter() - tick
            skipped.skipped(batch.get("skipped", []))
            step += 1
            torch.manual_seed(step_seed(cfg.seed, step, runtime.rank))       # edge dropout of this step
            images_now = reporter.images_due(step)
            with torch.autocast(device_type=runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                loss, diagnostics, *visuals = train_module(clip, visuals=images_now, flow_pairs=flow_pairs)
            losses[step] = check_finite(float(runtime.mean(loss)), step, checkpoint_path, last_saved)
            norm = optimisation.step(loss, cfg.grad_clip)
            if norm is not None:
                diagnostics = {**diagnostics, "train/grad_norm": norm}
            reporter.record(step, losses[step], diagnostics, clip.shape[0] * runtime.world_size, waited,
                            time.perf_counter() - tick, optimisation.lr, len(skipped.videos))
            loss_log.append(step, losses[step], optimisation.lr, diagnostics)
            if images_now:
                reporter.images(step, loss_images(clip[0], visuals[0], cfg, stride))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if runtime.is_main:
                    atomic_torch_save(checkpoint_dict(cfg, module.model, optimisation.optimizer, optimisation.scaler,
                                                      optimisation.scheduler, step, module.losses), checkpoint_path)
                last_saved = step
    finally:
        reporter.close()
        loss_log.close()
        stream.close()
    return losses, last_saved


def start_training_runtime(cfg: TrainConfig) -> Runtime:
    """This process's device and place under ``torchrun`` (nccl on CUDA, gloo on the CPU)."""
    runtime = start_runtime(cfg.device, backend="auto", amp=cfg.amp)
    if cfg.amp and runtime.device.type != "cuda":
        logger.warning("--amp needs CUDA; training in float32 on the CPU")
    return runtime
