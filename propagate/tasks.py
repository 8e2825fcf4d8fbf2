"""Task runners for JHMDB (keypoints), VIP (human parts) and TAP-Vid (point tracks).

Each runner has the DAVIS task's shape (:func:`propagate.evaluate.evaluate_davis`): the shared
setup (:func:`propagate.evaluate.start_task`: task defaults, ranks, device, encoder,
propagation settings, the dataset or a generated stand-in, the run key), then per video
read -> resize to the task's input size -> features -> propagate with the one
:class:`~propagate.Propagator` -> decode -> save the predictions and a record
``<out>/sequences/<video>.json`` (a rerun with the same settings reuses it; ``--overwrite``
redoes it) -> score everything -> ``results.json``. TAP-Vid's loop takes a tracker: label
propagation, or with ``--tracker walk`` the chained flows of a global-match network
(:mod:`corr.flow_track`; records, resume, ``--vis``, sweeps and sharding work the same).
Features come from ``--cache`` when it holds the video (:mod:`propagate.cache`); under
``torchrun`` each rank evaluates its share of the videos and rank 0 merges the records
(:mod:`propagate.distributed`); see :mod:`propagate.evaluate` for both.

Outputs under ``--out`` (default ``results/<task>``), besides ``results.json`` and the records:

* JHMDB: ``predictions/<action>/<video>.npy``: float64 ``[T, 15, 2]`` predicted (x, y) per
  frame in the original frame's pixels, 0-based (pixel centres at integers, the ground
  truth's ``pos_img - 1``), joints in JHMDB order, ``-1`` = not predicted; frame 0 is the
  given annotation. ``"metrics"``: ``PCK@0.1`` ... ``PCK@0.5`` (fractions, :func:`jhmdb_pck`)
  and ``PCK-per-joint``.
* VIP: ``predictions/<video>/<frame>.png``: indexed PNGs of class ids 0..19 at the size of
  the frame's annotation (at the frame's size when it has none); frame 0 is the given
  annotation. ``"metrics"``: ``mIoU`` and ``IoU`` (20 per-class values, NaN = class in
  neither) from one confusion matrix over every scored frame (frames >= 1 with an
  annotation, prediction resized to the annotation with nearest neighbour).
* TAP-Vid: ``predictions/<video>.npz`` with ``tracks`` float32 ``[Q, T, 2]`` (x, y) and
  ``occluded`` bool ``[Q, T]`` in pixels of the evaluation frames (256x256 by default;
  corner convention), plus ``query_points`` ``[Q, 3]`` (t, y, x) and ``track_ids`` ``[Q]``.
  ``"metrics"``: every key of :data:`~propagate.metrics.TAPVID_KEYS` (``average_jaccard``,
  ``average_pts_within_thresh``, ``occlusion_accuracy``, ``pts_within_d``, ``jaccard_d``),
  per video then averaged; ``"category"`` names the resolution (``"256x256"`` = standard).
* ``--vis``: ``vis/<video>.mp4`` and ``vis/<video>.png`` (contact sheet): skeletons (JHMDB),
  part maps (VIP), point tracks with trails and hollow circles when predicted occluded
  (TAP-Vid, at most :data:`VIS_MAX_TRACKS` tracks).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from corr.io import atomic_write, atomic_write_json
from corr.runtime import sync_device
from datasets.jhmdb import JHMDB_PARENTS, NUM_JOINTS, JhmdbDataset, JhmdbVideo
from datasets.palette import write_indexed_png
from datasets.tapvid import TapVidDataset, TapVidSample, TapVidVideo
from datasets.vip import VipDataset, VipVideo

from .config import PropagationConfig
from .cache import CacheSlot
from .evaluate import (TASK_DEFAULTS, EvalConfig, TaskRun, encoder_for_video, feature_cache, load_encoder,
                       load_global_match_model, load_record, propagate_frames, record_path, require_record,
                       resize_frame, results_header, start_task, synthetic_banner, video_features,
                       write_overlays)
from .labels import (KEYPOINT_SIGMA, KEYPOINT_TOPK, MIN_PEAK_RATIO, OCCLUSION_THRESHOLD, QUERY_SIGMA,
                     QUERY_WINDOW, heatmaps_to_keypoints, keypoints_to_heatmaps, labels_to_parts,
                     parts_to_labels, rescale_points, track_points)
from .metrics import (JHMDB_PCK_THRESHOLDS, TAPVID_KEYS, jhmdb_pck, jhmdb_pck_per_joint, resize_nearest,
                      tapvid_metrics, tapvid_summary, vip_confusion, vip_iou_from_confusion)
from .propagator import Propagator
from .visualize import draw_skeleton, draw_tracks, overlay_parts

__all__ = ["evaluate_jhmdb", "evaluate_vip", "evaluate_tapvid", "open_jhmdb", "open_vip", "open_tapvid",
           "VIS_MAX_TRACKS", "TRACK_SETTINGS"]

#: Tracks drawn per video with ``--vis`` (evenly chosen among the queries).
VIS_MAX_TRACKS = 48
#: The :func:`~propagate.labels.track_points` settings used (recorded in results.json).
TRACK_SETTINGS = {"sigma": QUERY_SIGMA, "window": QUERY_WINDOW, "occlusion_threshold": OCCLUSION_THRESHOLD,
                  "min_peak_ratio": MIN_PEAK_RATIO, "max_queries": 256}


def _selected(names: list[str], cfg: EvalConfig) -> list[str]:
    """The videos to run: all, or the ``--sequences`` subset (unknown names are an error)."""
    if not cfg.sequences:
        return names
    unknown = [name for name in cfg.sequences if name not in names]
    if unknown:
        raise KeyError(f"--sequences names {unknown} not in the dataset ({len(names)} videos)")
    return list(cfg.sequences)


def _pct(value: float) -> str:
    return "   n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:6.1f}"


# ----------------------------------------------------------------------------- JHMDB

def open_jhmdb(cfg: EvalConfig) -> JhmdbDataset:
    """JHMDB from ``--data-root`` (a split file, or a folder holding ``--split``), ``data/JHMDB``, or generated."""
    defaults = TASK_DEFAULTS["jhmdb"]
    root = Path(cfg.data_root) if cfg.data_root is not None else defaults.data
    if cfg.data_root is None and not root.exists():
        from datasets.synthetic_tasks import generate_jhmdb

        synthetic_banner("JHMDB", defaults.data, defaults.synthetic, "JHMDB")
        root = generate_jhmdb(defaults.synthetic, num_videos=4, num_frames=20, seed=0)
    elif cfg.data_root is None:
        print(f"using JHMDB at {root}")
    if root.is_file():
        return JhmdbDataset(root)
    return JhmdbDataset(root / (cfg.split or defaults.split), root=root)


def _jhmdb_file(out: Path, name: str) -> Path:
    return out / "predictions" / f"{name}.npy"


@torch.inference_mode()
def predict_jhmdb_video(video: JhmdbVideo, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                        device: torch.device, input_size: tuple[int, int], batch_size: int = 8,
                        progress: bool = True, cache: Optional[CacheSlot] = None) -> tuple[np.ndarray, dict]:
    """Propagate frame 0's joints -> (keypoints float64 [T, 15, 2] (x, y) original pixels, timings).

    Frames are resized (bilinear) to ``input_size``; frame 0's joints become Gaussian
    heatmaps there (:func:`keypoints_to_heatmaps`), each later frame is decoded by the
    top-3 weighted mean (:func:`heatmaps_to_keypoints`) and mapped back to the original
    frame with :func:`rescale_points`. Row 0 is the ground truth of frame 0.
    """
    size = video.size
    stride = encoder.stride
    preds = np.empty((video.num_frames, NUM_JOINTS, 2))
    preds[0] = video.keypoints[0]

    def decode(t: int, labels: torch.Tensor) -> None:
        preds[t] = rescale_points(heatmaps_to_keypoints(labels, stride), input_size, size)

    timings = propagate_frames(
        lambda t: resize_frame(video.read_frame(t), input_size), video.num_frames, encoder, prop_cfg, device,
        first_label=lambda grid: keypoints_to_heatmaps(rescale_points(video.keypoints[0], size, input_size),
                                                       input_size, grid, stride, device=device),
        decode=decode, batch_size=batch_size, desc=video.name, progress=progress, cache=cache)
    return preds, timings


def jhmdb_visualisation(out_dir: Path, video: JhmdbVideo, preds: np.ndarray) -> None:
    """Predicted skeletons (coloured) over the ground truth (thin white) on the original frames."""
    overlays = []
    for t in range(video.num_frames):
        frame = draw_skeleton(video.read_frame(t), video.keypoints[t], JHMDB_PARENTS, colour=(255, 255, 255),
                              radius=1, thickness=1)
        overlays.append(draw_skeleton(frame, preds[t], JHMDB_PARENTS))
    write_overlays(out_dir, video.name, overlays)


def evaluate_jhmdb(cfg: EvalConfig) -> dict:
    """JHMDB keypoint propagation scored by PCK (PROTOCOLS.md section 6); returns results.json's content."""
    run = start_task(cfg, open_jhmdb, lambda cfg, dataset: {"input_size": list(cfg.input_size),
                                                            "sigma": KEYPOINT_SIGMA, "topk": KEYPOINT_TOPK})
    cfg, ranks, device, encoder, encoder_info = run.cfg, run.ranks, run.device, run.encoder, run.encoder_info
    dataset, identity, prop_cfg, out, key = run.dataset, run.identity, run.prop_cfg, run.out, run.key
    decoding = run.settings
    names = _selected([video.name for video in dataset], cfg)
    if ranks.is_main:
        print(f"JHMDB: {len(names)} videos from {identity['split_file']}; input {cfg.input_size[0]}x"
              f"{cfg.input_size[1]}; {run.describe()}")

    for name in tqdm(ranks.shard(names), desc="videos", unit="video", disable=not ranks.is_main):
        path, file = record_path(out, name), _jhmdb_file(out, name)
        if not cfg.overwrite and load_record(path, key) is not None and file.is_file():
            continue
        video = dataset[name]
        video_encoder, adapt_seconds = encoder_for_video(
            encoder, lambda t: resize_frame(video.read_frame(t), cfg.input_size), video.num_frames, cfg, device)
        pred, video_timings = predict_jhmdb_video(
            video, video_encoder, prop_cfg, device, cfg.input_size, cfg.batch_size,
            cache=feature_cache(cfg, encoder_info, identity, name))
        video_timings["adaptation"] = adapt_seconds
        atomic_write(file, lambda f: np.save(f, pred))
        try:
            single = jhmdb_pck([pred], [video.keypoints])
        except ValueError:  # no joint predicted after frame 0: nothing to score in this video alone
            single = {a: float("nan") for a in JHMDB_PCK_THRESHOLDS}
        record = {"run_key": key, "sequence": name, "num_frames": video.num_frames, "rank": ranks.rank,
                  "timings": video_timings,
                  "predictions": str(file.relative_to(out)),
                  "scores": {f"PCK@{a}": v for a, v in single.items()}}
        if cfg.vis:
            jhmdb_visualisation(out / "vis", video, pred)
        atomic_write_json(path, record)
    ranks.barrier()
    if not ranks.is_main:
        return None

    preds, gts, timings, per_video = [], [], {}, {}
    for name in names:  # the merge reads every record and prediction back, whoever wrote them
        video = dataset[name]
        record, file = require_record(out, name, key), _jhmdb_file(out, name)
        pred = np.load(file)
        if pred.shape != video.keypoints.shape:
            raise ValueError(f"{file}: predictions have shape {pred.shape}, expected {video.keypoints.shape}")
        preds.append(pred)
        gts.append(video.keypoints)
        timings[name] = {**record["timings"], "num_frames": record["num_frames"]}
        per_video[name] = record["scores"]

    results = results_header("jhmdb", cfg, encoder_info, identity, timings, decoding=decoding)
    pck = jhmdb_pck(preds, gts, JHMDB_PCK_THRESHOLDS)
    per_joint = jhmdb_pck_per_joint(preds, gts, JHMDB_PCK_THRESHOLDS)
    results["metrics"] = {f"PCK@{a}": v for a, v in pck.items()}
    results["metrics"]["PCK-per-joint"] = {f"PCK@{a}": [float(x) for x in v] for a, v in per_joint.items()}
    results["per_sequence"] = per_video
    results["predictions_format"] = "predictions/<action>/<video>.npy: float64 [T, 15, 2] (x, y) 0-based " \
                                    "original pixels, -1 = not predicted"
    atomic_write_json(out / "results.json", results)
    keys = [f"PCK@{a}" for a in JHMDB_PCK_THRESHOLDS]
    _print_table(per_video, results["metrics"], keys, "all (pooled)")
    print(f"predictions: {out / 'predictions'}   results: {out / 'results.json'}")
    return results


# ----------------------------------------------------------------------------- VIP

def open_vip(cfg: EvalConfig) -> VipDataset:
    """VIP_Fine from ``--data-root``, ``data/VIP``, or a generated set."""
    defaults = TASK_DEFAULTS["vip"]
    if cfg.data_root is not None:
        return VipDataset(cfg.data_root, split=cfg.split or defaults.split)
    if defaults.data.is_dir():
        print(f"using VIP at {defaults.data}")
        return VipDataset(defaults.data, split=cfg.split or defaults.split)
    from datasets.synthetic_tasks import generate_vip

    synthetic_banner("VIP", defaults.data, defaults.synthetic, "VIP_Fine")
    return VipDataset(generate_vip(defaults.synthetic, num_videos=4, num_frames=12, seed=0), split="val")


@torch.inference_mode()
def predict_vip_video(video: VipVideo, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                      device: torch.device, input_size: tuple[int, int], out: Path, batch_size: int = 8,
                      keep_maps: bool = False, progress: bool = True, cache: Optional[CacheSlot] = None
                      ) -> tuple[np.ndarray, dict, list]:
    """Propagate frame 0's part map; write each frame's PNG -> (confusion [20, 20], timings, maps).

    Frames are resized (bilinear) and annotation 0 (nearest) to ``input_size``; each later
    frame's labels are upsampled and argmaxed there (:func:`labels_to_parts`), then resized
    with nearest neighbour to its annotation's size (to the frame's size when not annotated)
    and written to ``out/<video>/<frame>.png``. The confusion matrix sums every annotated
    frame t >= 1 (:func:`~propagate.metrics.vip_confusion`). ``maps`` (with ``keep_maps``)
    are the predictions at the frame's size, for visualisation.
    """
    stride = encoder.stride
    first = video.read_annotation(0)
    confusion = np.zeros((20, 20), np.int64)
    maps = [resize_nearest(first, video.size)] if keep_maps else []
    write_indexed_png(out / video.name / f"{video.frame_paths[0].stem}.png", first)

    def decode(t: int, labels: torch.Tensor) -> None:
        nonlocal confusion
        parts = labels_to_parts(labels, input_size, stride)
        gt = video.read_annotation(t)
        pred = resize_nearest(parts, gt.shape if gt is not None else video.size)
        write_indexed_png(out / video.name / f"{video.frame_paths[t].stem}.png", pred)
        if gt is not None:
            confusion = confusion + vip_confusion(pred, gt)
        if keep_maps:
            maps.append(resize_nearest(parts, video.size))

    timings = propagate_frames(
        lambda t: resize_frame(video.read_frame(t), input_size), video.num_frames, encoder, prop_cfg, device,
        first_label=lambda grid: parts_to_labels(resize_nearest(first, input_size), grid, stride, device=device),
        decode=decode, batch_size=batch_size, desc=video.name, progress=progress, cache=cache)
    return confusion, timings, maps


def evaluate_vip(cfg: EvalConfig) -> dict:
    """VIP part propagation scored by mIoU (PROTOCOLS.md section 7); returns results.json's content."""
    run = start_task(cfg, open_vip, lambda cfg, dataset: {"input_size": list(cfg.input_size)})
    cfg, ranks, device, encoder, encoder_info = run.cfg, run.ranks, run.device, run.encoder, run.encoder_info
    dataset, identity, prop_cfg, out, key = run.dataset, run.identity, run.prop_cfg, run.out, run.key
    decoding = run.settings
    names = _selected(list(dataset.names), cfg)
    if ranks.is_main:
        print(f"VIP: {len(names)} videos from {identity['root']} ({identity['split']}); input "
              f"{cfg.input_size[0]}x{cfg.input_size[1]}; {run.describe()}")

    for name in tqdm(ranks.shard(names), desc="videos", unit="video", disable=not ranks.is_main):
        path = record_path(out, name)
        if not cfg.overwrite and load_record(path, key) is not None:
            continue
        video = dataset[name]
        video_encoder, adapt_seconds = encoder_for_video(
            encoder, lambda t: resize_frame(video.read_frame(t), cfg.input_size), video.num_frames, cfg, device)
        video_confusion, video_timings, maps = predict_vip_video(
            video, video_encoder, prop_cfg, device, cfg.input_size, out / "predictions", cfg.batch_size,
            keep_maps=cfg.vis, cache=feature_cache(cfg, encoder_info, identity, name))
        video_timings["adaptation"] = adapt_seconds
        record = {"run_key": key, "sequence": name, "num_frames": video.num_frames, "rank": ranks.rank,
                  "timings": video_timings,
                  "scored_frames": len([t for t in video.annotated_frames if t > 0]),
                  "confusion": video_confusion.tolist(),
                  "scores": {"mIoU": vip_iou_from_confusion(video_confusion)["mIoU"]}}
        if cfg.vis:
            write_overlays(out / "vis", name, [overlay_parts(video.read_frame(t), maps[t])
                                               for t in range(video.num_frames)])
        atomic_write_json(path, record)
    ranks.barrier()
    if not ranks.is_main:
        return None

    confusion = np.zeros((20, 20), np.int64)
    timings, per_video = {}, {}
    for name in names:  # the merge reads every record back, whoever wrote it
        record = require_record(out, name, key)
        confusion += np.asarray(record["confusion"], dtype=np.int64)
        timings[name] = {**record["timings"], "num_frames": record["num_frames"]}
        per_video[name] = record["scores"]

    results = results_header("vip", cfg, encoder_info, identity, timings, decoding=decoding)
    scores = vip_iou_from_confusion(confusion)
    results["metrics"] = {"mIoU": scores["mIoU"], "IoU": scores["IoU"]}
    results["confusion"] = confusion.tolist()
    results["per_sequence"] = per_video
    results["predictions_format"] = "predictions/<video>/<frame>.png: indexed PNG class ids 0..19 at the " \
                                    "annotation's size"
    atomic_write_json(out / "results.json", results)
    _print_table(per_video, results["metrics"], ["mIoU"], "all (one confusion)")
    print(f"predictions: {out / 'predictions'}   results: {out / 'results.json'}")
    return results


# ----------------------------------------------------------------------------- TAP-Vid

def open_tapvid(cfg: EvalConfig) -> TapVidDataset:
    """TAP-Vid from ``--data-root`` (.pkl or Kinetics folder), ``data/tapvid_davis.pkl``, or generated."""
    defaults = TASK_DEFAULTS["tapvid"]
    if cfg.data_root is not None:
        path = Path(cfg.data_root)
    elif defaults.data.exists():
        print(f"using TAP-Vid at {defaults.data}")
        path = defaults.data
    else:
        from datasets.synthetic_tasks import generate_tapvid

        synthetic_banner("TAP-Vid", defaults.data, defaults.synthetic, "TAP-Vid DAVIS pickle")
        path = generate_tapvid(defaults.synthetic, kind="davis", num_videos=4, num_frames=24, seed=0)
    return TapVidDataset(path, query_mode=cfg.query_mode, resolution=cfg.input_size)


def _propagated_frames(query_frames: np.ndarray, num_frames: int, backward: bool, max_queries: int) -> int:
    """How many frames :func:`track_points` propagates in all (for the progress bar)."""
    total = 0
    for t0 in np.unique(query_frames):
        chunks = math.ceil(int((query_frames == t0).sum()) / max_queries)
        forward = num_frames - t0 if num_frames - t0 >= 2 else 0
        back = t0 + 1 if backward and t0 >= 1 else 0
        total += chunks * (forward + back)
    return total


def _tracking_settings(cfg: EvalConfig, dataset: TapVidDataset) -> dict:
    """The tracker's settings that change a video's result (hashed into the run key, recorded
    in results.json's ``config.tracking``)."""
    common = {"query_mode": cfg.query_mode, "input_size": list(cfg.input_size), "category": dataset.category}
    if cfg.tracker == "walk":
        from dataclasses import asdict

        return {"tracker": "walk", **asdict(cfg.flow_tracking()), **common}
    return {**TRACK_SETTINGS, "backward": cfg.query_mode == "strided", **common}


def evaluate_tapvid(cfg: EvalConfig) -> dict:
    """TAP-Vid point tracking scored by AJ, <delta^x_avg> and OA (PROTOCOLS.md section 8).

    ``--tracker propagation`` (default): label propagation of the encoder's features
    (:func:`~propagate.labels.track_points`). ``--tracker walk``: chained soft-argmax flows of
    a global-match network (``--checkpoint`` of ``train.py --loss global_walk``, else a random
    one seeded by ``--seed``; :mod:`corr.flow_track`) with its settings ``--local-radius`` and
    ``--occlusion-threshold``. Both go through the same per-video loop: records, resume,
    ``--overwrite``, ``--vis``, ``--sequences``, torchrun sharding, rank-0 merge.
    """
    walk = cfg.with_task_defaults().tracker == "walk"
    run = start_task(cfg, open_tapvid, _tracking_settings, load=load_global_match_model if walk else load_encoder,
                     propagation=not walk)
    cfg, ranks, dataset, identity, out, key = run.cfg, run.ranks, run.dataset, run.identity, run.out, run.key
    if ranks.is_main:
        print(f"TAP-Vid: {identity['name']} from {identity['path']} ({cfg.query_mode} queries, "
              f"{dataset.category}); {run.describe()}")
    track = _walk_tracker(run) if walk else _propagation_tracker(run)

    # Videos are read one at a time (Kinetics shards hold many JPEG-encoded videos each); with
    # several processes, the i-th selected video of the stream belongs to rank i % G.
    wanted = set(cfg.sequences or ())
    videos = dataset.videos() if dataset.kind == "kinetics" else list(dataset.videos())  # a pickle is in memory
    total = len(wanted) if wanted else (None if dataset.kind == "kinetics" else len(videos))
    names = []
    for video in tqdm(videos, desc="videos", unit="video", total=total, disable=not ranks.is_main):
        name = video.name
        if wanted and name not in wanted:
            continue
        names.append(name)
        if not ranks.owns(len(names) - 1):
            continue
        path = record_path(out, name)
        if cfg.overwrite or load_record(path, key) is None:
            record = _track_video(video, run, track)
            atomic_write_json(path, {**record, "rank": ranks.rank})

    missing = sorted(wanted - set(names))
    if missing:
        raise KeyError(f"--sequences names {missing} not in {dataset.path}")
    if not names:
        raise ValueError(f"{dataset.path}: no video to evaluate")
    ranks.barrier()
    if not ranks.is_main:
        return None
    scores, timings, per_video = [], {}, {}
    for name in names:  # the merge reads every record back, whoever wrote it
        record = require_record(out, name, key)
        scores.append({k: np.asarray(record["scores"][k], dtype=np.float64) for k in TAPVID_KEYS})
        timings[name] = {**record["timings"], "num_frames": record["num_frames"]}
        per_video[name] = record["scores"]
    results = results_header("tapvid", cfg, run.encoder_info, identity, timings, tracking=run.settings)
    results["tracker"] = cfg.tracker
    results["category"] = dataset.category
    results["metrics"] = tapvid_summary(scores)
    results["per_sequence"] = per_video
    results["predictions_format"] = "predictions/<video>.npz: tracks float32 [Q, T, 2] (x, y), occluded bool " \
                                    f"[Q, T], query_points [Q, 3] (t, y, x), track_ids [Q]; {dataset.category} pixels"
    atomic_write_json(out / "results.json", results)
    _print_table(per_video, results["metrics"],
                 ["average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"], "all (mean of videos)",
                 short={"average_jaccard": "AJ", "average_pts_within_thresh": "<d_avg>",
                        "occlusion_accuracy": "OA"})
    print(f"predictions: {out / 'predictions'}   results: {out / 'results.json'}")
    return results


#: A tracker of the TAP-Vid loop: ``(video, sample) -> (tracks float [Q, T, 2] (x, y), occluded bool
#: [Q, T], timings)``; timings hold ``features``, ``propagation``, ``adaptation`` seconds and ``cache``.
Tracker = Callable[[TapVidVideo, TapVidSample], tuple[np.ndarray, np.ndarray, dict]]


def _propagation_tracker(run: TaskRun) -> Tracker:
    """Label propagation of the encoder's features (:func:`~propagate.labels.track_points`,
    :data:`TRACK_SETTINGS`); features from the cache when it holds them, adapted per video
    with ``--tta-steps``."""
    cfg, device = run.cfg, run.device
    propagator = Propagator(run.prop_cfg)
    backward = run.settings["backward"]

    def track(video: TapVidVideo, sample: TapVidSample) -> tuple[np.ndarray, np.ndarray, dict]:
        encoder, adapt_seconds = encoder_for_video(run.encoder, lambda t: sample.frames[t], video.num_frames, cfg,
                                                   device)
        feats, feature_timings = video_features(encoder, sample.frames, device, cfg.batch_size,
                                                feature_cache(cfg, run.encoder_info, run.identity, video.name))
        query_frames = np.clip(np.round(sample.query_points[:, 0]).astype(np.int64), 0, video.num_frames - 1)
        bar = tqdm(total=_propagated_frames(query_frames, video.num_frames, backward,
                                            TRACK_SETTINGS["max_queries"]),
                   desc=video.name, unit="frame", leave=False)

        def propagate(chunk_feats: torch.Tensor, first_label: torch.Tensor) -> torch.Tensor:
            labels = propagator.propagate(chunk_feats, first_label)
            bar.update(len(chunk_feats))
            return labels

        tick = time.perf_counter()
        tracks, occluded = track_points(propagate, feats, sample.query_points, encoder.stride,
                                        sigma=TRACK_SETTINGS["sigma"], window=TRACK_SETTINGS["window"],
                                        occlusion_threshold=TRACK_SETTINGS["occlusion_threshold"],
                                        min_peak_ratio=TRACK_SETTINGS["min_peak_ratio"], backward=backward,
                                        max_queries=TRACK_SETTINGS["max_queries"])
        sync_device(device)
        bar.close()
        return tracks, occluded, {**feature_timings, "propagation": time.perf_counter() - tick,
                                  "adaptation": adapt_seconds}

    return track


def _walk_tracker(run: TaskRun) -> Tracker:
    """Chained soft-argmax flows of the global-match network (:mod:`corr.flow_track`), ``--batch-size``
    frame pairs per network call. Timings: ``features`` = network and flows, ``propagation`` =
    chaining the queries."""
    from corr.flow_track import chain_tracks, video_flows
    from datasets.transforms import normalize_frames

    track_cfg = run.cfg.flow_tracking()
    model, device = run.encoder, run.device

    def track(video: TapVidVideo, sample: TapVidSample) -> tuple[np.ndarray, np.ndarray, dict]:
        if video.num_frames < 2:
            raise ValueError(f"{video.source}: video {video.name!r} has {video.num_frames} frame; the walk tracker "
                             f"needs at least 2")
        tick = time.perf_counter()
        images = normalize_frames(sample.frames, device=device)                          # T, 3, H, W
        forward, backward = video_flows(model, images, track_cfg.local_radius, run.cfg.batch_size)
        sync_device(device)
        flow_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        tracks, occluded = chain_tracks(forward, backward, sample.query_points, sample.frames.shape[1:3],
                                        model.stride, track_cfg.occlusion_threshold)
        return tracks, occluded, {"features": flow_seconds, "propagation": time.perf_counter() - tick,
                                  "adaptation": 0.0, "cache": "off"}

    return track


def _track_video(video: TapVidVideo, run: TaskRun, track: Tracker) -> dict:
    """Track one video's queries with ``track``, write its .npz (and --vis), score it; returns its record."""
    dataset, out = run.dataset, run.out
    sample = video.sample(dataset.query_mode, dataset.resolution)
    tracks, occluded, timings = track(video, sample)
    atomic_write(out / "predictions" / f"{video.name}.npz",
                 lambda f: np.savez_compressed(f, tracks=tracks.astype(np.float32), occluded=occluded,
                                               query_points=sample.query_points, track_ids=sample.track_ids))
    metrics = tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                             occluded[None], tracks[None], dataset.query_mode)
    if run.cfg.vis:
        picks = np.unique(np.linspace(0, len(tracks) - 1, min(VIS_MAX_TRACKS, len(tracks))).round().astype(int)) \
            if len(tracks) else np.zeros(0, np.int64)
        write_overlays(out / "vis", video.name, [draw_tracks(frame, tracks[picks], occluded[picks], t)
                                                 for t, frame in enumerate(sample.frames)])
    return {"run_key": run.key, "sequence": video.name, "num_frames": video.num_frames,
            "num_queries": int(len(sample.query_points)), "timings": timings,
            "scores": {k: float(v[0]) for k, v in metrics.items()}}


# ----------------------------------------------------------------------------- tables

def _print_table(per_video: dict[str, dict], metrics: dict, keys: list[str], total: str,
                 short: Optional[dict[str, str]] = None) -> None:
    """Per-video rows and a total row of ``keys`` (printed as percentages)."""
    short = short or {}
    width = max([24, *(len(name) + 2 for name in per_video)])
    print("\n" + f"{'video':<{width}}" + "".join(f"{short.get(k, k):>9}" for k in keys))
    for name, row in per_video.items():
        print(f"{name:<{width}}" + "".join(f"{_pct(row.get(k)):>9}" for k in keys))
    print("-" * (width + 9 * len(keys)))
    print(f"{total:<{width}}" + "".join(f"{_pct(metrics[k]):>9}" for k in keys))
