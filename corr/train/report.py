"""What a training run reports: the log lines, the progress bar and TensorBoard (main process only).

Scalars every ``log_every`` steps and at the last step, each the mean over the steps since the
last report: ``train/loss``, the losses' diagnostics (``name/loss``, ``name/...``,
``train/grad_norm`` when clipping), ``train/lr``, ``speed/clips_per_s`` (all processes),
``speed/data_wait_share`` and ``data/skipped_videos``. Images (:mod:`corr.train.figures`)
every ``image_every`` steps and at the run's first step. Every step's loss also goes to
``losses.jsonl`` (:class:`corr.train.run_folder.LossLog`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from corr.runtime import Runtime
from corr.train.config import TrainConfig
from corr.train.objectives import trained_network_name

logger = logging.getLogger("corr.train")


def log_start(cfg: TrainConfig, runtime: Runtime, clips_per_epoch: int, steps_per_epoch: int) -> None:
    logger.info("training %s (%s nodes, %d-frame clips) for %d steps: batch %d x %d process(es) on %s%s; "
                "%d clips per epoch (%d steps)", trained_network_name(cfg), cfg.mode, cfg.clip_len, cfg.steps,
                cfg.batch_size, runtime.world_size, runtime.device, " with AMP" if runtime.amp else "",
                clips_per_epoch, steps_per_epoch)


def log_done(step: int, losses: dict[int, float], checkpoint_path: Path) -> None:
    first = losses[min(losses)] if losses else float("nan")
    logger.info("done: step %d, loss %.4f -> %.4f; checkpoint: %s (evaluate with: python evaluate.py "
                "--checkpoint %s)", step, first, losses[max(losses)] if losses else float("nan"),
                checkpoint_path.resolve(), checkpoint_path)


@dataclass
class Window:
    """Sums over the steps since the last report."""

    clips: int = 0
    wait: float = 0.0
    time: float = 0.0
    loss: float = 0.0
    diagnostics: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, loss: float, diagnostics: dict[str, float], clips: int, waited: float, elapsed: float) -> None:
        self.clips, self.wait, self.time, self.count, self.loss = (
            self.clips + clips, self.wait + waited, self.time + elapsed, self.count + 1, self.loss + loss)
        for key, value in diagnostics.items():
            self.diagnostics[key] = self.diagnostics.get(key, 0.0) + value

    def scalars(self, lr: float, skipped_videos: int) -> dict[str, float]:
        """TensorBoard tag -> value: means over the window, rates over its time."""
        return {"train/loss": self.loss / self.count,
                **{key: value / self.count for key, value in self.diagnostics.items()},
                "train/lr": lr,
                "speed/clips_per_s": self.clips / max(self.time, 1e-9),
                "speed/data_wait_share": self.wait / max(self.time, 1e-9),
                "data/skipped_videos": skipped_videos}


class Reporter:
    """The progress bar and TensorBoard writer of the main process (other processes only count)."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime, first_step: int, earlier: Sequence[dict] = ()):
        """``earlier``: the loss log's entries up to ``first_step`` (a resumed run); those after the
        last report before ``first_step`` open the first window, as in a run never stopped."""
        self.cfg, self.first_step, self.window = cfg, first_step, Window()
        boundary = first_step - first_step % cfg.log_every
        for entry in earlier:
            if entry["step"] > boundary:
                diagnostics = {k: v for k, v in entry.items() if k not in ("step", "loss", "lr")}
                self.window.add(entry["loss"], diagnostics, 0, 0.0, 0.0)
        self.writer = self.progress = None
        if runtime.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(cfg.out)))
        if runtime.is_main and cfg.progress:
            from tqdm import tqdm

            self.progress = tqdm(total=cfg.steps, initial=first_step, desc="train", unit="step", dynamic_ncols=True)

    def images_due(self, step: int) -> bool:
        every = self.cfg.image_every
        return self.writer is not None and every > 0 and (step % every == 0 or step == self.first_step + 1)

    def record(self, step: int, loss: float, diagnostics: dict[str, float], clips: int, waited: float,
               elapsed: float, lr: float, skipped_videos: int) -> None:
        """One finished step: ``clips`` over all processes, ``waited`` for data of ``elapsed`` seconds."""
        self.window.add(loss, diagnostics, clips, waited, elapsed)
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{loss:.3f}")
        if self.writer is not None and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
            for tag, value in self.window.scalars(lr, skipped_videos).items():
                self.writer.add_scalar(tag, value, step)
            self.window = Window()

    def images(self, step: int, images: list[tuple[str, np.ndarray]]) -> None:
        for tag, image in images:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
