"""TAP-Vid point tracking scored by AJ, <delta^x_avg> and OA (docs/benchmarks.md, TAP-Vid).

Frames are resized (bilinear) to the input size (default 256x256, the standard protocol).
``--tracker propagation`` (default): each query becomes a Gaussian heatmap on the feature
grid at its frame, propagated forward (and backward with strided queries) and decoded by
a windowed soft-argmax with an occlusion test (:func:`propagate.labels.track_points`,
:data:`TRACK_SETTINGS`). ``--tracker walk``: chained flows of a global-match network
(:mod:`propagate.tasks.walk_tracker`). Outputs under ``--out``: ``predictions/<video>.npz``
with ``tracks`` float32 ``[Q, T, 2]`` (x, y) and ``occluded`` bool ``[Q, T]`` in pixels of
the evaluation frames (corner convention), ``query_points`` ``[Q, 3]`` (t, y, x) and
``track_ids`` ``[Q]``. ``"metrics"``: every key of :data:`~propagate.metrics.TAPVID_KEYS`,
per video then averaged; ``"category"`` names the resolution (``"256x256"`` = standard).
With ``--vis``: point tracks with trails, hollow circles where predicted occluded
(at most :data:`VIS_MAX_TRACKS`). Videos are streamed (Kinetics shards hold many each).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from corr.errors import OptionError
from corr.io import atomic_write
from corr.runtime import REPO_ROOT, sync_device
from datasets.frames import DatasetError
from datasets.synthetic_tasks import generate_tapvid
from datasets.tapvid import TapVidDataset, TapVidSample, TapVidVideo

from ..encoder_loading import load_encoder, load_global_match_model
from ..eval_config import EvalConfig
from ..labels import MIN_PEAK_RATIO, OCCLUSION_THRESHOLD, QUERY_SIGMA, QUERY_WINDOW, track_points
from ..metrics import TAPVID_KEYS, tapvid_metrics, tapvid_summary
from ..propagator import Propagator
from ..task import (
    Task,
    TaskDefaults,
    TaskRun,
    VideoEntry,
    print_video_table,
    propagation_factors,
    synthetic_banner,
    write_overlays,
)
from ..video import encoder_for_video, feature_cache, video_features
from ..visualize import draw_tracks
from .walk_tracker import track_by_walk, walk_factors

#: Tracks drawn per video with ``--vis`` (evenly chosen among the queries).
VIS_MAX_TRACKS = 48
#: The :func:`~propagate.labels.track_points` settings used (recorded in results.json).
TRACK_SETTINGS = {"sigma": QUERY_SIGMA, "window": QUERY_WINDOW, "occlusion_threshold": OCCLUSION_THRESHOLD,
                  "min_peak_ratio": MIN_PEAK_RATIO, "max_queries": 256}

#: results.json's ``factors.label_resampling`` with ``--point-decoding fgvc``.
FGVC_RESAMPLING = {"labels_to_grid": "FGVC: 6 px Gaussian per query at image resolution, sampled every stride px",
                   "outputs_to_pixels": "FGVC: bilinear upsampling to the image, weighted mean of the top-5 pixels"}


def propagated_frames(query_frames: np.ndarray, num_frames: int, backward: bool, max_queries: int) -> int:
    """How many frames :func:`track_points` propagates in all (for the progress bar)."""
    total = 0
    for t0 in np.unique(query_frames):
        chunks = math.ceil(int((query_frames == t0).sum()) / max_queries)
        forward = num_frames - t0 if num_frames - t0 >= 2 else 0
        back = t0 + 1 if backward and t0 >= 1 else 0
        total += chunks * (forward + back)
    return total


def track_by_propagation(run: TaskRun, video: TapVidVideo, sample: TapVidSample
                         ) -> tuple[np.ndarray, np.ndarray, dict]:
    """``sample``'s queries by label propagation of the encoder's features -> (tracks float [Q, T, 2]
    (x, y), occluded bool [Q, T], timings); features from the cache when it holds them, adapted
    per video with ``--tta-steps``."""
    cfg, device, backward = run.cfg, run.device, run.settings["backward"]
    propagator = Propagator(run.prop_cfg)
    encoder, adapt_seconds = encoder_for_video(run.encoder, lambda t: sample.frames[t], video.num_frames, cfg,
                                               device)
    feats, feature_timings = video_features(encoder, sample.frames, device, cfg.batch_size,
                                            feature_cache(cfg, run.encoder_info, run.identity, video.name))
    query_frames = np.clip(np.round(sample.query_points[:, 0]).astype(np.int64), 0, video.num_frames - 1)
    bar = tqdm(total=propagated_frames(query_frames, video.num_frames, backward, TRACK_SETTINGS["max_queries"]),
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
                                    max_queries=TRACK_SETTINGS["max_queries"], decoding=cfg.point_decoding,
                                    image_size=sample.frames.shape[1:3])
    sync_device(device)
    bar.close()
    return tracks, occluded, {**feature_timings, "propagation": time.perf_counter() - tick,
                              "adaptation": adapt_seconds}


def draw_video_tracks(out_dir: Path, name: str, sample: TapVidSample, tracks: np.ndarray,
                      occluded: np.ndarray) -> None:
    """Up to :data:`VIS_MAX_TRACKS` tracks (evenly chosen) drawn on the evaluation frames."""
    picks = np.unique(np.linspace(0, len(tracks) - 1, min(VIS_MAX_TRACKS, len(tracks))).round().astype(int)) \
        if len(tracks) else np.zeros(0, np.int64)
    write_overlays(out_dir, name, [draw_tracks(frame, tracks[picks], occluded[picks], t)
                                   for t, frame in enumerate(sample.frames)])


class TapVidTask(Task):
    name = "tapvid"
    title = "TAP-Vid"
    defaults = TaskDefaults((256, 256), None, REPO_ROOT / "data" / "tapvid_davis.pkl",
                            REPO_ROOT / "data" / "synthetic-tapvid")
    label_resampling = {"labels_to_grid": "Gaussian heatmap per query on the grid",
                        "outputs_to_pixels": "windowed soft-argmax on the grid, no upsampling"}
    headline_metrics = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
    settings_block = "tracking"

    def propagates(self, cfg: EvalConfig) -> bool:
        return cfg.tracker != "walk"

    def load_model(self, cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
        return load_encoder(cfg, device) if self.propagates(cfg) else load_global_match_model(cfg, device)

    def factors(self, cfg: EvalConfig) -> dict:
        if not self.propagates(cfg):
            return walk_factors(cfg)
        if cfg.point_decoding == "fgvc":
            return propagation_factors(cfg, FGVC_RESAMPLING)
        return super().factors(cfg)

    def open(self, cfg: EvalConfig) -> TapVidDataset:
        """TAP-Vid from ``--data-root`` (.pkl or Kinetics folder), ``data/tapvid_davis.pkl``, or generated."""
        if cfg.data_root is not None:
            path = Path(cfg.data_root)
        elif self.defaults.data.exists():
            print(f"using TAP-Vid at {self.defaults.data}")
            path = self.defaults.data
        else:
            synthetic_banner("TAP-Vid", self.defaults.data, self.defaults.synthetic, "TAP-Vid DAVIS pickle")
            path = generate_tapvid(self.defaults.synthetic, kind="davis", num_videos=4, num_frames=24, seed=0)
        return TapVidDataset(path, query_mode=cfg.query_mode, resolution=cfg.input_size)

    def settings(self, cfg: EvalConfig, dataset: TapVidDataset) -> dict:
        """The tracker's settings that change a video's result (results.json's ``config.tracking``)."""
        common = {"query_mode": cfg.query_mode, "input_size": list(cfg.input_size), "category": dataset.category}
        if not self.propagates(cfg):
            return {"tracker": "walk", **dataclasses.asdict(cfg.flow_tracking()), **common}
        decoding = {} if cfg.point_decoding == "window" else {"decoding": cfg.point_decoding}  # earlier keys stay
        return {**TRACK_SETTINGS, **decoding, "backward": cfg.query_mode == "strided", **common}

    def describe(self, run: TaskRun) -> str:
        return (f"TAP-Vid: {run.identity['name']} from {run.identity['path']} ({run.cfg.query_mode} queries, "
                f"{run.dataset.category}); {run.describe()}")

    def videos(self, run: TaskRun) -> Iterator[VideoEntry]:
        """The videos read one at a time (a pickle is in memory); the ``--sequences`` subset."""
        dataset, wanted, names = run.dataset, set(run.cfg.sequences or ()), []
        for video in dataset.videos() if dataset.kind == "kinetics" else list(dataset.videos()):
            if wanted and video.name not in wanted:
                continue
            names.append(video.name)
            yield video.name, lambda video=video: video
        missing = sorted(wanted - set(names))
        if missing:
            raise OptionError(f"--sequences names {missing} not in {dataset.path}")
        if not names:
            raise DatasetError(f"{dataset.path}: no video to evaluate")

    def predict(self, run: TaskRun, video: TapVidVideo) -> dict:
        """Track one video's queries, write its .npz (and --vis), score it."""
        dataset = run.dataset
        sample = video.sample(dataset.query_mode, dataset.resolution)
        track = track_by_propagation if self.propagates(run.cfg) else track_by_walk
        tracks, occluded, timings = track(run, video, sample)
        atomic_write(run.out / "predictions" / f"{video.name}.npz",
                     lambda f: np.savez_compressed(f, tracks=tracks.astype(np.float32), occluded=occluded,
                                                   query_points=sample.query_points, track_ids=sample.track_ids))
        metrics = tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                                 occluded[None], tracks[None], dataset.query_mode)
        if run.cfg.vis:
            draw_video_tracks(run.out / "vis", video.name, sample, tracks, occluded)
        return {"num_frames": video.num_frames, "timings": timings, "num_queries": int(len(sample.query_points)),
                "scores": {k: float(v[0]) for k, v in metrics.items()}}

    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        """The mean over videos of each video's metrics."""
        scores = [{k: np.asarray(r["scores"][k], dtype=np.float64) for k in TAPVID_KEYS} for r in records.values()]
        category = run.dataset.category
        return {"tracker": run.cfg.tracker, "category": category, "metrics": tapvid_summary(scores),
                "per_sequence": {name: r["scores"] for name, r in records.items()},
                "predictions_format": "predictions/<video>.npz: tracks float32 [Q, T, 2] (x, y), occluded bool "
                                      f"[Q, T], query_points [Q, 3] (t, y, x), track_ids [Q]; {category} pixels"}

    def print_table(self, results: dict) -> None:
        print_video_table(results["per_sequence"], results["metrics"], list(self.headline_metrics),
                          "all (mean of videos)", short={"average_jaccard": "AJ",
                                                         "average_pts_within_thresh": "<d_avg>",
                                                         "occlusion_accuracy": "OA"})
