"""The run folder ``--out``: what a new run may do to it, and the per-step loss log.

A folder *holds a run* when it has ``checkpoint.pt``, ``config.json`` or ``losses.jsonl``.
:func:`prepare_run_folder` decides before anything is read or written:

* ``--resume``: continue the run (stale temporary files of interrupted atomic writes are
  removed first);
* ``--overwrite``: start over; the run's files (checkpoint, config, loss log, skipped-video
  list, TensorBoard events) are deleted first, anything else in the folder is left alone;
* neither: an :class:`corr.errors.OutputError` that names the folder and both options.

:class:`LossLog` writes ``losses.jsonl``: one JSON object per step, ``{"step", "loss", "lr",
<diagnostic>: value, ...}`` (the loss averaged over processes, the diagnostics of the main
process). A resumed run first cuts the log back to the checkpoint's step, so its log equals
that of a run never stopped (on the CPU, where resumed losses are bit-identical).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Optional

from corr.errors import OptionError, OutputError
from corr.io import atomic_write_bytes, remove_stale_temporaries

logger = logging.getLogger("corr.train")

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
LOSS_LOG_FILE = "losses.jsonl"
RUN_FILES = (CHECKPOINT_FILE, CONFIG_FILE, LOSS_LOG_FILE, "skipped_videos.txt")


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in (CHECKPOINT_FILE, CONFIG_FILE, LOSS_LOG_FILE))


def prepare_run_folder(out: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Check that this run may use ``out`` and clear it as ``--resume`` / ``--overwrite`` ask (module
    docstring); only the main process deletes."""
    if resume and overwrite:
        raise OptionError("--resume continues the run in --out and --overwrite starts it over; give one of them")
    if holds_run(out) and not (resume or overwrite):
        raise OutputError(f"{out} holds a training run ({_describe(out)}); continue it with --resume, start over "
                          f"with --overwrite (deletes it), or choose another --out")
    if not is_main or not out.is_dir():
        return
    removed = remove_stale_temporaries(out)
    if overwrite and holds_run(out):
        for path in [out / name for name in RUN_FILES] + sorted(out.glob("events.out.tfevents.*")):
            if path.is_file():
                path.unlink()
                removed.append(path)
        logger.info("--overwrite: started over in %s", out)
    if removed:
        logger.info("removed %d file(s) of an earlier run or interrupted write in %s", len(removed), out)


def _describe(out: Path) -> str:
    """What the folder holds, e.g. ``checkpoint.pt at step 500`` (the last logged step if no checkpoint)."""
    steps = read_loss_log(out / LOSS_LOG_FILE)
    if (out / CHECKPOINT_FILE).exists():
        return "checkpoint.pt" + (f", losses up to step {steps[-1]['step']}" if steps else "")
    return f"{CONFIG_FILE}" + (f", losses up to step {steps[-1]['step']}" if steps else "")


def read_loss_log(path: Path) -> list[dict]:
    """The entries of a loss log in step order; a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return sorted(entries, key=lambda entry: entry["step"])


class LossLog:
    """``losses.jsonl`` of a run starting after ``first_step`` (module docstring).

    ``earlier``: the entries up to ``first_step`` that the log keeps (empty for a new run).
    """

    def __init__(self, path: Path, first_step: int, write: bool):
        self.path = path
        self.earlier = [entry for entry in read_loss_log(path) if entry["step"] <= first_step] if first_step else []
        self.file: Optional[IO[str]] = None
        if write:
            atomic_write_bytes(path, "".join(json.dumps(entry) + "\n" for entry in self.earlier).encode())
            self.file = open(path, "a")

    def append(self, step: int, loss: float, lr: float, diagnostics: dict[str, float]) -> None:
        if self.file is None:
            return
        try:
            self.file.write(json.dumps({"step": step, "loss": loss, "lr": lr,
                                        **{k: float(v) for k, v in diagnostics.items()}}) + "\n")
            self.file.flush()
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write ({error.strerror or error}); free space or choose "
                              "another --out, then continue with --resume") from error

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
