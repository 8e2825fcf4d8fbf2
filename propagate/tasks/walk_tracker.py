"""The TAP-Vid task's second tracker (``--tracker walk``): the flows of a global-match network (GMRW).

For each pair of frames (consecutive ones, or the query frame with every frame:
``--walk-setting chained|direct``) the network's transition ``softmax(<f, g> / sqrt(C))`` gives a
flow (``--flow-method weighted_sum`` over the whole frame, or ``weighted_argmax`` within
``--window-threshold`` cells of the argmax), optionally on frames upsampled by
``--upsample-factor``; chained queries are occluded where the forward-backward test of either
pair around a frame reaches ``--occlusion-threshold`` pixels, every query where it leaves the
frame (:mod:`corr.flow_track`, docs/objectives.md, GMRW). Tracks are (x, y) in pixels of the
evaluation frames.
"""
from __future__ import annotations

import time

import numpy as np

from corr import flow_track
from corr.runtime import sync_device
from datasets.frames import DatasetError
from datasets.tapvid import TapVidSample, TapVidVideo
from datasets.transforms import normalize_frames

from ..eval_config import EvalConfig
from ..task import TaskRun


def track_by_walk(run: TaskRun, video: TapVidVideo, sample: TapVidSample) -> tuple[np.ndarray, np.ndarray, dict]:
    """``sample``'s queries through the flows of ``run.encoder`` (a global-match network),
    ``--batch-size`` frame pairs per network call -> (tracks float [Q, T, 2] (x, y), occluded
    bool [Q, T], timings: ``features`` = network, flows and tracks)."""
    if video.num_frames < 2:
        raise DatasetError(f"{video.source}: video {video.name!r} has {video.num_frames} frame; the walk tracker "
                         f"needs at least 2")
    track_cfg, model, device = run.cfg.flow_tracking(), run.encoder, run.device
    tick = time.perf_counter()
    images = normalize_frames(sample.frames, device=device)                          # T, 3, H, W
    tracks, occluded = flow_track.track_video(model, images, sample.query_points, track_cfg, run.cfg.batch_size)
    sync_device(device)
    return tracks, occluded, {"features": time.perf_counter() - tick, "propagation": 0.0,
                              "adaptation": 0.0, "cache": "off"}


def walk_factors(cfg: EvalConfig) -> dict:
    """results.json's ``"factors"`` for the walk tracker (:mod:`corr.flow_track`)."""
    track = cfg.flow_tracking()
    return {"tracker": f"walk ({track.walk_setting}): flows of a global-matching network",
            "affinity": "softmax of dot products of the network's features / sqrt(C), all cell pairs of two frames",
            "flow": "expected position over the whole frame" if track.flow_method == "weighted_sum"
                    else f"expected position within {track.window_threshold:g} cells of the argmax",
            **{name: getattr(track, name) for name in ("walk_setting", "flow_method", "window_threshold",
                                                       "upsample_factor", "occlusion_threshold")},
            "occlusion": "forward-backward test of both pairs around each frame, or outside the frame"
                         if track.walk_setting == "chained" else "outside the frame",
            "input_resolution": list(cfg.input_size) if cfg.input_size else "native",
            "frame_resize": "bilinear (cv2.INTER_LINEAR)"}
