"""The one evaluation runner: setup -> per-video predictions and records -> merge -> results.json.

    results = evaluate_task(task, cfg, runtime)   # a Task (propagate.task), any benchmark

Setup (:func:`start`): the task's defaults (:meth:`~propagate.task.Task.configure`), its
network, the propagation settings, its dataset and the run key (:func:`run_key`, a hash of
everything that determines a video's result). Each video's record goes to
``<out>/sequences/<name>.json`` as soon as it is done; a rerun with the same run key skips
it (``--overwrite`` redoes it); a folder holding results of other settings is refused
(:mod:`propagate.run_folder`). Rank 0 then reads every record back and writes
``<out>/results.json``: task, metrics, config, factors, checkpoint, code version, dataset
and timings (:func:`results_header`), plus the task's fields. ``--sweep`` evaluates each
setting into ``<out>/sweep/<setting>/`` sharing features through ``--cache`` (or
``<out>/feature-cache``), then writes ``<out>/sweep/summary.json`` and a table.

Several processes (``torchrun --nproc_per_node=G evaluate.py ...``, :class:`corr.runtime.Runtime`,
gloo: the group only synchronises): the i-th selected video belongs to rank ``i % G``; after
a barrier rank 0 alone merges. Scores come from each video's own predictions and the merge
reads the same records a single process reads on a rerun, so the metrics equal the
single-process run's exactly (timings differ). Outputs and options: docs/evaluation.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from corr.io import atomic_write_json
from corr.runtime import Runtime, code_version

from .eval_config import EvalConfig
from .run_folder import claim_output
from .sweep import parse_sweep, setting_name
from .task import Task, TaskRun


def evaluate_task(task: Task, cfg: EvalConfig, runtime: Runtime) -> Optional[dict]:
    """Run ``task`` with ``cfg`` (its defaults filled in), or every setting of ``cfg.sweep``.

    Returns the content of ``results.json`` (of ``sweep/summary.json`` for a sweep); None on
    ranks other than 0 of a multi-process run.
    """
    if cfg.task != task.name:
        raise ValueError(f"configuration for task {cfg.task!r} given to task {task.name!r}")
    cfg = task.configure(cfg)
    return evaluate_sweep(task, cfg, runtime) if cfg.sweep else evaluate_once(task, cfg, runtime)


def start(task: Task, cfg: EvalConfig, runtime: Runtime) -> TaskRun:
    """The setup of one run: network, propagation settings, dataset, the task's settings, run key."""
    encoder, encoder_info = task.load_model(cfg, runtime.device)
    propagates = task.propagates(cfg)
    dataset = task.open(cfg)
    identity = dataset.identity()
    settings = task.settings(cfg, dataset)
    hashed = run_settings(cfg, encoder_info, identity, settings or None, propagation=propagates)
    key = settings_key(hashed)
    claim_output(Path(cfg.out), key, hashed, cfg.overwrite, write=runtime.is_main)   # every rank stops alike
    runtime.barrier()                                   # no rank writes before the folder is claimed
    return TaskRun(cfg, runtime, encoder, encoder_info, cfg.propagation() if propagates else None, dataset,
                   identity, settings, key)


def run_key(cfg: EvalConfig, encoder_info: dict, dataset_identity: dict, extra: Optional[dict] = None,
            propagation: bool = True) -> str:
    """Hash of everything that determines a video's result (resume only reuses equal keys):
    :func:`settings_key` of :func:`run_settings`."""
    return settings_key(run_settings(cfg, encoder_info, dataset_identity, extra, propagation))


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_settings(cfg: EvalConfig, encoder_info: dict, dataset_identity: dict, extra: Optional[dict] = None,
                 propagation: bool = True) -> dict:
    """Everything that determines a video's result, as hashed into the run key.

    ``extra``: task settings that also change the result (input size, decoding parameters,
    tracker settings). ``propagation=False`` (the walk tracker) leaves the propagation
    preset out, since it does not change that tracker's result.
    """
    settings = {"propagation": cfg.propagation().to_dict() if propagation else None, "encoder": encoder_info,
                "adaptation": dataclasses.asdict(cfg.adaptation()) if cfg.tta_steps > 0 else None,
                "dataset": dataset_identity, "resolution": cfg.resolution}
    if extra:
        settings["task"] = extra
    if cfg.cache and cfg.tta_steps <= 0 and cfg.cache_dtype != "float32":
        settings["feature_storage"] = cfg.cache_dtype  # rounded features change the result
    return settings


def evaluate_once(task: Task, cfg: EvalConfig, runtime: Runtime) -> Optional[dict]:
    """One setting: every rank predicts its share of the videos, rank 0 merges the records."""
    run = start(task, cfg, runtime)
    if runtime.is_main:
        print(task.describe(run))
    names = predict_videos(task, run)
    runtime.barrier()
    if not runtime.is_main:
        return None
    return merge_records(task, run, names)


def predict_videos(task: Task, run: TaskRun) -> list[str]:
    """Predict this rank's videos that have no record of this run yet; returns every selected name."""
    names = []
    videos = tqdm(task.videos(run), desc="videos", unit="video", disable=not run.runtime.is_main)
    for index, (name, open_video) in enumerate(videos):
        names.append(name)
        if not run.runtime.owns(index) or (not run.cfg.overwrite and is_done(run.out, name, run.key)):
            continue
        record = task.predict(run, open_video())
        atomic_write_json(record_path(run.out, name), {"run_key": run.key, "sequence": name,
                                                       "num_frames": record["num_frames"],
                                                       "rank": run.runtime.rank, **record})
    return names


def merge_records(task: Task, run: TaskRun, names: list[str]) -> dict:
    """Read every record back (whoever wrote it), write ``results.json`` and print the table."""
    records = {name: require_record(run.out, name, run.key) for name in names}
    timings = {name: {**record["timings"], "num_frames": record["num_frames"]} for name, record in records.items()}
    results = results_header(task, run, timings)
    results.update(task.merge(run, records))
    atomic_write_json(run.out / "results.json", results)
    task.print_table(results)
    print(f"predictions: {task.prediction_path(run)}   results: {run.out / 'results.json'}")
    return results


def record_path(out: Path, name: str) -> Path:
    """Where one video's record lives: ``<out>/sequences/<name>.json`` (``name`` may hold a ``/``)."""
    return out / "sequences" / f"{name}.json"


def load_record(path: Path, key: str) -> Optional[dict]:
    """The record at ``path`` if it exists, parses and was made with run key ``key``; else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("run_key") == key else None


def is_done(out: Path, name: str, key: str) -> bool:
    """Whether ``name`` has a record of run ``key`` (and the predictions file it names, if any)."""
    record = load_record(record_path(out, name), key)
    return record is not None and ("predictions" not in record or (out / record["predictions"]).is_file())


def require_record(out: Path, name: str, key: str) -> dict:
    """The record of ``name`` made with ``key``; a clear error when a process did not write it."""
    path = record_path(out, name)
    record = load_record(path, key)
    if record is None:
        raise RuntimeError(f"{path}: missing or made with other settings after every process finished; "
                           f"rerun to complete it")
    return record


def results_header(task: Task, run: TaskRun, per_video_timings: dict[str, dict]) -> dict:
    """The part of ``results.json`` every task shares; ``"metrics"`` is filled in by the task.

    ``config.propagation`` is None when the task does not propagate labels (the walk
    tracker); the task's settings are under ``config[task.settings_block]``.
    """
    settings = {task.settings_block: run.settings} if task.settings_block else {}
    return {"task": task.name, "metrics": None, "run_key": run.key,
            "config": {"eval": dataclasses.asdict(run.cfg),
                       "propagation": run.prop_cfg.to_dict() if run.prop_cfg is not None else None, **settings},
            "factors": task.factors(run.cfg),
            "checkpoint": run.encoder_info, "code_version": code_version(), "dataset": run.identity,
            "timings": timing_summary(per_video_timings)}


def timing_summary(per_video: dict[str, dict]) -> dict:
    """Seconds and counts summed over the videos, per frame, and each video's own."""
    frames = sum(t["num_frames"] for t in per_video.values())
    features = sum(t["features"] for t in per_video.values())
    propagation = sum(t["propagation"] for t in per_video.values())
    adaptation = sum(t.get("adaptation", 0.0) for t in per_video.values())
    reading = sum(t.get("frames", 0.0) for t in per_video.values())
    hits = sum(t.get("cache") == "hit" for t in per_video.values())
    match_hits = sum(t.get("matches") == "hit" for t in per_video.values())
    return {"frames": frames, "frames_s": reading, "features_s": features, "propagation_s": propagation,
            "cache_hits": hits, "match_hits": match_hits,
            "adaptation_s": adaptation, "adaptation_s_per_video": adaptation / max(len(per_video), 1),
            "features_s_per_frame": features / max(frames, 1),
            "propagation_s_per_frame": propagation / max(frames - len(per_video), 1),
            "per_sequence": per_video}


def evaluate_sweep(task: Task, cfg: EvalConfig, runtime: Runtime) -> Optional[dict]:
    """Evaluate every setting of ``cfg.sweep`` into ``<out>/sweep/<setting>/``, reusing features.

    Features go to ``--cache`` or, without it, to ``<out>/feature-cache``; the cache keeps
    the largest top-k of the sweep, so every setting can read the matches. With ``--tracker
    walk`` the settings are the tracker's and the network runs again for each (no features
    to cache). Writes ``<out>/sweep/summary.json`` (one row per setting: overrides,
    propagation or tracking config, factors, headline metrics, timings, results path).
    """
    walk = cfg.tracker == "walk"
    out = Path(cfg.out)
    cache = None if walk else (cfg.cache or str(out / "feature-cache"))
    runs = [(setting_name(o), o, dataclasses.replace(cfg, sweep=None, out=str(out / "sweep" / setting_name(o)),
                                                     cache=cache, **o)) for o in parse_sweep(cfg.sweep, cfg.tracker)]
    checked = [run.flow_tracking() if walk else run.propagation() for _, _, run in runs]  # fail before any work
    cache_topk = max([cfg.cache_topk] + ([] if walk else [propagation.topk for propagation in checked]))
    rows = []
    for name, overrides, run in runs:
        results = evaluate_once(task, dataclasses.replace(run, cache_topk=cache_topk), runtime)
        if results is None:  # not rank 0
            continue
        metrics = results.get("metrics") or {}
        rows.append({"name": name, "overrides": overrides, "propagation": results["config"]["propagation"],
                     "tracking": results["config"].get("tracking"), "factors": results["factors"],
                     "metrics": {k: metrics.get(k) for k in task.headline_metrics},
                     "timings": {k: results["timings"].get(k) for k in ("features_s", "propagation_s", "cache_hits",
                                                                          "match_hits")},
                     "results": str(out / "sweep" / name / "results.json")})
    if not runtime.is_main:
        return None
    summary = {"task": cfg.task, "tracker": cfg.tracker, "sweep": cfg.sweep, "feature_cache": cache,
               "settings": rows}
    atomic_write_json(out / "sweep" / "summary.json", summary)
    print_sweep_table(summary, task.headline_metrics)
    print(f"sweep summary: {out / 'sweep' / 'summary.json'}")
    return summary


def print_sweep_table(summary: dict, keys: tuple[str, ...]) -> None:
    """One row per setting: its name and headline metrics ``keys`` (percent)."""
    width = max([24, *(len(row["name"]) + 2 for row in summary["settings"])])
    print(f"\n{'setting':<{width}}" + "".join(f"{k[:12]:>14}" for k in keys))
    for row in summary["settings"]:
        cells = [row["metrics"][k] for k in keys]
        print(f"{row['name']:<{width}}" + "".join(
            f"{'n/a':>14}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:>14.2f}"
            for v in cells))
