"""Tracking any point by chaining the soft-argmax flows of a global-matching network
(docs/objectives.md, GMRW; Shrivastava and Owens, ECCV 2024).

For consecutive frames the network's unit features give ``logits = <f_t, f_{t+1}> / tau``,
``A_{t->t+1} = softmax_rows(logits)`` and ``A_{t+1->t} = softmax_rows(logits^T)``. The flow of
cell ``i`` is the expected landing position (soft-argmax) ``F(c_i) = sum_j A_ij c'_j - c_i``,
``c`` cell centres in pixels; with ``local_radius = r > 0`` over the ``(2r+1) x (2r+1)`` cells
around the row's argmax (cut by the frame's edge), renormalised; ``r = 0``: the whole row.
Flows live at cell centres and are bilinearly interpolated (clamped at the border).

Chaining a query ``(t0, x, y)``: ``p_{t+1} = p_t + F_{t->t+1}(p_t)`` forward from ``t0``,
``p_{t-1} = p_t + F_{t->t-1}(p_t)`` backward. A step is occluded when the reverse flow does not
bring the point back within ``occlusion_threshold`` pixels, or when it leaves ``[0, W] x [0, H]``.
Logits, softmaxes, expectations and flow sampling run in float32 with autocast disabled, the
logits in row chunks of at most :data:`MAX_LOGITS` entries.

Coordinates: :mod:`corr.geometry` (TAP-Vid's: (0, 0) the top-left corner of the top-left
pixel); queries ``[t, y, x]``, tracks ``[Q, T, 2]`` (x, y), occluded ``[Q, T]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from corr.geometry import cell_centres, normalise_cells, pixel_to_cell

__all__ = ["FlowTrackConfig", "LOCAL_RADIUS_SELECTION", "MAX_LOGITS", "soft_argmax_targets", "pair_flows",
           "sample_flow", "chain_tracks", "video_flows"]

#: Largest logits block (rows x columns x pairs) held at once by :func:`pair_flows` (128 MiB in float32).
MAX_LOGITS = 2 ** 25

#: Held-out choice of the default ``local_radius``: AJ, <delta^x_avg>, OA (%) per radius on the
#: generated TAP-Vid set ``held_out_set`` (never the evaluation set), and the radius chosen.
LOCAL_RADIUS_SELECTION = {
    "held_out_set": "generate_tapvid(root, kind='davis', num_videos=4, num_frames=24, seed=1) at 256x256, "
                    "strided queries (the evaluation set is seed=0)",
    "scores": {
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
                  the default is the held-out choice of :data:`LOCAL_RADIUS_SELECTION`.
    """

    occlusion_threshold: float = 4.0
    local_radius: int = 1

    def __post_init__(self):
        if not self.occlusion_threshold > 0 or self.local_radius < 0 or int(self.local_radius) != self.local_radius:
            raise ValueError(f"need occlusion_threshold > 0 and an integer local_radius >= 0, got {self}")


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
        centres = rearrange(cell_centres(th, tw, stride, device=logits.device), "h w c -> (h w) c")  # M, 2
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


def pair_flows(f1: torch.Tensor, f2: torch.Tensor, temperature: float, stride: float, local_radius: int = 0,
               max_logits: int = MAX_LOGITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward soft-argmax flows ``(B, 2, h, w)`` (pixels) of feature pairs ``(B, C, h, w)``.

    ``logits_{1->2} = <f1_n, f2_m> / tau`` (unit features, float32, autocast off) computed
    ``rows`` at a time (``B * rows * h w <= max_logits``); ``logits_{2->1}`` likewise with the
    frames swapped (the transpose of the first); the flow is :func:`soft_argmax_targets` minus
    the source cell centres.
    """
    if f1.shape != f2.shape or f1.ndim != 4:
        raise ValueError(f"need two (B, C, h, w) feature maps of one shape, got {tuple(f1.shape)}, {tuple(f2.shape)}")
    b, _, h, w = f1.shape
    with torch.autocast(device_type=f1.device.type, enabled=False):
        q1 = F.normalize(rearrange(f1.float(), "b c h w -> b (h w) c"), dim=-1)       # B, N, C
        q2 = F.normalize(rearrange(f2.float(), "b c h w -> b (h w) c"), dim=-1)
        rows = max(1, max_logits // max(b * h * w, 1))
        source = rearrange(cell_centres(h, w, stride, device=f1.device), "h w c -> (h w) c")   # N, 2
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
