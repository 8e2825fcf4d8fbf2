"""Tracking any point by chaining the soft-argmax flows of a global-matching network.

For consecutive frames ``t, t+1`` the network gives the transition matrices
``A_{t->t+1} = softmax_rows(logits)`` and ``A_{t+1->t} = softmax_rows(logits^T)`` (one pass
per pair; :mod:`corr.global_match`). The flow of cell ``i`` is the expectation of where
the walk lands (soft-argmax):

    F_{t->t+1}(c_i) = sum_j A_ij c'_j - c_i          pixels, c = cell centres

With ``local_radius = r > 0`` the expectation is restricted to the cells within ``r``
cells (Chebyshev) of the row's argmax, renormalised; ``r = 0`` uses the whole row. The
default ``r = 1`` (a 3x3 soft-argmax) matters: a row that is not sharp spreads mass over
thousands of cells at 256x256 (64x64 cells), and its whole-frame expectation is pulled
towards the frame centre (flows of ~10-20 px where the motion is ~2 px, measured on the
synthetic TAP-Vid set with a partly trained network). Flows are defined at cell centres and bilinearly
interpolated (clamped at the border) at any point.

Chaining a query ``(t0, x, y)``: ``p_{t0} = (x, y)``; forward ``p_{t+1} = p_t + F_{t->t+1}(p_t)``
for ``t >= t0``; backward ``p_{t-1} = p_t + F_{t->t-1}(p_t)`` for ``t <= t0``.

Occlusion at a frame reached from ``p`` by a step (forward-backward check): the reverse
flow at the new position must bring the point back, ``|p_new + F_rev(p_new) - p| <=
occlusion_threshold`` pixels, else the point is occluded there; a point outside the frame
``[0, W] x [0, H]`` is occluded too. The query frame is visible. Tracks keep being chained
through occlusions.

Conventions (TAP-Vid, PROTOCOLS.md section 8): pixels of the frames given, (0, 0) the
top-left corner of the top-left pixel (pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``);
queries ``[t, y, x]``; tracks ``[Q, T, 2]`` as ``(x, y)``; occluded ``[Q, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["FlowTrackConfig", "flow_from_logits", "sample_flow", "chain_tracks", "video_flows", "track_video",
           "evaluate_walk_tracker",
           "evaluate_propagation_tracker", "evaluate_tapvid_walk"]


@dataclass(frozen=True)
class FlowTrackConfig:
    """occlusion_threshold: forward-backward disagreement in pixels above which a point is occluded.
    local_radius: restrict the soft-argmax to this many cells around the argmax (0: whole frame).
    """

    occlusion_threshold: float = 4.0
    local_radius: int = 1

    def __post_init__(self):
        if not self.occlusion_threshold > 0 or self.local_radius < 0:
            raise ValueError(f"need occlusion_threshold > 0 and local_radius >= 0, got {self}")


def _centres(h: int, w: int, stride: float, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], dim=1)   # N, 2


def flow_from_logits(logits: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int], stride: float,
                     local_radius: int = 0) -> torch.Tensor:
    """Soft-argmax flow ``(B, 2, h, w)`` in pixels (x, y) from transition logits ``(B, h w, h' w')``."""
    h, w = grid
    th, tw = target_grid
    if logits.ndim != 3 or logits.shape[1:] != (h * w, th * tw):
        raise ValueError(f"logits {tuple(logits.shape)} do not match grids {grid} -> {target_grid}")
    logits = logits.float()
    if local_radius > 0:
        best = logits.argmax(dim=-1)                                                 # B, N
        by, bx = best // tw, best % tw
        ty = torch.arange(th, device=logits.device).repeat_interleave(tw)           # M
        tx = torch.arange(tw, device=logits.device).repeat(th)
        near = ((ty[None, None] - by[..., None]).abs() <= local_radius) & \
               ((tx[None, None] - bx[..., None]).abs() <= local_radius)
        logits = logits.masked_fill(~near, float("-inf"))
    probs = logits.softmax(dim=-1)
    target = probs @ _centres(th, tw, stride, logits.device) - _centres(h, w, stride, logits.device)
    return rearrange(target, "b (h w) c -> b c h w", h=h, w=w)


def sample_flow(flow: torch.Tensor, points: torch.Tensor, stride: float) -> torch.Tensor:
    """Bilinear value of ``flow (2, h, w)`` (defined at cell centres) at ``points (Q, 2)`` pixels (x, y).

    Cell ``(i, j)`` has its centre at ``((j + 0.5) s, (i + 0.5) s)``; points beyond the outer
    centres take the border value.
    """
    h, w = flow.shape[-2:]
    u = points[:, 0] / stride - 0.5
    v = points[:, 1] / stride - 0.5
    grid = torch.stack([u / max(w - 1, 1) * 2 - 1, v / max(h - 1, 1) * 2 - 1], dim=-1)     # Q, 2
    out = F.grid_sample(flow[None].float(), grid[None, None].float(), mode="bilinear", padding_mode="border",
                        align_corners=True)                                              # 1, 2, 1, Q
    return out[0, :, 0].T                                                                # Q, 2


def chain_tracks(forward_flows: torch.Tensor, backward_flows: torch.Tensor, query_points: np.ndarray,
                 image_size: tuple[int, int], stride: float, occlusion_threshold: float = 4.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Chain flows from each query -> ``(tracks float64 [Q, T, 2] (x, y), occluded bool [Q, T])``.

    forward_flows:  ``(T-1, 2, h, w)``, ``[t]`` = flow from frame t to t+1 (pixels, x, y);
    backward_flows: ``(T-1, 2, h, w)``, ``[t]`` = flow from frame t+1 to t;
    query_points:   ``(Q, 3)`` ``[t, y, x]`` (``t`` rounded); image_size ``(H, W)``.
    """
    query_points = np.asarray(query_points, dtype=np.float64)
    if query_points.ndim != 2 or query_points.shape[1] != 3:
        raise ValueError(f"query_points must be (Q, 3) [t, y, x], got shape {query_points.shape}")
    if forward_flows.shape != backward_flows.shape or forward_flows.ndim != 4 or forward_flows.shape[1] != 2:
        raise ValueError(f"flows must both be (T-1, 2, h, w), got {tuple(forward_flows.shape)} and "
                         f"{tuple(backward_flows.shape)}")
    num_frames = forward_flows.shape[0] + 1
    height, width = image_size
    q = len(query_points)
    device = forward_flows.device
    tracks = torch.zeros(q, num_frames, 2, dtype=torch.float32, device=device)
    occluded = torch.zeros(q, num_frames, dtype=torch.bool, device=device)
    t0 = np.clip(np.round(query_points[:, 0]).astype(np.int64), 0, num_frames - 1)
    t0_dev = torch.as_tensor(t0, device=device)
    start = torch.as_tensor(query_points[:, [2, 1]], dtype=torch.float32, device=device)
    tracks[torch.arange(q, device=device), t0_dev] = start

    def inside(p: torch.Tensor) -> torch.Tensor:
        return (p[:, 0] >= 0) & (p[:, 0] <= width) & (p[:, 1] >= 0) & (p[:, 1] <= height)

    # forward: frames t0+1 .. T-1 (queries not yet started keep their position)
    current = start.clone()
    for t in range(num_frames - 1):
        active = torch.as_tensor(t0 <= t, device=device)
        if not bool(active.any()):
            continue
        step = current + sample_flow(forward_flows[t], current, stride)
        back = step + sample_flow(backward_flows[t], step, stride)
        bad = ((back - current).norm(dim=-1) > occlusion_threshold) | ~inside(step)
        current = torch.where(active[:, None], step, current)
        tracks[active, t + 1] = step[active]
        occluded[active, t + 1] = bad[active]
        # a query starting at t + 1 begins from its own point
        starts = torch.as_tensor(t0 == t + 1, device=device)
        current = torch.where(starts[:, None], start, current)
    # backward: frames t0-1 .. 0
    current = start.clone()
    for t in range(num_frames - 1, 0, -1):
        active = torch.as_tensor(t0 >= t, device=device)
        starts = torch.as_tensor(t0 == t, device=device)
        current = torch.where(starts[:, None], start, current)
        if not bool(active.any()):
            continue
        step = current + sample_flow(backward_flows[t - 1], current, stride)
        back = step + sample_flow(forward_flows[t - 1], step, stride)
        bad = ((back - current).norm(dim=-1) > occlusion_threshold) | ~inside(step)
        current = torch.where(active[:, None], step, current)
        tracks[active, t - 1] = step[active]
        occluded[active, t - 1] = bad[active]
    return tracks.double().cpu().numpy(), occluded.cpu().numpy()


@torch.no_grad()
def video_flows(model: torch.nn.Module, frames: torch.Tensor, local_radius: int = 0,
                batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows of consecutive frames of normalised ``frames (T, 3, H, W)`` -> forward, backward ``(T-1, 2, h, w)``.

    ``model(f_t, f_{t+1})`` returns the pair's features (:class:`corr.global_match.GlobalMatchNet`);
    both directions come from one pass: ``logits_{t+1->t} = logits_{t->t+1}^T``.
    """
    from corr.global_match import transition_logits

    forward, backward = [], []
    for first in range(0, frames.shape[0] - 1, batch_size):
        last = min(first + batch_size, frames.shape[0] - 1)
        f1, f2 = model(frames[first:last], frames[first + 1:last + 1])
        grid = tuple(f1.shape[-2:])
        logits = transition_logits(f1, f2, model.temperature)                       # b, N, N
        forward.append(flow_from_logits(logits, grid, grid, model.stride, local_radius))
        backward.append(flow_from_logits(logits.transpose(1, 2), grid, grid, model.stride, local_radius))
    return torch.cat(forward), torch.cat(backward)


@torch.no_grad()
def track_video(model: torch.nn.Module, frames: np.ndarray, query_points: np.ndarray,
                cfg: FlowTrackConfig = FlowTrackConfig(), device: str | torch.device = "cpu"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Track ``query_points (Q, 3) [t, y, x]`` through ``uint8 frames (T, H, W, 3)``.

    Returns ``tracks [Q, T, 2] (x, y)`` and ``occluded [Q, T]`` in pixels of ``frames``.
    """
    from datasets.transforms import normalize_frames

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) < 2:
        raise ValueError(f"tracking needs at least 2 frames, got {len(frames)}")
    model = model.eval()
    images = normalize_frames(frames, device=device)
    forward, backward = video_flows(model, images, cfg.local_radius)
    return chain_tracks(forward, backward, query_points, frames.shape[1:3], model.stride, cfg.occlusion_threshold)


def evaluate_walk_tracker(model: torch.nn.Module, path: str, query_mode: str = "first",
                          cfg: FlowTrackConfig = FlowTrackConfig(), device: str = "cpu",
                          resolution: Optional[tuple[int, int]] = (256, 256)) -> dict:
    """TAP-Vid scores of :func:`track_video` on the set at ``path`` (``datasets.tapvid``).

    Returns ``{"metrics": tapvid_summary(...), "per_video": {name: {key: float}}}`` (AJ,
    <delta^x_avg>, OA as fractions; PROTOCOLS.md section 8, 256x256 by default).
    """
    from datasets.tapvid import TapVidDataset
    from propagate.metrics import tapvid_metrics, tapvid_summary

    dataset = TapVidDataset(path, query_mode=query_mode, resolution=resolution)
    scores, per_video = [], {}
    for sample in dataset:
        tracks, occluded = track_video(model, sample.frames, sample.query_points, cfg, device)
        metrics = tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                                 occluded[None], tracks[None], query_mode)
        scores.append(metrics)
        per_video[sample.name] = {k: float(np.asarray(v).ravel()[0]) for k, v in metrics.items()
                                  if np.asarray(v).size == 1}
    return {"metrics": tapvid_summary(scores), "per_video": per_video}


def evaluate_propagation_tracker(encoder: torch.nn.Module, path: str, query_mode: str = "first",
                                 preset: str = "crw", device: str = "cpu",
                                 resolution: Optional[tuple[int, int]] = (256, 256)) -> dict:
    """The label-propagation baseline on the same set: per-frame ``encoder`` features
    (e.g. ``GlobalMatchNet.features``, stride 4), ``propagate.labels.track_points`` with the
    propagation ``preset`` and that function's default query settings; backward tracking
    in ``strided`` mode only, as ``evaluate.py --task tapvid`` does. Same return value as
    :func:`evaluate_walk_tracker`.
    """
    from datasets.tapvid import TapVidDataset
    from datasets.transforms import normalize_frames
    from propagate.config import PropagationConfig
    from propagate.labels import track_points
    from propagate.metrics import tapvid_metrics, tapvid_summary
    from propagate.propagator import Propagator

    dataset = TapVidDataset(path, query_mode=query_mode, resolution=resolution)
    propagator = Propagator(PropagationConfig.preset(preset))
    encoder = encoder.eval().to(device)
    scores, per_video = [], {}
    for sample in dataset:
        with torch.no_grad():
            images = normalize_frames(sample.frames, device=device)
            feats = torch.cat([encoder(images[i:i + 8]) for i in range(0, len(images), 8)])   # T, C, h, w
            tracks, occluded = track_points(propagator.propagate, feats, sample.query_points, encoder.stride,
                                            backward=query_mode == "strided")
        metrics = tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                                 occluded[None], tracks[None], query_mode)
        scores.append(metrics)
        per_video[sample.name] = {k: float(np.asarray(v).ravel()[0]) for k, v in metrics.items()}
    return {"metrics": tapvid_summary(scores), "per_video": per_video}


def evaluate_tapvid_walk(cfg) -> dict:
    """``evaluate.py --task tapvid --tracker walk``: TAP-Vid with :func:`track_video` instead of
    label propagation. ``cfg`` is ``propagate.evaluate.EvalConfig`` (task defaults filled in);
    ``--checkpoint`` names a global-match checkpoint (:func:`corr.global_match.load_global_match`);
    without it a randomly initialised network (seed ``--seed``) is used.

    Writes ``<out>/predictions/<video>.npz`` (tracks float32 [Q, T, 2] (x, y), occluded bool
    [Q, T], query_points [Q, 3], track_ids [Q]) and ``<out>/results.json`` (``metrics`` =
    ``tapvid_summary`` over videos, ``per_sequence``, the config, the checkpoint's hash, the
    code version); prints the table. Returns the results dict.
    """
    import dataclasses
    import time
    from pathlib import Path

    from corr.global_match import GlobalMatchConfig, GlobalMatchNet, load_global_match
    from corr.io import atomic_write, atomic_write_json, file_sha256
    from corr.runtime import code_version, resolve_device
    from datasets.tapvid import TapVidDataset
    from propagate.metrics import tapvid_metrics, tapvid_summary

    device = resolve_device(cfg.device)
    if cfg.checkpoint:
        model = load_global_match(cfg.checkpoint)
        checkpoint = {"path": str(cfg.checkpoint), "sha256": file_sha256(cfg.checkpoint)}
    else:
        torch.manual_seed(cfg.seed)
        model = GlobalMatchNet(GlobalMatchConfig())
        checkpoint = {"path": None, "random_init_seed": cfg.seed}
    model = model.to(device).eval()
    track_cfg = FlowTrackConfig()
    if cfg.data_root is not None:
        path = Path(cfg.data_root)
    else:
        from datasets.synthetic_tasks import generate_tapvid
        from propagate.evaluate import TASK_DEFAULTS

        defaults = TASK_DEFAULTS["tapvid"]
        path = defaults.data if defaults.data.exists() else generate_tapvid(
            defaults.synthetic, kind="davis", num_videos=4, num_frames=24, seed=0)
    resolution = tuple(cfg.input_size) if cfg.input_size is not None else (256, 256)
    dataset = TapVidDataset(path, query_mode=cfg.query_mode, resolution=resolution)
    out = Path(cfg.out)
    wanted = set(cfg.sequences or ())
    scores, per_video, timings = [], {}, {}
    for sample in dataset:
        if wanted and sample.name not in wanted:
            continue
        tick = time.perf_counter()
        tracks, occluded = track_video(model, sample.frames, sample.query_points, track_cfg, device)
        timings[sample.name] = time.perf_counter() - tick
        atomic_write(out / "predictions" / f"{sample.name}.npz",
                     lambda f: np.savez_compressed(f, tracks=tracks.astype(np.float32), occluded=occluded,
                                                   query_points=sample.query_points, track_ids=sample.track_ids))
        metrics = tapvid_metrics(sample.query_points[None], sample.occluded[None], sample.target_points[None],
                                 occluded[None], tracks[None], cfg.query_mode)
        scores.append(metrics)
        per_video[sample.name] = {k: float(np.asarray(v).ravel()[0]) for k, v in metrics.items()}
    if not per_video:
        raise ValueError(f"{path}: no video to evaluate" + (f" (--sequences {sorted(wanted)})" if wanted else ""))
    results = {"task": "tapvid", "tracker": "walk", "metrics": tapvid_summary(scores), "per_sequence": per_video,
               "config": {"eval": dataclasses.asdict(cfg), "tracking": dataclasses.asdict(track_cfg),
                          "global_match": dataclasses.asdict(model.cfg)},
               "checkpoint": checkpoint, "code_version": code_version(), "dataset": str(path),
               "category": f"{resolution[0]}x{resolution[1]}",
               "timings": {"tracking_seconds": timings}}
    atomic_write_json(out / "results.json", results)
    print(f"\n{'video':<24}{'AJ':>9}{'<d_avg>':>9}{'OA':>9}")
    for name, row in [*per_video.items(), ("all (mean of videos)", results["metrics"])]:
        print(f"{name:<24}" + "".join(f"{100 * row[k]:9.2f}" for k in
                                      ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")))
    print(f"predictions: {out / 'predictions'}   results: {out / 'results.json'}")
    return results
