"""Two-frame contrastive random walk with label warping (docs/objectives.md, GMRW;
Shrivastava and Owens, "Self-Supervised Any-Point Tracking by Contrastive Random Walks", ECCV 2024).

The forward clip (frames 1, 2) is cut with crop box ``a``, frame 1 again with an independent
box ``b``; the walk goes 1a -> 2a -> 1b:

    A = softmax_rows(logits_forward) (B, N, M),  R = softmax_rows(logits_back) (B, M, N'),  P = A R
    loss_walk = -(1 / |V|) sum_{b, i in V} sum_j w_ij log(P_ij + eps),   eps = 1e-20

A cell ``i`` of 1a returns where its scene point lies in crop b, ``t_i = affine(c_i)`` (``c_i``
its centre, ``affine`` crop-a pixels -> crop-b pixels; :mod:`corr.geometry` conventions);
``w_ij`` are the bilinear weights of ``t_i`` over the cells of 1b, ``V`` the cells whose target
lies inside 1b's grid of cell centres. Optional second-order edge-aware smoothness of each
step's expected flow (:func:`edge_aware_smoothness`) is added with weight ``lambda(step)``.
The logits, softmaxes, walk, targets and smoothness run in float32 with autocast disabled.
Diagnostics: ``walk``, ``acc`` (most likely return cell = nearest target cell), ``valid``
(fraction of cells in ``V``) and, with smoothness, ``smooth`` and ``smooth_weight``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.geometry import apply_affine, cell_centres, cell_to_pixel, crop_box_affine, normalise_pixels, pixel_to_cell
from corr.global_match import pair_transition_logits

EPS = 1e-20

__all__ = ["GlobalWalkLoss", "warp_targets", "expected_flow", "edge_aware_smoothness", "GlobalWalkFrameLoss",
           "random_boxes", "crop_resize"]


def warp_targets(affine: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int], stride: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear targets of every source cell: ``(index (B, N, 4), weight (B, N, 4), valid (B, N))``.

    ``grid = (h, w)`` of the source frame (crop a), ``target_grid = (h', w')`` of crop b;
    ``index`` are row-major cells of the target grid, ``weight`` their bilinear weights
    (summing to 1), ``valid`` whether the warped centre lies inside the target grid.
    """
    h, w = grid
    th, tw = target_grid
    centres = rearrange(cell_centres(h, w, stride, device=affine.device, dtype=affine.dtype), "h w c -> (h w) c")
    target = pixel_to_cell(apply_affine(affine, centres), stride)                 # B, N, 2 in cells
    u, v = target.unbind(-1)
    valid = (u >= 0) & (u <= tw - 1) & (v >= 0) & (v <= th - 1)
    u0 = u.floor().clamp(0, max(tw - 2, 0))
    v0 = v.floor().clamp(0, max(th - 2, 0))
    fu = (u - u0).clamp(0, 1)
    fv = (v - v0).clamp(0, 1)
    u1 = (u0 + 1).clamp(max=tw - 1)
    v1 = (v0 + 1).clamp(max=th - 1)
    index = torch.stack([v0 * tw + u0, v0 * tw + u1, v1 * tw + u0, v1 * tw + u1], dim=-1).long()
    weight = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], dim=-1)
    return index, weight, valid


def expected_flow(transition: torch.Tensor, grid: tuple[int, int], target_grid: tuple[int, int]) -> torch.Tensor:
    """Soft-argmax flow in cells: ``transition (B, N, M)`` rows on ``grid``, columns on ``target_grid``
    -> ``(B, 2, h, w)`` (x, y), ``sum_j T_ij p_j - p_i`` with ``p`` cell indices."""
    h, w = grid
    with torch.autocast(device_type=transition.device.type, enabled=False):
        transition = transition.to(torch.promote_types(transition.dtype, torch.float32))
        src = rearrange(cell_centres(h, w, 1, device=transition.device, dtype=transition.dtype), "h w c -> (h w) c")
        dst = rearrange(cell_centres(*target_grid, 1, device=transition.device, dtype=transition.dtype),
                        "h w c -> (h w) c")
        flow = transition @ dst - src                                              # B, N, 2 (centres cancel)
    return rearrange(flow, "b (h w) c -> b c h w", h=h, w=w)


def edge_aware_smoothness(flow: torch.Tensor, image: torch.Tensor, edge: float) -> torch.Tensor:
    """Second-order edge-aware smoothness of ``flow (B, 2, h, w)`` guided by ``image (B, 3, H, W)``.

    The image is average-pooled to ``(h, w)``; see the module docstring for the formula.
    """
    h, w = flow.shape[-2:]
    image = F.adaptive_avg_pool2d(image.float(), (h, w))
    terms = []
    if w >= 3:
        d2 = flow[..., 2:] - 2 * flow[..., 1:-1] + flow[..., :-2]
        grad = (image[..., 2:] - image[..., :-2]).abs().mean(dim=1, keepdim=True) / 2
        terms.append((torch.exp(-edge * grad) * d2.abs()).mean())
    if h >= 3:
        d2 = flow[..., 2:, :] - 2 * flow[..., 1:-1, :] + flow[..., :-2, :]
        grad = (image[..., 2:, :] - image[..., :-2, :]).abs().mean(dim=1, keepdim=True) / 2
        terms.append((torch.exp(-edge * grad) * d2.abs()).mean())
    if not terms:
        return flow.sum() * 0.0
    return torch.stack(terms).mean()


class GlobalWalkLoss(nn.Module):
    """Walk 1a -> 2a -> 1b with label warping (+ optional smoothness); see the module docstring.

    ``forward(logits_forward (B, N, M), logits_back (B, M, N'), affine (B, 2, 3), grid, stride=4,
    images=None, step=None) -> (loss, diagnostics)``. ``grid = ((h, w), (h2, w2), (h', w'))``
    are the cell grids of 1a, 2a and 1b (a single ``(h, w)`` means all three are equal).
    ``images (B, 2, 3, H, W)``: the source frames of the two steps (1a, 2a), needed for the
    smoothness term.
    """

    def __init__(self, smoothness_weight: float = 0.0, smoothness_ramp_steps: int = 0, edge: float = 10.0):
        super().__init__()
        if smoothness_weight < 0 or smoothness_ramp_steps < 0:
            raise ValueError("smoothness_weight and smoothness_ramp_steps must be >= 0")
        self.smoothness_weight = float(smoothness_weight)
        self.smoothness_ramp_steps = int(smoothness_ramp_steps)
        self.edge = float(edge)

    def smoothness_at(self, step: Optional[int]) -> float:
        """lambda(step): linear ramp from 0 to ``smoothness_weight`` over ``smoothness_ramp_steps``."""
        if self.smoothness_ramp_steps == 0 or step is None:
            return self.smoothness_weight
        return self.smoothness_weight * min(1.0, max(0.0, step / self.smoothness_ramp_steps))

    def forward(self, logits_forward: torch.Tensor, logits_back: torch.Tensor, affine: torch.Tensor,
                grid, stride: int = 4, images: Optional[torch.Tensor] = None,
                step: Optional[int] = None) -> tuple[torch.Tensor, dict[str, float]]:
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
            walk = forward @ back                                                   # B, N, N'
            index, weight, valid = warp_targets(affine.to(dtype), (h, w), (hb, wb), stride)
            log_p = torch.log(walk.gather(-1, index) + EPS)                        # B, N, 4
            per_cell = -(weight * log_p).sum(dim=-1)                               # B, N
            count = valid.sum()
            walk_loss = (per_cell * valid).sum() / count.clamp(min=1)
            nearest = index.gather(-1, weight.argmax(dim=-1, keepdim=True))[..., 0]
            hits = (walk.argmax(dim=-1) == nearest) & valid
            diagnostics = {"walk": float(walk_loss.detach()), "acc": float(hits.sum() / count.clamp(min=1)),
                           "valid": float(valid.float().mean())}
            loss = walk_loss
            weight_now = self.smoothness_at(step)
            if self.smoothness_weight > 0:
                if images is None:
                    raise ValueError("the smoothness term needs images (B, 2, 3, H, W)")
                flows = [expected_flow(forward, (h, w), (h2, w2)), expected_flow(back, (h2, w2), (hb, wb))]
                smooth = torch.stack([edge_aware_smoothness(f, images[:, k], self.edge)
                                      for k, f in enumerate(flows)]).mean()
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
    training checkpoint). ``forward(clip (B, T >= 2, 3, S, S), encoder=None)``: frames 0 and 1
    of each clip are cut with one random box ``a`` (area ``scale`` of the frame, bilinear,
    resized to ``S``), frame 0 again with an independent box ``b``; the loss is
    :class:`GlobalWalkLoss` on 1a -> 2a -> 1b with the exact affine between the boxes. The
    shared ``encoder`` is not used. The smoothness ramp counts training calls in the buffer
    ``steps_seen`` (like batch norm's ``num_batches_tracked``).
    """

    needs_frames = True

    def __init__(self, model: nn.Module, smoothness_weight: float = 0.0, smoothness_ramp_steps: int = 0,
                 scale: tuple[float, float] = (0.4, 1.0), ratio: tuple[float, float] = (0.75, 1.333)):
        super().__init__()
        self.model = model
        self.walk = GlobalWalkLoss(smoothness_weight, smoothness_ramp_steps)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(self, clip: torch.Tensor, encoder: Optional[nn.Module] = None) -> tuple[torch.Tensor, dict]:
        if clip.ndim != 5 or clip.shape[1] < 2 or clip.shape[2] != 3:
            raise ValueError(f"global_walk needs dense clips (B, T >= 2, 3, H, W), got {tuple(clip.shape)}")
        if self.training:
            self.steps_seen += 1
        b, _, _, height, width = clip.shape
        size = min(height, width)
        box_a = random_boxes(b, height, width, self.scale, self.ratio, clip.device)
        box_b = random_boxes(b, height, width, self.scale, self.ratio, clip.device)
        frames = clip[:, :2].float()
        first_a = crop_resize(frames[:, 0], box_a, size)
        second_a = crop_resize(frames[:, 1], box_a, size)
        first_b = crop_resize(frames[:, 0], box_b, size)
        f_src, f_dst = self.model(torch.cat([first_a, second_a]), torch.cat([second_a, first_b]))
        logits = pair_transition_logits(f_src, f_dst, self.model.cfg.temperature)           # 2B, N, N
        affine = crop_box_affine(box_a, box_b, size)
        return self.walk(logits[:b], logits[b:], affine, tuple(f_src.shape[-2:]), self.model.stride,
                         images=torch.stack([first_a, second_a], dim=1), step=int(self.steps_seen))
