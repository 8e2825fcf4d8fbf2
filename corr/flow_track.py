"""Tracking any point by chaining the soft-argmax flows of a global-matching network.

For consecutive frames ``t, t+1`` the network gives the transition matrices
``A_{t->t+1} = softmax_rows(logits)`` and ``A_{t+1->t} = softmax_rows(logits^T)`` (one network
pass per pair; :mod:`corr.global_match`), ``logits = <f_t, f_{t+1}> / tau`` over unit features.
The flow of cell ``i`` is the expectation of where the walk lands (soft-argmax):

    F_{t->t+1}(c_i) = sum_j A_ij c'_j - c_i          pixels, c = cell centres

With ``local_radius = r > 0`` the expectation is restricted to the ``(2r+1) x (2r+1)`` cells
around the row's argmax (Chebyshev distance <= r, cut by the frame's edge), renormalised;
``r = 0`` uses the whole row. A row that is not sharp spreads mass over thousands of cells
at 256x256 (64x64 cells), and its whole-frame expectation is pulled towards the frame
centre. Flows are defined at cell centres and bilinearly interpolated (clamped at the
border) at any point.

Choice of the default ``local_radius = 1`` (:class:`FlowTrackConfig`): selected on a
held-out generated TAP-Vid set (``datasets.synthetic_tasks.generate_tapvid(..., seed=1)``, 4
videos of 24 frames, 240x320 resized to 256x256, strided queries), never on the evaluation
set (the generated ``seed=0`` set, or real TAP-Vid). The network was trained for 600 steps
with ``train.py --loss global_walk`` on the generated demo clips; its held-out AJ /
<delta^x_avg> / OA (%) for ``r = 0, 1, 2, 3, 4``, the commands that produced them and the
checkpoint are in :data:`LOCAL_RADIUS_SELECTION`. The highest held-out AJ picks ``r = 1``
(34.60, against 31.72 for ``r = 2`` and 16.41 for the whole frame, ``r = 0``).

Chaining a query ``(t0, x, y)``: ``p_{t0} = (x, y)``; forward ``p_{t+1} = p_t + F_{t->t+1}(p_t)``
for ``t >= t0``; backward ``p_{t-1} = p_t + F_{t->t-1}(p_t)`` for ``t <= t0``.

Occlusion at a frame reached from ``p`` by a step (forward-backward check): the reverse
flow at the new position must bring the point back, ``|p_new + F_rev(p_new) - p| <=
occlusion_threshold`` pixels, else the point is occluded there; a point outside the frame
``[0, W] x [0, H]`` is occluded too. The query frame is visible. Tracks keep being chained
through occlusions.

Mixed precision: the network may run under ``torch.autocast`` (float16 on CUDA, bfloat16 on
CPU); logits, softmax, soft-argmax expectations and flow sampling run in float32 with
autocast disabled (an expectation of pixel positions up to 256 in bfloat16 would be off by
up to a pixel, in float16 by an eighth). Logits are computed in row chunks of at most
:data:`MAX_LOGITS` entries, so memory does not grow with the square of the frame size.

Conventions (TAP-Vid, PROTOCOLS.md section 8): pixels of the frames given, (0, 0) the
top-left corner of the top-left pixel (pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``);
queries ``[t, y, x]``; tracks ``[Q, T, 2]`` as ``(x, y)``; occluded ``[Q, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

__all__ = ["FlowTrackConfig", "LOCAL_RADIUS_SELECTION", "MAX_LOGITS", "soft_argmax_targets", "flow_from_logits",
           "pair_flows", "sample_flow", "chain_tracks", "video_flows", "track_video"]

#: Largest logits block (rows x columns x pairs) held at once by :func:`pair_flows` (128 MiB in float32).
MAX_LOGITS = 2 ** 25

#: How the default ``local_radius`` was chosen (module docstring): held-out set, command, scores.
LOCAL_RADIUS_SELECTION = {
    "held_out_set": "generate_tapvid(root, kind='davis', num_videos=4, num_frames=24, seed=1) at 256x256, "
                    "strided queries (the evaluation set is seed=0)",
    "command": "python -c \"from datasets.synthetic_tasks import generate_tapvid; generate_tapvid("
               "'data/tapvid-heldout', kind='davis', num_videos=4, num_frames=24, seed=1)\" && "
               "python train.py --loss global_walk --clip-len 2 --crop-size 96 --batch-size 4 --steps 600 "
               "--out runs/gw-demo && "
               "python evaluate.py --task tapvid --tracker walk --data-root data/tapvid-heldout/tapvid_davis.pkl "
               "--checkpoint runs/gw-demo/checkpoint.pt --sweep 'local_radius=0,1,2,3,4' --out results/tapvid-heldout",
    "checkpoint": "runs/gw-demo/checkpoint.pt: GlobalMatchNet (default GlobalMatchConfig), 600 steps of 4 two-frame "
                  "clips (96x96 crops) of the generated demo clips (train.py without --data, seed 0) on the CPU; "
                  "walk loss 5.14 at step 1, 1.78 at step 600 (means of steps 1-10 and 591-600: 4.86, 1.82)",
    "scores": {  # held-out AJ, <delta^x_avg>, OA in percent
        0: {"AJ": 16.41, "delta_avg": 26.73, "OA": 79.01},
        1: {"AJ": 34.60, "delta_avg": 46.44, "OA": 87.61},
        2: {"AJ": 31.72, "delta_avg": 43.60, "OA": 86.03},
        3: {"AJ": 27.78, "delta_avg": 40.30, "OA": 81.36},
        4: {"AJ": 26.00, "delta_avg": 38.15, "OA": 80.50},
    },
    "chosen": 1,
}


@dataclass(frozen=True)
class FlowTrackConfig:
    """Settings of the walk tracker (recorded with every result).

    occlusion_threshold: forward-backward disagreement in pixels above which a point is occluded.
    local_radius: soft-argmax over the ``(2r+1)^2`` cells around the argmax (0: the whole frame);
                  the default is chosen on a held-out set (:data:`LOCAL_RADIUS_SELECTION`).
    """

    occlusion_threshold: float = 4.0
    local_radius: int = 1

    def __post_init__(self):
        if not self.occlusion_threshold > 0 or self.local_radius < 0 or int(self.local_radius) != self.local_radius:
            raise ValueError(f"need occlusion_threshold > 0 and an integer local_radius >= 0, got {self}")


def _centres(h: int, w: int, stride: float, device) -> torch.Tensor:
    """``(h w, 2)`` float32 pixel centres (x, y) of the cells, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) * stride, (ys.flatten() + 0.5) * stride], dim=1)   # N, 2


def soft_argmax_targets(logits: torch.Tensor, target_grid: tuple[int, int], stride: float,
                        local_radius: int = 0) -> torch.Tensor:
    """Expected target position ``(B, n, 2)`` pixels (x, y) of rows ``logits (B, n, h' w')``.

    ``r = local_radius > 0``: the softmax and expectation run over the valid cells of the
    ``(2r+1)^2`` window centred on the row's argmax (gathered, never a dense mask); ``r = 0``:
    over the whole row. Float32 with autocast off, whatever the input dtype.
    """
    th, tw = target_grid
    if logits.ndim != 3 or logits.shape[-1] != th * tw:
        raise ValueError(f"logits {tuple(logits.shape)} do not match the target grid {target_grid}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float()
        centres = _centres(th, tw, stride, logits.device)                             # M, 2
        if local_radius <= 0:
            return logits.softmax(dim=-1) @ centres
        best = logits.argmax(dim=-1)                                                   # B, n
        offsets = torch.arange(-local_radius, local_radius + 1, device=logits.device)  # K
        wy = (best // tw)[..., None, None] + offsets[:, None]                          # B, n, K, 1
        wx = (best % tw)[..., None, None] + offsets[None, :]                           # B, n, 1, K
        inside = ((wy >= 0) & (wy < th) & (wx >= 0) & (wx < tw)).flatten(-2)           # B, n, K K
        index = (wy.clamp(0, th - 1) * tw + wx.clamp(0, tw - 1)).flatten(-2)           # B, n, K K
        window = logits.gather(-1, index).masked_fill(~inside, float("-inf"))         # argmax is always inside
        probs = window.softmax(dim=-1)                                                 # B, n, K K
        return torch.einsum("bnk,bnkc->bnc", probs, centres[index])


def flow_from_logits(logits: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int], stride: float,
                     local_radius: int = 0) -> torch.Tensor:
    """Soft-argmax flow ``(B, 2, h, w)`` in pixels (x, y) from transition logits ``(B, h w, h' w')``."""
    h, w = grid
    if logits.ndim != 3 or logits.shape[1] != h * w:
        raise ValueError(f"logits {tuple(logits.shape)} do not match grids {grid} -> {target_grid}")
    target = soft_argmax_targets(logits, target_grid, stride, local_radius)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        flow = target - _centres(h, w, stride, logits.device)                          # B, N, 2
    return rearrange(flow, "b (h w) c -> b c h w", h=h, w=w)


def pair_flows(f1: torch.Tensor, f2: torch.Tensor, temperature: float, stride: float, local_radius: int = 0,
               max_logits: int = MAX_LOGITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward soft-argmax flows ``(B, 2, h, w)`` (pixels) of feature pairs ``(B, C, h, w)``.

    ``logits_{1->2} = <f1_n, f2_m> / tau`` (unit features, float32, autocast off) computed
    ``rows`` at a time (``B * rows * h w <= max_logits``); ``logits_{2->1}`` likewise with the
    frames swapped (the transpose of the first). Equal to :func:`flow_from_logits` of
    :func:`corr.global_match.transition_logits` up to float rounding.
    """
    if f1.shape != f2.shape or f1.ndim != 4:
        raise ValueError(f"need two (B, C, h, w) feature maps of one shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    with torch.autocast(device_type=f1.device.type, enabled=False):
        q1 = F.normalize(rearrange(f1.float(), "b c h w -> b (h w) c"), dim=-1)       # B, N, C
        q2 = F.normalize(rearrange(f2.float(), "b c h w -> b (h w) c"), dim=-1)
        rows = max(1, max_logits // max(b * h * w, 1))
        source = _centres(h, w, stride, f1.device)                                     # N, 2
        flows = []
        for queries, keys in ((q1, q2), (q2, q1)):
            targets = [soft_argmax_targets(queries[:, start:start + rows] @ keys.transpose(1, 2) / temperature,
                                           (h, w), stride, local_radius)
                       for start in range(0, h * w, rows)]
            flow = torch.cat(targets, dim=1) - source                                  # B, N, 2
            flows.append(rearrange(flow, "b (h w) c -> b c h w", h=h, w=w))
    return flows[0], flows[1]


def sample_flow(flow: torch.Tensor, points: torch.Tensor, stride: float) -> torch.Tensor:
    """Bilinear value of ``flow (2, h, w)`` (defined at cell centres) at ``points (Q, 2)`` pixels (x, y).

    Cell ``(i, j)`` has its centre at ``((j + 0.5) s, (i + 0.5) s)``; points beyond the outer
    centres take the border value. Float32 with autocast off.
    """
    h, w = flow.shape[-2:]
    with torch.autocast(device_type=flow.device.type, enabled=False):
        points = points.float()
        u = points[:, 0] / stride - 0.5
        v = points[:, 1] / stride - 0.5
        grid = torch.stack([u / max(w - 1, 1) * 2 - 1, v / max(h - 1, 1) * 2 - 1], dim=-1)    # Q, 2
        out = F.grid_sample(flow[None].float(), grid[None, None], mode="bilinear", padding_mode="border",
                            align_corners=True)                                                 # 1, 2, 1, Q
    return out[0, :, 0].T                                                                       # Q, 2


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

    ``model(f_t, f_{t+1})`` returns the pair's features (:class:`corr.global_match.GlobalMatchNet`),
    ``batch_size`` pairs per call (it may run under autocast); both directions come from the
    same features (:func:`pair_flows`), in float32.
    """
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"need normalised frames (T >= 2, 3, H, W), got {tuple(frames.shape)}")
    forward, backward = [], []
    for first in range(0, frames.shape[0] - 1, max(1, batch_size)):
        last = min(first + max(1, batch_size), frames.shape[0] - 1)
        f1, f2 = model(frames[first:last], frames[first + 1:last + 1])
        ahead, back = pair_flows(f1, f2, model.temperature, model.stride, local_radius)
        forward.append(ahead)
        backward.append(back)
    return torch.cat(forward), torch.cat(backward)


@torch.no_grad()
def track_video(model: torch.nn.Module, frames: np.ndarray, query_points: np.ndarray,
                cfg: FlowTrackConfig = FlowTrackConfig(), device: str | torch.device = "cpu",
                batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
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
    forward, backward = video_flows(model, images, cfg.local_radius, batch_size)
    return chain_tracks(forward, backward, query_points, frames.shape[1:3], model.stride, cfg.occlusion_threshold)
