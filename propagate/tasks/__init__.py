"""The benchmarks ``evaluate.py --task`` knows: one :class:`propagate.task.Task` per module, one line each here.

Adding a benchmark: a module defining a :class:`~propagate.task.Task` subclass and its line
in :data:`TASKS`; the runner (:mod:`propagate.run`) needs nothing else.
"""
from __future__ import annotations

from corr.errors import OptionError

from ..eval_config import EvalConfig
from ..task import Task
from .davis import DavisTask
from .jhmdb import JhmdbTask
from .tapvid import TapVidTask
from .video import VideoTask
from .vip import VipTask

#: ``--task`` name -> task, in the order ``--help`` lists them.
TASKS: dict[str, Task] = {
    "davis": DavisTask(),
    "jhmdb": JhmdbTask(),
    "vip": VipTask(),
    "tapvid": TapVidTask(),
    "video": VideoTask(),
}


def get_task(name: str) -> Task:
    """The registered task ``name``; a ValueError naming the known ones otherwise."""
    if name not in TASKS:
        raise OptionError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]


def configure(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with its task's defaults filled in, validated (:meth:`propagate.task.Task.configure`)."""
    return get_task(cfg.task).configure(cfg)
