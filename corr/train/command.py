"""``python train.py``: the command line of :func:`corr.train.train`, one ``--option`` per field
of :class:`corr.train.TrainConfig`; ``--help`` lists the presets and the objectives from
their registries (:func:`corr.train.config.presets`, :data:`corr.train.objectives.OBJECTIVES`).
Under ``torchrun`` only rank 0 logs below warnings; the process group is left at the end.
"""
from __future__ import annotations

import logging
import os
import textwrap
from typing import Any, Optional

import corr.train as package
from corr.cli import parse_config
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
    """The package docstring, then every preset (as its changes to the one it extends) and objective."""
    lines = [package.__doc__.rstrip(), "", PRESET_HEADER]
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
    cfg = parse_config(TrainConfig, argv, description=help_text())
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return train(cfg)
    finally:
        Runtime().close()                       # leave the process group train() joined under torchrun
