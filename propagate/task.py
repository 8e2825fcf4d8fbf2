"""What a benchmark is to the runner: the :class:`Task` interface, and what tasks share.

A task (one module under ``propagate/tasks/``, one line in its ``TASKS`` registry) states
its defaults (:class:`TaskDefaults`), how its labels go to the feature grid and back
(``label_resampling``, results.json's ``"factors"``), its headline metrics (the sweep
table), and how to open its dataset, predict one video into a per-video record (writing
predictions in the benchmark's format under ``<out>/predictions``, overlays under
``<out>/vis`` with ``--vis``), merge the records into results.json's fields and print its
table. The runner (:mod:`propagate.run`) does the rest: setup (:class:`TaskRun`), sharding,
resume, caching, sweeps and results.json. Benchmarks and their protocols:
docs/benchmarks.md; label propagation: docs/propagation.md.

A record is a dict with at least ``num_frames`` and ``timings`` (seconds: ``features``,
``propagation``, ``adaptation``, ...); one that names a ``predictions`` file (relative to
``--out``) counts as done only while that file exists.
"""
from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from corr.errors import OptionError
from corr.runtime import Runtime

from .config import PropagationConfig
from .encoder_loading import load_encoder
from .eval_config import EvalConfig
from .video_writer import write_video
from .visualize import contact_sheet, save_png

#: One video of a task's stream: its name and how to open it.
VideoEntry = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class TaskDefaults:
    """What a task uses when an option is not given.

    input_size: (H, W) every frame is resized to before feature extraction (None = native,
                and then ``--input-size`` is refused);
    split:      the split (a name, or a split file relative to the root);
    data:       the dataset looked for when ``--data-root`` is not given;
    synthetic:  where a generated stand-in is written when ``data`` does not exist either.
    """

    input_size: Optional[tuple[int, int]]
    split: Optional[str]
    data: Path
    synthetic: Path


@dataclass
class TaskRun:
    """What the runner sets up before the per-video loop, handed to every task method.

    cfg:          the configuration with the task's defaults filled in;
    runtime:      this process among the evaluation processes, and its device;
    encoder:      the module that makes the predictions (an encoder, or the walk tracker's
                  network) and ``encoder_info``, where its weights came from (results.json's
                  ``"checkpoint"``);
    prop_cfg:     the propagation settings (None when the task does not propagate labels);
    dataset:      the opened dataset and ``identity``, its description (``dataset.identity()``);
    settings:     the task's settings that change a video's result (input size, decoding,
                  tracking), hashed into ``key``, the run key of every per-video record.
    """

    cfg: EvalConfig
    runtime: Runtime
    encoder: torch.nn.Module
    encoder_info: dict
    prop_cfg: Optional[PropagationConfig]
    dataset: object
    identity: dict
    settings: dict
    key: str

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def describe(self) -> str:
        """``encoder ...; propagation ...; device ...[; G processes]`` for the opening line."""
        info = self.encoder_info
        method = f"propagation {self.prop_cfg}" if self.prop_cfg is not None else f"walk tracker {self.settings}"
        return (f"encoder {info['encoder']} ({info['format']}); {method}; device {self.device}"
                + (f"; {self.runtime.world_size} processes" if self.runtime.distributed else ""))


class Task(ABC):
    """One benchmark. Subclasses set the class attributes and implement the abstract methods.

    name:              the ``--task`` value;
    title:             the benchmark's name in messages (``DAVIS``);
    defaults:          :class:`TaskDefaults`;
    label_resampling:  ``{"labels_to_grid": ..., "outputs_to_pixels": ...}``, in words;
    headline_metrics:  the keys of ``"metrics"`` a sweep's table shows;
    settings_block:    the key of results.json's ``"config"`` that records :meth:`settings`.
    """

    name: str
    title: str
    defaults: TaskDefaults
    label_resampling: dict[str, str]
    headline_metrics: tuple[str, ...]
    settings_block: Optional[str] = None
    #: the propagation settings' ``frames`` and ``output_norm`` values the task implements.
    frame_protocols: tuple[str, ...] = ("common",)
    output_norms: tuple[str, ...] = ("none",)

    def configure(self, cfg: EvalConfig) -> EvalConfig:
        """``cfg`` with this task's defaults filled in (``out``, ``split``, ``input_size``), validated."""
        size = cfg.input_size if cfg.input_size is not None else self.defaults.input_size
        if size is not None:
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise OptionError(f"--input-size must be H,W (two positive integers), got {cfg.input_size}")
        if self.defaults.input_size is None and cfg.input_size is not None:
            raise OptionError(f"--input-size is not supported by the {self.title} task (native resolution; "
                             f"see --resolution)")
        cfg.validate()
        if self.propagates(cfg):
            prop = cfg.propagation()
            for name, value, known in (("frames", prop.frames, self.frame_protocols),
                                       ("output-norm", prop.output_norm, self.output_norms)):
                if value not in known:
                    raise OptionError(f"--{name} {value} (preset {cfg.preset}) is not implemented by the "
                                      f"{self.title} task; give --{name} {known[0]}")
        return dataclasses.replace(cfg, out=cfg.out or f"results/{cfg.task}",
                                   split=cfg.split if cfg.split is not None else self.defaults.split,
                                   input_size=size)

    def propagates(self, cfg: EvalConfig) -> bool:
        """Whether this run propagates labels (else the task's own tracker: no propagation settings)."""
        return True

    def load_model(self, cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
        """The network that predicts and its description (:func:`propagate.encoder_loading.load_encoder`)."""
        return load_encoder(cfg, device)

    def factors(self, cfg: EvalConfig) -> dict:
        """results.json's ``"factors"``: the implementation factors this run used."""
        return propagation_factors(cfg, self.label_resampling)

    def settings(self, cfg: EvalConfig, dataset: object) -> dict:
        """The task's settings that change a video's result (hashed into the run key)."""
        return {}

    @abstractmethod
    def open(self, cfg: EvalConfig) -> object:
        """The dataset of ``--data-root``, the default location, or a generated stand-in (with a
        :func:`synthetic_banner`); it has ``identity() -> dict``."""

    @abstractmethod
    def describe(self, run: TaskRun) -> str:
        """The opening line printed by rank 0 (the videos, the input, :meth:`TaskRun.describe`)."""

    def names(self, run: TaskRun) -> list[str]:
        """The names of the selected videos, in order; unknown ``--sequences`` are an error."""
        raise NotImplementedError(f"task {self.name!r} lists its videos with names() or videos()")

    def videos(self, run: TaskRun) -> Iterable[VideoEntry]:
        """The selected videos in order, as ``(name, open_video)``: by default :meth:`names`,
        each opened as ``run.dataset[name]``. A task whose dataset streams overrides this."""
        return [(name, lambda name=name: run.dataset[name]) for name in self.names(run)]

    def prediction_path(self, run: TaskRun) -> Path:
        """Where the predictions are written (printed at the end)."""
        return run.out / "predictions"

    @abstractmethod
    def predict(self, run: TaskRun, video: object) -> dict:
        """Predict one video, write its predictions (and overlays with ``--vis``); return its record."""

    @abstractmethod
    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        """Every video's record (in order) -> the fields of results.json (``"metrics"``, ...)."""

    @abstractmethod
    def print_table(self, results: dict) -> None:
        """Print the per-video table and the total of results.json's content."""


def propagation_factors(cfg: EvalConfig, label_resampling: dict[str, str]) -> dict:
    """The factors of the unified propagation formulation this run used, in one place."""
    prop = cfg.propagation()
    return {"feature_normalisation": "l2 per position" if prop.normalize_features else "none",
            "label_normalisation": prop.label_norm, **label_resampling,
            "input_resolution": list(cfg.input_size) if cfg.input_size else f"native ({cfg.resolution})",
            "frame_resize": "bilinear (cv2.INTER_LINEAR)", "context": prop.context, "topk": prop.topk,
            "radius": prop.radius, "neighbourhood": prop.neighbourhood, "restrict_first": prop.restrict_first,
            "output_norm": prop.output_norm, "frames": prop.frames,
            "temperature": prop.temperature, "pad_with_first": prop.pad_with_first,
            "feature_cache": ({"dtype": cfg.cache_dtype} if cfg.cache and cfg.tta_steps <= 0 else None),
            "test_time_adaptation": cfg.tta_steps > 0}


def select_names(names: list[str], cfg: EvalConfig) -> list[str]:
    """The videos to run: all, or the ``--sequences`` subset (unknown names are an error)."""
    if not cfg.sequences:
        return names
    unknown = [name for name in cfg.sequences if name not in names]
    if unknown:
        raise OptionError(f"--sequences names {unknown} not in the dataset ({len(names)} videos)")
    return list(cfg.sequences)


def synthetic_banner(benchmark: str, expected: Path, synthetic: Path, format_name: str) -> None:
    """Say loudly that a generated stand-in replaces a missing benchmark."""
    print("=" * 78)
    print(f"No --data-root and no {expected}: evaluating on a GENERATED synthetic set in the")
    print(f"{format_name} format ({synthetic}). Numbers are not {benchmark} numbers.")
    print("=" * 78)


def write_overlays(out_dir: Path, name: str, overlays: list[np.ndarray], fps: float = 10.0) -> None:
    """``<name>.mp4`` of the overlay frames and ``<name>.png``, a contact sheet of up to 12 of them."""
    picks = np.unique(np.linspace(0, len(overlays) - 1, min(12, len(overlays))).round().astype(int))
    write_video(out_dir / f"{name}.mp4", overlays, fps=fps)
    sheet = contact_sheet([overlays[t] for t in picks], columns=4, captions=[f"{name} t={t}" for t in picks])
    save_png(out_dir / f"{name}.png", sheet)


def print_video_table(per_video: dict[str, dict], metrics: dict, keys: list[str], total: str,
                      short: Optional[dict[str, str]] = None) -> None:
    """Per-video rows and a total row of ``keys`` (printed as percentages)."""
    short = short or {}
    width = max([24, *(len(name) + 2 for name in per_video)])
    print("\n" + f"{'video':<{width}}" + "".join(f"{short.get(k, k):>9}" for k in keys))
    for name, row in per_video.items():
        print(f"{name:<{width}}" + "".join(f"{_percent(row.get(k)):>9}" for k in keys))
    print("-" * (width + 9 * len(keys)))
    print(f"{total:<{width}}" + "".join(f"{_percent(metrics[k]):>9}" for k in keys))


def _percent(value: Optional[float]) -> str:
    return "   n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:6.1f}"
