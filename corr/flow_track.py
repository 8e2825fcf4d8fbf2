"""Tracking any point with the flows of a global-matching network (docs/objectives.md, GMRW;
Shrivastava and Owens, ECCV 2024; the authors' ``test_on_tapvid.py``).

Frames are first upsampled by ``upsample_factor = u`` (bilinear); the network then sees cells
of ``stride / u`` pixels of the evaluation frames. For a pair ``(s, t)`` the transition is
``A = softmax_rows(<f_s, f_t> / sqrt(C))`` (unnormalised features); the flow of cell ``i`` is

    weighted_sum:     F(c_i) = sum_j A_ij c'_j - c_i
    weighted_argmax:  the same with row ``i`` kept only on cells closer than ``window_threshold``
                      cells to its argmax, renormalised by max(sum, 1e-12)

``c`` cell centres in pixels of the evaluation frames (:mod:`corr.geometry` with stride
``stride / u``), so tracks come back in the evaluation frames' pixels whatever ``u``. Flows
live at cell centres and are bilinearly interpolated (clamped at the border).

``chained`` (the authors' ``forward_backward_query_point``): ``p_{t+1} = p_t + F_{t->t+1}(p_t)``
forward from the query frame ``t0``, ``p_{t-1} = p_t + F_{t->t-1}(p_t)`` backward; with
``c(t) = |F_{t->t+1}(p_t) + F_{t+1->t}(p_{t+1})|`` a point is visible at ``t`` when it lies in
``[0, W) x [0, H)``, ``c(t) < occlusion_threshold`` (if ``t < T-1``) and
``c(t-1) < occlusion_threshold`` (if ``t > 0``): the check of both pairs around ``t``.
``direct`` (their ``forward_backward_time_independent_query_point``): every frame is matched
with the query frame, ``p_t = p_{t0} + F_{t0->t}(p_{t0})``, visible when inside the frame.
The query frame itself is always the query point, visible.

Logits, softmaxes, expectations and flow sampling run in float32 with autocast disabled, the
logits in row chunks of at most :data:`MAX_LOGITS` entries (with the network's chunked window
attention, memory stays bounded at any ``u``). Queries ``[t, y, x]``, tracks ``[Q, T, 2]``
(x, y), occluded ``[Q, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from corr.geometry import cell_centres, normalise_cells, pixel_to_cell

__all__ = ["FlowTrackConfig", "FLOW_METHODS", "TRACK_SETTINGS", "MAX_LOGITS", "flow_targets", "pair_flows",
           "sample_flow", "chain_tracks", "direct_tracks", "video_flows", "direct_flows", "upsample_frames",
           "track_video"]

#: Largest logits block (rows x columns x pairs) held at once by :func:`pair_flows` (128 MiB in float32).
MAX_LOGITS = 2 ** 25
#: Flow from a transition row (``FlowTrackConfig.flow_method``).
FLOW_METHODS = ("weighted_sum", "weighted_argmax")
#: Tracking settings (``FlowTrackConfig.walk_setting``).
TRACK_SETTINGS = ("chained", "direct")


@dataclass(frozen=True)
class FlowTrackConfig:
    """Settings of the walk tracker (recorded with every result); the defaults are the authors'.

    walk_setting:        chained (consecutive pairs, two-pair occlusion test) or direct (query frame to
                         every frame).
    flow_method:         weighted_sum (whole frame) or weighted_argmax (within ``window_threshold`` cells
                         of the argmax).
    window_threshold:    the weighted argmax's radius in cells.
    upsample_factor:     frames are upsampled by this before the network (the authors report their best
                         numbers at 4; their default is 1).
    occlusion_threshold: forward-backward distance in pixels from which a point is occluded (chained).
    """

    walk_setting: str = "chained"
    flow_method: str = "weighted_sum"
    window_threshold: float = 20.0
    upsample_factor: int = 1
    occlusion_threshold: float = 3.0

    def __post_init__(self):
        if self.walk_setting not in TRACK_SETTINGS or self.flow_method not in FLOW_METHODS:
            raise ValueError(f"walk_setting must be one of {TRACK_SETTINGS} and flow_method one of {FLOW_METHODS}, "
                             f"got {self}")
        if not self.occlusion_threshold > 0 or not self.window_threshold > 0:
            raise ValueError(f"need occlusion_threshold > 0 and window_threshold > 0, got {self}")
        if int(self.upsample_factor) != self.upsample_factor or self.upsample_factor < 1:
            raise ValueError(f"upsample_factor must be an integer >= 1, got {self.upsample_factor}")


def flow_targets(logits: torch.Tensor, target_grid: tuple[int, int], stride: float, flow: str = "weighted_sum",
                 window_threshold: float = 20.0) -> torch.Tensor:
    """Expected target position ``(B, n, 2)`` pixels (x, y) of the softmax of rows ``logits (B, n, h' w')``
    (module docstring). Float32 with autocast off, whatever the input dtype."""
    th, tw = target_grid
    if logits.ndim != 3 or logits.shape[-1] != th * tw:
        raise ValueError(f"logits {tuple(logits.shape)} do not match the target grid {target_grid}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = logits.float().softmax(dim=-1)
        cells = rearrange(cell_centres(th, tw, 1, device=logits.device), "h w c -> (h w) c")      # M, 2 (cells)
        if flow == "weighted_argmax":
            best = cells[probs.argmax(dim=-1)]                                                 # B, n, 2
            near = ((best[..., None, :] - cells) ** 2).sum(-1) < window_threshold ** 2         # B, n, M
            probs = probs * near
            probs = probs / probs.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        return probs @ (cells * stride)                                                        # centres cancel below


def pair_flows(f1: torch.Tensor, f2: torch.Tensor, temperature: float, stride: float, flow: str = "weighted_sum",
               window_threshold: float = 20.0, max_logits: int = MAX_LOGITS, backward: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward and backward flows ``(B, 2, h, w)`` (pixels at ``stride``) of feature pairs ``(B, C, h, w)``.

    ``logits_{1->2} = <f1_n, f2_m> / temperature`` (float32, autocast off) computed ``rows`` at a
    time (``B * rows * h w <= max_logits``); ``logits_{2->1}`` likewise with the frames swapped;
    each flow is :func:`flow_targets` minus the source cell centres. ``backward=False``: None.
    """
    if f1.shape != f2.shape or f1.ndim != 4:
        raise ValueError(f"need two (B, C, h, w) feature maps of one shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    with torch.autocast(device_type=f1.device.type, enabled=False):
        q1 = rearrange(f1.float(), "b c h w -> b (h w) c")                          # B, N, C
        q2 = rearrange(f2.float(), "b c h w -> b (h w) c")
        rows = max(1, max_logits // max(b * h * w, 1))
        source = rearrange(cell_centres(h, w, 1, device=f1.device), "h w c -> (h w) c") * stride   # N, 2
        flows = []
        for queries, keys in ((q1, q2), (q2, q1))[:2 if backward else 1]:
            targets = [flow_targets(queries[:, start:start + rows] @ keys.transpose(1, 2) / temperature,
                                    (h, w), stride, flow, window_threshold)
                       for start in range(0, h * w, rows)]
            flows.append(rearrange(torch.cat(targets, dim=1) - source, "b (h w) c -> b c h w", h=h, w=w))
    return flows[0], flows[1] if backward else None


def sample_flow(flow: torch.Tensor, points: torch.Tensor, stride: float) -> torch.Tensor:
    """Bilinear value of ``flow (2, h, w)`` (defined at cell centres) at ``points (Q, 2)`` pixels (x, y).

    Cell centres as in :mod:`corr.geometry`; points beyond the outer centres take the border
    value. Float32 with autocast off.
    """
    h, w = flow.shape[-2:]
    with torch.autocast(device_type=flow.device.type, enabled=False):
        cells = pixel_to_cell(points.float(), stride)                                           # Q, 2
        grid = torch.stack([normalise_cells(cells[:, 0], w), normalise_cells(cells[:, 1], h)], dim=-1)  # Q, 2
        out = F.grid_sample(flow[None].float(), grid[None, None], mode="bilinear", padding_mode="border",
                            align_corners=True)                                                 # 1, 2, 1, Q
    return out[0, :, 0].T                                                                       # Q, 2


def _query_start(query_points: np.ndarray, num_frames: int, device) -> tuple[np.ndarray, torch.Tensor]:
    query_points = np.asarray(query_points, dtype=np.float64)
    if query_points.ndim != 2 or query_points.shape[1] != 3:
        raise ValueError(f"query_points must be (Q, 3) [t, y, x], got shape {query_points.shape}")
    t0 = np.clip(np.round(query_points[:, 0]).astype(np.int64), 0, num_frames - 1)
    return t0, torch.as_tensor(query_points[:, [2, 1]], dtype=torch.float32, device=device)


def _inside(p: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return (p[..., 0] >= 0) & (p[..., 0] < width) & (p[..., 1] >= 0) & (p[..., 1] < height)


def chain_tracks(forward_flows: torch.Tensor, backward_flows: torch.Tensor, query_points: np.ndarray,
                 image_size: tuple[int, int], stride: float, occlusion_threshold: float = 3.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The chained setting -> ``(tracks float64 [Q, T, 2] (x, y), occluded bool [Q, T])``.

    forward_flows:  ``(T-1, 2, h, w)``, ``[t]`` = flow from frame t to t+1 (pixels, x, y);
    backward_flows: ``(T-1, 2, h, w)``, ``[t]`` = flow from frame t+1 to t;
    query_points:   ``(Q, 3)`` ``[t, y, x]`` (``t`` rounded); image_size ``(H, W)``; ``stride``
    the flows' cell size in pixels.
    """
    if forward_flows.shape != backward_flows.shape or forward_flows.ndim != 4 or forward_flows.shape[1] != 2:
        raise ValueError(f"flows must both be (T-1, 2, h, w), got {tuple(forward_flows.shape)} and "
                         f"{tuple(backward_flows.shape)}")
    num_frames = forward_flows.shape[0] + 1
    device = forward_flows.device
    t0, start = _query_start(query_points, num_frames, device)
    q = len(start)
    tracks = torch.zeros(q, num_frames, 2, dtype=torch.float32, device=device)
    tracks[torch.arange(q, device=device), torch.as_tensor(t0, device=device)] = start
    # forward from each query frame, then backward; frames on the other side keep the query point
    current = start.clone()
    for t in range(num_frames - 1):
        active = torch.as_tensor(t0 <= t, device=device)
        step = current + sample_flow(forward_flows[t], current, stride)
        tracks[active, t + 1] = step[active]
        current = torch.where(active[:, None], step, torch.where(torch.as_tensor(t0 == t + 1, device=device)[:, None],
                                                                  start, current))
    current = start.clone()
    for t in range(num_frames - 1, 0, -1):
        current = torch.where(torch.as_tensor(t0 == t, device=device)[:, None], start, current)
        active = torch.as_tensor(t0 >= t, device=device)
        step = current + sample_flow(backward_flows[t - 1], current, stride)
        tracks[active, t - 1] = step[active]
        current = torch.where(active[:, None], step, current)
    # two-pair forward-backward test
    visible = _inside(tracks, *image_size)
    for t in range(num_frames - 1):
        there = sample_flow(forward_flows[t], tracks[:, t], stride)
        back = sample_flow(backward_flows[t], tracks[:, t + 1], stride)
        consistent = (there + back).norm(dim=-1) < occlusion_threshold
        visible[:, t] &= consistent
        visible[:, t + 1] &= consistent
    visible[torch.arange(q, device=device), torch.as_tensor(t0, device=device)] = True
    return tracks.double().cpu().numpy(), (~visible).cpu().numpy()


def direct_tracks(flows: dict[int, torch.Tensor], query_points: np.ndarray, image_size: tuple[int, int],
                  stride: float) -> tuple[np.ndarray, np.ndarray]:
    """The direct setting: ``flows[t0] (T, 2, h, w)`` from frame ``t0`` to every frame (one entry per
    query frame) -> ``(tracks float64 [Q, T, 2], occluded bool [Q, T])``; occluded = outside the frame."""
    some = next(iter(flows.values()))
    num_frames, device = some.shape[0], some.device
    t0, start = _query_start(query_points, num_frames, device)
    tracks = torch.zeros(len(start), num_frames, 2, dtype=torch.float32, device=device)
    for frame in np.unique(t0):
        rows = torch.as_tensor(np.nonzero(t0 == frame)[0], device=device)
        for t in range(num_frames):
            tracks[rows, t] = start[rows] + sample_flow(flows[int(frame)][t], start[rows], stride)
        tracks[rows, int(frame)] = start[rows]
    visible = _inside(tracks, *image_size)
    visible[torch.arange(len(start), device=device), torch.as_tensor(t0, device=device)] = True
    return tracks.double().cpu().numpy(), (~visible).cpu().numpy()


def upsample_frames(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """``(T, 3, H, W)`` -> ``(T, 3, u H, u W)`` bilinear (pixel ``p`` of the result is ``p / u`` of the
    input, :mod:`corr.geometry`); ``u = 1`` returns ``frames``."""
    if factor == 1:
        return frames
    return F.interpolate(frames, scale_factor=factor, mode="bilinear", align_corners=False)


@torch.no_grad()
def video_flows(model: torch.nn.Module, frames: torch.Tensor, cfg: FlowTrackConfig = FlowTrackConfig(),
                batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows of consecutive frames of normalised ``frames (T, 3, H, W)`` -> forward, backward
    ``(T-1, 2, h, w)`` in pixels of ``frames`` at cells of ``model.stride / u``.

    ``model(f_t, f_{t+1})`` returns the pair's features (:class:`corr.global_match.GlobalMatchNet`,
    symmetric in the pair, so the backward pair's features are the same), ``batch_size``
    pairs per call (it may run under autocast); both directions in float32 (:func:`pair_flows`).
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need normalised frames (T >= 2, 3, H, W), got {tuple(frames.shape)}")
    stride = model.stride / cfg.upsample_factor
    forward, backward = [], []
    for first in range(0, frames.shape[0] - 1, max(1, batch_size)):
        last = min(first + max(1, batch_size), frames.shape[0] - 1)
        f1, f2 = model(upsample_frames(frames[first:last], cfg.upsample_factor),
                       upsample_frames(frames[first + 1:last + 1], cfg.upsample_factor))
        ahead, back = pair_flows(f1, f2, model.temperature, stride, cfg.flow_method, cfg.window_threshold)
        forward.append(ahead)
        backward.append(back)
    return torch.cat(forward), torch.cat(backward)


@torch.no_grad()
def direct_flows(model: torch.nn.Module, frames: torch.Tensor, query_frame: int,
                 cfg: FlowTrackConfig = FlowTrackConfig(), batch_size: int = 4) -> torch.Tensor:
    """Flows ``(T, 2, h, w)`` from frame ``query_frame`` of normalised ``frames (T, 3, H, W)`` to every
    frame (each pair through the network), pixels of ``frames`` at cells of ``model.stride / u``."""
    stride = model.stride / cfg.upsample_factor
    source = upsample_frames(frames[query_frame:query_frame + 1], cfg.upsample_factor)
    flows = []
    for first in range(0, frames.shape[0], max(1, batch_size)):
        targets = upsample_frames(frames[first:first + max(1, batch_size)], cfg.upsample_factor)
        f1, f2 = model(source.expand(len(targets), -1, -1, -1), targets)
        flows.append(pair_flows(f1, f2, model.temperature, stride, cfg.flow_method, cfg.window_threshold,
                                backward=False)[0])
    return torch.cat(flows)


def track_video(model: torch.nn.Module, frames: torch.Tensor, query_points: np.ndarray,
                cfg: FlowTrackConfig = FlowTrackConfig(), batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``query_points [t, y, x]`` through normalised ``frames (T, 3, H, W)`` in ``cfg.walk_setting``
    -> ``(tracks float64 [Q, T, 2] (x, y) in pixels of frames, occluded bool [Q, T])``."""
    size = tuple(frames.shape[-2:])
    stride = model.stride / cfg.upsample_factor
    if cfg.walk_setting == "direct":
        t0, _ = _query_start(query_points, frames.shape[0], frames.device)
        flows = {int(t): direct_flows(model, frames, int(t), cfg, batch_size) for t in np.unique(t0)}
        return direct_tracks(flows, query_points, size, stride)
    forward, backward = video_flows(model, frames, cfg, batch_size)
    return chain_tracks(forward, backward, query_points, size, stride, cfg.occlusion_threshold)
