"""Training by the contrastive random walk and the other objectives (``--loss``), from named
presets (``--preset``; docs/objectives.md).

    python train.py --data /data/kinetics400/train --out runs/crw          # one GPU or the CPU
    torchrun --nproc_per_node=4 train.py --data /data/kinetics400/train    # DDP, one GPU each
    python train.py --out runs/crw --resume                                 # continue a run
    python train.py --loss cycle --data /data/vlog                          # TimeCycle's setup
    python train.py                                                         # the demo

Run folder ``--out``: ``checkpoint.pt`` (always the latest, written atomically),
``config.json`` (the resolved configuration), the TensorBoard event files (``tensorboard
--logdir OUT``) and, when videos could not be used, ``skipped_videos.txt`` (path and reason,
one per line; each is also logged once) and ``losses.jsonl`` (one ``{"step", "loss", "lr"}``
per step). A folder that holds a run is continued with ``--resume`` or started over with
``--overwrite``, never replaced otherwise. Without ``--data`` the run trains on generated
synthetic clips in minutes on a CPU. Under ``torchrun`` only rank 0 logs below warnings.
"""
from __future__ import annotations

import logging
import os
import textwrap
from typing import Any, Optional

from corr.cli import parse_config
from corr.errors import run_command
from corr.runtime import Runtime
from corr.train.config import CRW, EPOCHS, SETUP_OPTIONS, TrainConfig, presets
from corr.train.loop import TrainResult, train
from corr.train.objectives import OBJECTIVES

PRESET_HEADER = """\
presets (--preset NAME; without it: the --loss objective's preset, crw for a mix, NAME-demo
without --data). Options given on the command line override the preset; options left out (or
given as none) never do."""


def _settings(cfg: TrainConfig, base: Optional[TrainConfig]) -> str:
    """``option=value`` for the setup options of ``cfg`` (all, or those that differ from ``base``)."""
    values = {name: getattr(cfg, name) for name in SETUP_OPTIONS
              if base is None or getattr(cfg, name) != getattr(base, name)}
    return " ".join(f"{name}={_text(name, value)}" for name, value in values.items())


def _text(name: str, value: Any) -> str:
    if value is None:
        return f"none ({EPOCHS} epochs)" if name == "steps" else "none"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def help_text() -> str:
    """This module's docstring, then every preset (as its changes to the one it extends) and objective."""
    lines = [__doc__.rstrip(), "", PRESET_HEADER]
    table = presets()
    for name, cfg in table.items():
        parent = name[:-len("-demo")] if name.endswith("-demo") else (None if cfg == CRW else "crw")
        described = _settings(cfg, None if parent is None else table[parent])
        lines.append(textwrap.fill(f"{name}: " + (f"{parent} with " if parent else "") + described, width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    lines += ["", "objectives (--loss NAME, or NAME=WEIGHT,... for a mix over one encoder):"]
    for name, objective in OBJECTIVES.items():
        kind = "whole frames, --mode dense" if objective.needs_frames else "walk nodes"
        lines.append(textwrap.fill(f"{name}: {objective.summary}; {kind}", width=100, initial_indent="  ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> TrainResult:
    """``train.py``: a user error (corr.errors) prints one line and exits with status 2 (``--debug``:
    the traceback)."""
    shown = {name: f"the preset's; crw: {_text(name, getattr(CRW, name))}" for name in SETUP_OPTIONS}
    cfg = parse_config(TrainConfig, argv, description=help_text(), shown_defaults=shown)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    return run_command(lambda: _train_and_leave(cfg), cfg.debug, "train.py")


def _train_and_leave(cfg: TrainConfig) -> TrainResult:
    try:
        return train(cfg)
    finally:
        Runtime().close()                       # leave the process group train() joined under torchrun
