"""The output folder ``--out`` of one evaluation setting: whose results it holds.

``<out>/run.json`` records the run key and the settings it hashes (:func:`propagate.run.run_settings`:
propagation, encoder and checkpoint, adaptation, dataset, the task's settings).
:func:`claim_output` runs before any prediction is made:

* a folder that is empty, or holds results of the same settings, is used as is (a rerun
  completes it: finished videos are skipped, ``--overwrite`` redoes them);
* a folder holding results of other settings (or of an unknown run) is an
  :class:`corr.errors.OutputError` naming the settings that differ; with ``--overwrite``
  its ``results.json``, ``run.json``, per-video records, predictions and overlays are deleted
  first. So ``results.json`` only ever describes predictions of its own settings.

Temporary files of interrupted atomic writes in the folder are removed at the same time.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from corr.errors import OutputError
from corr.io import atomic_write_json, remove_stale_temporaries

logger = logging.getLogger("propagate")

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
#: What a run writes into its folder (the files and the folders under it).
RUN_OUTPUTS = (RESULTS_FILE, RUN_FILE, "sequences", "predictions", "vis", "masks", "tracks.npz", "overlay.mp4")


def claim_output(out: Path, key: str, settings: dict, overwrite: bool, write: bool = True) -> None:
    """Make ``out`` this run's (module docstring), before predicting. Every process checks (so each
    stops with the same error); only the one with ``write`` deletes and writes."""
    earlier = _earlier_run(out, key)
    if earlier is not None and earlier.get("run_key") != key:
        if not overwrite:
            changed = _differences(earlier.get("settings"), settings)
            raise OutputError(f"{out} holds results of other settings ({changed}); choose another --out, or give "
                              "--overwrite to replace them")
        if not write:
            return
        for name in RUN_OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        logger.info("--overwrite: removed the results of other settings from %s", out)
    if write:
        for folder in (out, out / "sequences", out / "predictions"):
            remove_stale_temporaries(folder, recursive=folder != out)
        atomic_write_json(out / RUN_FILE, {"run_key": key, "settings": settings})


def _earlier_run(out: Path, key: str) -> Optional[dict]:
    """What ``out`` holds: ``run.json``'s content; for a folder written before ``run.json``
    existed, the key of its records (``settings`` unknown); None when it holds no results."""
    try:
        return json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        pass
    except (OSError, json.JSONDecodeError):
        return {"run_key": None}
    keys = set()
    for record in sorted((out / "sequences").rglob("*.json")) if (out / "sequences").is_dir() else []:
        try:
            keys.add(json.loads(record.read_text()).get("run_key"))
        except (OSError, json.JSONDecodeError, AttributeError):
            keys.add(None)
    if keys:
        return {"run_key": key if keys == {key} else None}
    return {"run_key": None} if (out / RESULTS_FILE).exists() else None


def _differences(before: Any, now: dict, limit: int = 4) -> str:
    """``a.b: old -> new; ...`` for the settings that changed (at most ``limit``)."""
    if not isinstance(before, dict):
        return "made by an earlier run whose settings are not recorded"
    old, new = _flatten(before), _flatten(json.loads(json.dumps(now, default=str)))
    changed = [f"{name}: {old.get(name)!r} -> {new.get(name)!r}" for name in sorted(set(old) | set(new))
               if old.get(name) != new.get(name)]
    more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more if changed else "the same settings under another key"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for name, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{name}" if prefix else str(name)))
    return flat
