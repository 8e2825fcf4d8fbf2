"""Two-frame contrastive random walk with label warping (docs/objectives.md, GMRW;
Shrivastava and Owens, "Self-Supervised Any-Point Tracking by Contrastive Random Walks", ECCV 2024).

The forward clip (frames 1, 2) is cut with crop box ``a``, frame 1 again with an independent
box ``b``; the walk goes 1a -> 2a -> 1b through the pairs (1a, 2a) and (2a, 1b):

    A = softmax_rows(logits_(1a,2a)) (B, N, M),  R = softmax_rows(logits_(2a,1b)) (B, M, N'),  P = A R
    loss_walk = -(sum_{b, i} m_i log(P_{i, t_i} + 1e-7)) / (sum_{b, i} m_i + 1e-5)

(logits ``<f, g> / sqrt(C)``, :func:`corr.global_match.pair_transition_logits`). Cell ``i`` of 1a
(centre ``c_i``) returns where its scene point lies in crop b: ``u_i = pixel_to_cell(affine(c_i))``
in cell coordinates of 1b (:mod:`corr.geometry`); the target is the one cell ``t_i``, the
rounded cell index sampled there, and ``m_i = 1`` when bilinearly sampling an all-ones map of
1b's grid (zeros outside) at ``u_i`` gives more than 0.5 (:func:`rounded_targets`). With ``flow_window = r > 0``
each transition row keeps only the cells closer than ``r`` cells (Euclidean, strict) to its
argmax, renormalised by ``max(sum, 1e-12)`` (:func:`window_transition`, the authors' weighted
argmax of fine-tuning). Smoothness (:func:`smoothness_loss`) of the two steps' expected flows at
full resolution is added with weight ``lambda(step)`` (:func:`curriculum_weight`). The logits,
softmaxes, walk, targets and smoothness run in float32 with autocast disabled. Diagnostics:
``walk``, ``acc`` (most likely return cell = target cell, over masked cells), ``valid`` (fraction
of cells with ``m_i = 1``) and, with smoothness, ``smooth`` and ``smooth_weight``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.geometry import (
    apply_affine,
    cell_centres,
    cell_to_pixel,
    crop_box_affine,
    normalise_cells,
    normalise_pixels,
    pixel_to_cell,
)
from corr.global_match import pair_transition_logits
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

#: Added to the return probability before the log.
EPS = 1e-7
#: Added to the number of masked cells of the mean.
COUNT_EPS = 1e-5
#: Edge constant of the smoothness weights.
EDGE_CONSTANT = 150.0
#: Random-resized-crop area fraction and aspect range of the two crops (the authors' "setting2").
CROP_SCALE = (0.3, 1.0)
CROP_RATIO = (0.7, 1.3)

__all__ = ["GlobalWalkLoss", "rounded_targets", "window_transition", "transition_flow", "resize_flow",
           "smoothness_loss", "curriculum_weight", "GlobalWalkFrameLoss", "random_boxes", "crop_resize"]


def rounded_targets(affine: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int], stride: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target cell of every source cell: ``(index (B, N) long, mask (B, N) bool)``.

    ``grid = (h, w)`` of the source frame (crop a), ``target_grid = (h', w')`` of crop b. The
    map of cell indices ``(x, y)`` of crop b and an all-ones map are sampled bilinearly at
    ``u_i`` with zeros outside the grid (``grid_sample``, aligned corners: the authors'
    ``align_feat``); the target is the rounded sampled index (half to even; within half a
    cell beyond the last row or column the zeros pull it inwards, as in the authors' code),
    ``mask`` = sampled ones > 0.5. ``index`` is row-major in the target grid (clamped into it).
    """
    h, w = grid
    th, tw = target_grid
    centres = rearrange(cell_centres(h, w, stride, device=affine.device, dtype=affine.dtype), "h w c -> (h w) c")
    u, v = pixel_to_cell(apply_affine(affine, centres), stride).unbind(-1)       # B, N in cells of crop b
    sample_at = torch.stack([normalise_cells(u, tw), normalise_cells(v, th)], dim=-1)[:, None]     # B, 1, N, 2
    maps = torch.cat([rearrange(cell_centres(th, tw, 1, device=u.device, dtype=u.dtype) - 0.5, "h w c -> c h w"),
                      torch.ones(1, th, tw, device=u.device, dtype=u.dtype)])                  # 3, h', w'
    sampled = F.grid_sample(maps.expand(u.shape[0], 3, th, tw), sample_at, mode="bilinear", padding_mode="zeros",
                            align_corners=True)[:, :, 0]                                         # B, 3, N
    col = torch.round(sampled[:, 0]).clamp(0, tw - 1).long()
    row = torch.round(sampled[:, 1]).clamp(0, th - 1).long()
    return row * tw + col, sampled[:, 2] > 0.5


def window_transition(transition: torch.Tensor, target_grid: tuple[int, int], window: float) -> torch.Tensor:
    """``transition (B, n, h' w')`` with each row restricted to the cells at distance ``< window``
    (cell units, Euclidean) from its argmax and renormalised by ``max(row sum, 1e-12)``."""
    th, tw = target_grid
    cells = rearrange(cell_centres(th, tw, 1, device=transition.device, dtype=transition.dtype), "h w c -> (h w) c")
    best = cells[transition.argmax(dim=-1)]                                          # B, n, 2
    near = ((best[..., None, :] - cells) ** 2).sum(-1) < window ** 2                   # B, n, M
    kept = transition * near
    return kept / kept.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def transition_flow(transition: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int]) -> torch.Tensor:
    """Expected flow in cells: ``transition (B, N, M)`` rows on ``grid``, columns on ``target_grid``
    -> ``(B, 2, h, w)`` (x, y), ``sum_j T_ij p_j - p_i`` with ``p`` cell indices."""
    h, w = grid
    src = rearrange(cell_centres(h, w, 1, device=transition.device, dtype=transition.dtype), "h w c -> (h w) c")
    dst = rearrange(cell_centres(*target_grid, 1, device=transition.device, dtype=transition.dtype),
                    "h w c -> (h w) c")
    flow = transition @ dst - src                                                  # B, N, 2 (centres cancel)
    return rearrange(flow, "b (h w) c -> b c h w", h=h, w=w)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cell flow ``(B, 2, h, w)`` -> pixel flow ``(B, 2, H, W)``: bilinear with aligned corners, x
    scaled by ``W / w`` and y by ``H / h`` (the authors' full-resolution flow)."""
    height, width = size
    h, w = flow.shape[-2:]
    up = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=True)
    return up * torch.tensor([width / w, height / h], dtype=up.dtype, device=up.device)[:, None, None]


def smoothness_loss(flow: torch.Tensor, image: torch.Tensor, edge: float = EDGE_CONSTANT) -> torch.Tensor:
    """Edge-aware second-order smoothness of pixel flows ``(N, 2, H, W)``, images ``(N, 3, H, W)`` in [-1, 1].

    ``g_x(I) = I[..., x+2] - I[..., x]``, ``w_x = exp(-mean_c((edge g_x)^2))``,
    ``d_xx = F[x+2] - 2 F[x+1] + F[x]``, ``rho(d) = sqrt(d^2 + 1e-6)``;
    ``(mean(w_x rho(d_xx)) + mean(w_y rho(d_yy))) / 2``, means over every element.
    """
    if flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"flow {tuple(flow.shape)} and image {tuple(image.shape)} sizes differ")
    weight_x = torch.exp(-((edge * (image[..., 2:] - image[..., :-2])) ** 2).mean(dim=1, keepdim=True))
    weight_y = torch.exp(-((edge * (image[..., 2:, :] - image[..., :-2, :])) ** 2).mean(dim=1, keepdim=True))
    d_xx = flow[..., 2:] - 2 * flow[..., 1:-1] + flow[..., :-2]
    d_yy = flow[..., 2:, :] - 2 * flow[..., 1:-1, :] + flow[..., :-2, :]

    def robust(x: torch.Tensor) -> torch.Tensor:
        return (x ** 2 + 0.001 ** 2) ** 0.5

    return ((weight_x * robust(d_xx)).mean() + (weight_y * robust(d_yy)).mean()) / 2


def curriculum_weight(step: int, weight: float, ramp: tuple[int, ...]) -> float:
    """Smoothness weight after ``step`` completed steps: ``weight`` without a ramp; with
    ``ramp = (start, end)``: 0 up to ``start``, ``weight`` from ``end``, linear between."""
    if not ramp:
        return weight
    start, end = ramp
    if step <= start:
        return 0.0
    if step >= end:
        return weight
    return weight * (step - start) / (end - start)


def _unit_images(normalised: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images ``(N, 3, H, W)`` -> ``2 x - 1`` of the [0, 1] images."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=normalised.dtype, device=normalised.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=normalised.dtype, device=normalised.device)[:, None, None]
    return 2 * (normalised * std + mean) - 1


class GlobalWalkLoss(nn.Module):
    """Walk 1a -> 2a -> 1b with the rounded one-hot target (+ optional smoothness); module docstring.

    ``forward(logits_forward (B, N, M), logits_back (B, M, N'), affine (B, 2, 3), grid, stride=4,
    images=None, step=0) -> (loss, diagnostics)``. ``grid = ((h, w), (h2, w2), (h', w'))``
    are the cell grids of 1a, 2a and 1b (a single ``(h, w)`` means all three are equal).
    ``images (B, 2, 3, H, W)``: the normalised source frames of the two steps (1a, 2a), needed
    for the smoothness term; ``step``: completed optimisation steps (the curriculum's clock).
    """

    def __init__(self, smoothness_weight: float = 0.0, smoothness_ramp: tuple[int, ...] = (),
                 flow_window: float = 0.0, edge: float = EDGE_CONSTANT):
        super().__init__()
        if smoothness_weight < 0 or flow_window < 0:
            raise ValueError("smoothness_weight and flow_window must be >= 0")
        if smoothness_ramp and (len(smoothness_ramp) != 2 or not 0 <= smoothness_ramp[0] < smoothness_ramp[1]):
            raise ValueError(f"smoothness_ramp must be (start, end) with 0 <= start < end, got {smoothness_ramp}")
        self.smoothness_weight = float(smoothness_weight)
        self.smoothness_ramp = tuple(int(s) for s in smoothness_ramp)
        self.flow_window = float(flow_window)
        self.edge = float(edge)

    def smoothness_at(self, step: int) -> float:
        """lambda(step) (:func:`curriculum_weight`)."""
        return curriculum_weight(step, self.smoothness_weight, self.smoothness_ramp)

    def forward(self, logits_forward: torch.Tensor, logits_back: torch.Tensor, affine: torch.Tensor,
                grid, stride: int = 4, images: Optional[torch.Tensor] = None,
                step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        grids = [tuple(grid)] * 3 if isinstance(grid[0], int) else [tuple(g) for g in grid]
        (h, w), (h2, w2), (hb, wb) = grids
        b, n, m = logits_forward.shape
        if n != h * w or m != h2 * w2 or logits_back.shape != (b, m, hb * wb):
            raise ValueError(f"logits {tuple(logits_forward.shape)}, {tuple(logits_back.shape)} do not match "
                             f"the grids {grids}")
        with torch.autocast(device_type=logits_forward.device.type, enabled=False):
            dtype = torch.promote_types(logits_forward.dtype, torch.float32)
            forward = logits_forward.to(dtype).softmax(dim=-1)                      # B, N, M
            back = logits_back.to(dtype).softmax(dim=-1)                            # B, M, N'
            if self.flow_window > 0:
                forward = window_transition(forward, (h2, w2), self.flow_window)
                back = window_transition(back, (hb, wb), self.flow_window)
            walk = forward @ back                                                   # B, N, N'
            target, mask = rounded_targets(affine.to(dtype), (h, w), (hb, wb), stride)
            log_p = torch.log(walk.gather(-1, target[..., None])[..., 0] + EPS)    # B, N
            count = mask.sum()
            walk_loss = -(log_p * mask).sum() / (count + COUNT_EPS)
            hits = (walk.argmax(dim=-1) == target) & mask
            diagnostics = {"walk": float(walk_loss.detach()), "acc": float(hits.sum() / (count + COUNT_EPS)),
                           "valid": float(mask.float().mean())}
            loss = walk_loss
            if self.smoothness_weight > 0:
                if images is None:
                    raise ValueError("the smoothness term needs images (B, 2, 3, H, W)")
                weight_now = self.smoothness_at(step)
                size = tuple(images.shape[-2:])
                flows = torch.cat([resize_flow(transition_flow(forward, (h, w), (h2, w2)), size),
                                   resize_flow(transition_flow(back, (h2, w2), (hb, wb)), size)])   # 2B, 2, H, W
                sources = _unit_images(torch.cat([images[:, 0], images[:, 1]]).to(dtype))
                smooth = smoothness_loss(flows, sources, self.edge)
                loss = loss + weight_now * smooth
                diagnostics.update(smooth=float(smooth.detach()), smooth_weight=weight_now)
        return loss, diagnostics


def random_boxes(batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                 device=None) -> torch.Tensor:
    """``(batch, 4)`` random boxes ``(top, left, h, w)`` (float pixels) inside a ``height x width`` frame.

    Area fraction ``~ U(scale)``, aspect ``w / h = exp(U(log ratio))``, sides clipped to the
    frame, corner uniform over the valid positions (torch's global generator).
    """
    area = height * width * torch.empty(batch, device=device).uniform_(*scale)
    aspect = torch.exp(torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(area * aspect).clamp(4.0, width)
    h = torch.sqrt(area / aspect).clamp(4.0, height)
    top = torch.rand(batch, device=device) * (height - h)
    left = torch.rand(batch, device=device) * (width - w)
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear crops ``(B, C, size, size)`` of ``images (B, C, H, W)`` at float ``boxes (B, 4)``.

    Output pixel ``(i, j)`` (centre ``(j + 0.5, i + 0.5)``) samples the source point
    ``(left + (j + 0.5) w / size, top + (i + 0.5) h / size)`` (:mod:`corr.geometry`).
    """
    b, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    centres = cell_to_pixel(torch.arange(size, device=images.device, dtype=images.dtype), 1) / size     # size
    xs = normalise_pixels(left[:, None] + centres[None] * w[:, None], width)                      # B, size
    ys = normalise_pixels(top[:, None] + centres[None] * h[:, None], height)
    grid = torch.stack([xs[:, None, :].expand(b, size, size), ys[:, :, None].expand(b, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class GlobalWalkFrameLoss(nn.Module):
    """The global walk as a frame loss of ``corr.train`` (``--loss global_walk``).

    Owns its :class:`corr.global_match.GlobalMatchNet` (saved with the loss state in the
    training checkpoint). ``forward(clip (B, T >= 2, 3, H, W), encoder=None)``: frames 0 and 1
    of each clip are cut with one random box ``a`` (area fraction in ``scale``, aspect in
    ``ratio``, bilinear, resized to ``size x size``; ``size = 0``: ``min(H, W)``), frame 0 again
    with an independent box ``b``; the loss is :class:`GlobalWalkLoss` on 1a -> 2a -> 1b with the
    exact affine between the boxes. The shared ``encoder`` is not used. The curriculum's clock
    counts training calls in the buffer ``steps_seen`` (like batch norm's ``num_batches_tracked``).
    """

    needs_frames = True

    def __init__(self, model: nn.Module, smoothness_weight: float = 0.0, smoothness_ramp: tuple[int, ...] = (),
                 flow_window: float = 0.0, size: int = 0, scale: tuple[float, float] = CROP_SCALE,
                 ratio: tuple[float, float] = CROP_RATIO):
        super().__init__()
        self.model = model
        self.walk = GlobalWalkLoss(smoothness_weight, smoothness_ramp, flow_window)
        self.size = int(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(self, clip: torch.Tensor, encoder: Optional[nn.Module] = None) -> tuple[torch.Tensor, dict]:
        if clip.ndim != 5 or clip.shape[1] < 2 or clip.shape[2] != 3:
            raise ValueError(f"global_walk needs dense clips (B, T >= 2, 3, H, W), got {tuple(clip.shape)}")
        step = int(self.steps_seen)
        if self.training:
            self.steps_seen += 1
        b, _, _, height, width = clip.shape
        size = self.size or min(height, width)
        box_a = random_boxes(b, height, width, self.scale, self.ratio, clip.device)
        box_b = random_boxes(b, height, width, self.scale, self.ratio, clip.device)
        frames = clip[:, :2].float()
        first_a = crop_resize(frames[:, 0], box_a, size)
        second_a = crop_resize(frames[:, 1], box_a, size)
        first_b = crop_resize(frames[:, 0], box_b, size)
        f_src, f_dst = self.model(torch.cat([first_a, second_a]), torch.cat([second_a, first_b]))
        logits = pair_transition_logits(f_src, f_dst, self.model.temperature)               # 2B, N, N
        affine = crop_box_affine(box_a, box_b, size)
        return self.walk(logits[:b], logits[b:], affine, tuple(f_src.shape[-2:]), self.model.stride,
                         images=torch.stack([first_a, second_a], dim=1), step=step)
