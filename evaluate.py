"""Evaluate an encoder on a benchmark: ``python evaluate.py --task davis --help``.

    python evaluate.py --task davis --data-root data/DAVIS --checkpoint ckpt.pt
    torchrun --nproc_per_node=G evaluate.py --task jhmdb ...

Looks the ``--task`` up in the registry (:data:`propagate.tasks.TASKS`) and runs it with the
one runner (:func:`propagate.run.evaluate_task`) in this process's :class:`corr.runtime.Runtime`
(gloo under torchrun: evaluation only synchronises), which it leaves at the end. Outputs
under ``--out`` (default ``results/<task>``): docs/evaluation.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

from corr.cli import parse_config
from corr.errors import run_command
from corr.runtime import start_runtime
from propagate.eval_config import EvalConfig
from propagate.report import write_report
from propagate.run import evaluate_task
from propagate.tasks import TASKS, get_task


def evaluate(cfg: EvalConfig) -> Optional[dict]:
    """Run ``cfg.task`` (or its sweep) and, with ``--report``, write its HTML report (rank 0);
    returns results.json's content (the sweep's summary), None on ranks other than 0."""
    task = get_task(cfg.task)
    cfg = task.configure(cfg)
    runtime = start_runtime(cfg.device, backend="gloo")
    try:
        results = evaluate_task(task, cfg, runtime)
        if results is not None and cfg.report:
            print(f"report: {write_report(cfg.out)}")
        return results
    finally:
        runtime.close()


def parse_args(argv: Optional[Sequence[str]] = None) -> EvalConfig:
    """The command line as an :class:`EvalConfig`; ``--task`` lists the registered tasks."""
    return parse_config(EvalConfig, argv, help_texts={"task": f"benchmark: {'|'.join(TASKS)}"})


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """``evaluate.py``: a user error (corr.errors) prints one line and exits with status 2
    (``--debug``: the traceback)."""
    cfg = parse_args(argv)
    return run_command(lambda: evaluate(cfg), cfg.debug, "evaluate.py")


if __name__ == "__main__":
    main()
