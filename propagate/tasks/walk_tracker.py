"""The TAP-Vid task's second tracker (``--tracker walk``): chained flows of a global-match network.

For each pair of consecutive frames the network's all-pairs affinity (cosine of unit
features over its temperature) gives a soft-argmax flow over the ``(2r+1)^2`` cells around
the argmax (``--local-radius r``, 0 = the whole frame), forward and backward; queries are
chained through the flows, and a point is occluded where the forward-backward distance
exceeds ``--occlusion-threshold`` pixels or it leaves the frame (:mod:`corr.flow_track`,
docs/objectives.md, GMRW). Tracks are (x, y) in pixels of the evaluation frames.
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
    """``sample``'s queries through chained soft-argmax flows of ``run.encoder`` (a global-match
    network), ``--batch-size`` frame pairs per network call -> (tracks float [Q, T, 2] (x, y),
    occluded bool [Q, T], timings: ``features`` = network and flows, ``propagation`` = chaining)."""
    if video.num_frames < 2:
        raise DatasetError(f"{video.source}: video {video.name!r} has {video.num_frames} frame; the walk tracker "
                         f"needs at least 2")
    track_cfg, model, device = run.cfg.flow_tracking(), run.encoder, run.device
    tick = time.perf_counter()
    images = normalize_frames(sample.frames, device=device)                          # T, 3, H, W
    forward, backward = flow_track.video_flows(model, images, track_cfg.local_radius, run.cfg.batch_size)
    sync_device(device)
    flow_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    tracks, occluded = flow_track.chain_tracks(forward, backward, sample.query_points, sample.frames.shape[1:3],
                                    model.stride, track_cfg.occlusion_threshold)
    return tracks, occluded, {"features": flow_seconds, "propagation": time.perf_counter() - tick,
                              "adaptation": 0.0, "cache": "off"}


def walk_factors(cfg: EvalConfig) -> dict:
    """results.json's ``"factors"`` for the walk tracker (:mod:`corr.flow_track`)."""
    track = cfg.flow_tracking()
    return {"tracker": "walk: chained soft-argmax flows of a global-matching network",
            "affinity": "cosine of unit features / the network's temperature, all cell pairs of two frames",
            "flow": "soft-argmax over the (2r+1)^2 cells around the argmax" if track.local_radius
                    else "soft-argmax over the whole frame",
            "local_radius": track.local_radius, "occlusion_threshold": track.occlusion_threshold,
            "occlusion": "forward-backward check of each step, or outside the frame",
            "input_resolution": list(cfg.input_size) if cfg.input_size else "native",
            "frame_resize": "bilinear (cv2.INTER_LINEAR)"}
