"""Fine-grained pixel correspondence loss (docs/objectives.md, fine-grained pixel; Li et al.,
"Learning Fine-Grained Features for Pixel-wise Video Correspondences", ICCV 2023).

Input: a normalised clip ``frames (B, T >= 2, 3, H, W)`` and a high-resolution encoder (stride
4 or 2) whose unit features are ``f (B, C, h, w)``. Over displacements ``d_k``, ``|d|_inf <= R``
(``K = (2R+1)^2``; displacements leaving the map excluded):

1. warp term: frame 0 ``I`` warped by a random warp (:mod:`corr.warps`) into ``J`` gives the
   true match ``m(p)`` of every cell (cell units, :mod:`corr.geometry`);
   ``L_warp = mean_p -sum_k target_k(p) log softmax_k(<f_I(p), f_J(p + d_k)> / tau)`` with
   ``target_k ∝ exp(-|p + d_k - m(p)|^2 / (2 sigma^2))``, over cells whose match is in view and
   ``|m(p) - p|_inf <= R - 1``;
2. reconstruction: frame 1's colours (pooled to the grid) rebuilt from frame 0's through
   ``softmax_k(<f_1(p), f_0(p + d_k)> / tau)``, smooth-L1;
3. optional domain term: a classifier tells warped from real correlation distributions through
   a gradient-reversal layer.

``loss = L_warp + rec_weight L_rec + domain_weight L_dom``. Diagnostics: ``warp_ce``, ``warp_kl``,
``warp_acc``, ``warp_used``, ``rec`` (and ``domain``, ``domain_acc``); ``visuals=True`` also returns
``warped``, ``in_view``, ``matches``, ``predicted`` and ``used``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.encoders import encoder_features
from corr.geometry import cell_centre_offset, pixel_to_cell, to_integer_centres
from corr.warps import WARP_KINDS, Warp, random_warp, source_matches, warp_image


def window_displacements(radius: int, device=None) -> torch.Tensor:
    """``(K, 2)`` integer ``(dx, dy)`` with ``|dx|, |dy| <= radius``, dy-major (unfold order)."""
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.ravel(), dy.ravel()], dim=-1)


def local_correlation(query: torch.Tensor, reference: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``corr[b, k, i, j] = <query[b, :, i, j], reference[b, :, i + dy_k, j + dx_k]>``.

    ``query, reference (B, C, h, w)`` -> ``(corr (B, K, h, w), valid bool (K, h, w))``; a
    displacement leaving the map is not valid (its corr is 0).
    """
    b, c, h, w = query.shape
    padded = F.pad(reference, (radius, radius, radius, radius))
    disp = window_displacements(radius).tolist()
    corr = torch.stack([(query * padded[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]).sum(1)
                        for dx, dy in disp], dim=1)                                # B, K, h, w
    ones = F.pad(torch.ones(1, 1, h, w, device=query.device), (radius, radius, radius, radius))
    valid = torch.stack([ones[0, 0, radius + dy:radius + dy + h, radius + dx:radius + dx + w] > 0
                         for dx, dy in disp])                                       # K, h, w
    return corr, valid


def neighbour_values(values: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, C, h, w) -> (B, C, K, h, w)``: ``out[:, :, k, i, j] = values[:, :, i + dy_k, j + dx_k]`` (0 outside)."""
    b, c, h, w = values.shape
    patches = F.unfold(values, kernel_size=2 * radius + 1, padding=radius)          # B, C*K, h*w
    return rearrange(patches, "b (c k) (h w) -> b c k h w", c=c, h=h, w=w)


def soft_targets(matches: torch.Tensor, radius: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft targets around the true match, and the nearest displacement.

    ``matches (B, h, w, 2)`` (x, y) in cell units of the reference map -> ``target (B, K, h, w)``
    (unnormalised; renormalised after masking) and ``nearest (B, h, w)`` long index into K.
    """
    b, h, w, _ = matches.shape
    disp = window_displacements(radius, matches.device).to(matches.dtype)               # K, 2
    ys, xs = torch.meshgrid(torch.arange(h, device=matches.device, dtype=matches.dtype),
                            torch.arange(w, device=matches.device, dtype=matches.dtype), indexing="ij")
    offset = matches - torch.stack([xs, ys], dim=-1)                                      # B, h, w, 2: m(p) - p
    dist2 = ((disp[:, None, None, None, :] - offset[None]) ** 2).sum(-1)                 # K, B, h, w
    target = torch.exp(-dist2 / (2 * sigma ** 2)).permute(1, 0, 2, 3)                      # B, K, h, w
    return target, dist2.argmin(dim=0)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                       used: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """``-sum_k t_k log softmax_k(logits)`` averaged over ``used (B, h, w)`` cells.

    ``logits, target (B, K, h, w)``; ``valid (K, h, w)`` displacements take part in both the
    softmax and the (renormalised) target.
    """
    logits = logits.masked_fill(~valid, float("-inf"))
    target = target * valid
    target = target / target.sum(1, keepdim=True).clamp_min(1e-12)
    log_p = torch.log_softmax(logits, dim=1).masked_fill(~valid, 0.0)
    ce = -(target * log_p).sum(1)                                                           # B, h, w
    entropy = -(target * torch.log(target.clamp_min(1e-12))).sum(1)
    count = used.sum().clamp_min(1)
    loss = (ce * used).sum() / count
    kl = float(((ce - entropy) * used).sum().detach() / count)
    return loss, {"warp_kl": kl}


class GradientReversal(torch.autograd.Function):
    """Identity forward; ``-scale * grad`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


class FinePixelLoss(nn.Module):
    """``(frames (B, T, 3, H, W), encoder) -> (loss, diagnostics)`` (module docstring).

    Args:
        radius: local window half-size R in feature cells (window (2R+1)^2).
        temperature: tau of the correlation softmaxes.
        sigma: width of the soft targets, in feature cells.
        rec_weight, domain_weight: weights of the reconstruction and domain terms.
        layer: ResNet stage whose features are trained (None: the encoder's output).
        warp_kinds: the warp families drawn from (uniformly).
        reversal: gradient-reversal strength lambda of the domain term.
    """

    needs_frames = True  # the training loop passes the clip and the encoder, not walk nodes

    def __init__(self, radius: int = 6, temperature: float = 0.07, sigma: float = 0.5, rec_weight: float = 1.0,
                 domain_weight: float = 0.0, layer: Optional[str] = "layer3",
                 warp_kinds: Sequence[str] = WARP_KINDS, reversal: float = 1.0):
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        if temperature <= 0 or sigma <= 0:
            raise ValueError(f"temperature and sigma must be positive, got {temperature}, {sigma}")
        unknown = [k for k in warp_kinds if k not in WARP_KINDS]
        if unknown or not warp_kinds:
            raise ValueError(f"warp_kinds must be a non-empty subset of {WARP_KINDS}, got {list(warp_kinds)}")
        self.radius, self.temperature, self.sigma = radius, temperature, sigma
        self.rec_weight, self.domain_weight, self.layer = rec_weight, domain_weight, layer
        self.warp_kinds, self.reversal = tuple(warp_kinds), reversal
        k = (2 * radius + 1) ** 2
        self.domain_classifier = (nn.Sequential(nn.Linear(k, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))
                                  if domain_weight > 0 else None)

    def make_pairs(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                   ) -> tuple[torch.Tensor, list[Warp], torch.Tensor]:
        """Warp each of ``images (B, 3, H, W)`` by a random warp:
        ``(warped (B, 3, H, W), warps, in_view bool (B, H, W))``."""
        height, width = images.shape[-2:]
        warped, warps, in_view = [], [], []
        for image in images:
            kind = self.warp_kinds[int(torch.randint(len(self.warp_kinds), (1,), generator=generator))]
            warps.append(random_warp(height, width, kind, generator=generator))
            image_warped, view = warp_image(image, warps[-1])
            warped.append(image_warped)
            in_view.append(view)
        return torch.stack(warped), warps, torch.stack(in_view)

    @staticmethod
    def cell_matches(warps: Sequence[Warp], height: int, width: int, stride: int, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matches of the source cells in cell units of the warped map, ``(B, h, w, 2)``, and
        their visibility ``bool (B, h, w)`` (warps work in integer-centre pixels, :mod:`corr.geometry`)."""
        found = [source_matches(warp, height, width, stride) for warp in warps]
        offset = to_integer_centres(cell_centre_offset(stride))                              # (s - 1) / 2
        matches = torch.stack([pixel_to_cell(m, stride, offset) for m, _ in found])
        visible = torch.stack([v for _, v in found])
        return matches.to(device, torch.float32), visible.to(device)

    def used_cells(self, matches: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``bool (B, h, w)``: cells whose match ``matches (B, h, w, 2)`` is visible and inside the window."""
        ys, xs = torch.meshgrid(torch.arange(matches.shape[1], device=matches.device),
                                torch.arange(matches.shape[2], device=matches.device), indexing="ij")
        offset = matches - torch.stack([xs, ys], dim=-1)
        return visible & (offset.abs().amax(-1) <= self.radius - 1)

    def predicted_matches(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, 2)`` cell ``(x, y)`` of the most likely displacement of ``logits (B, K, h, w)``
        (displacements leaving the map excluded)."""
        b, _, h, w = logits.shape
        _, valid = local_correlation(logits[:, :1], logits[:, :1], self.radius)
        best = logits.masked_fill(~valid, float("-inf")).argmax(1)                            # B, h, w
        disp = window_displacements(self.radius, logits.device)[best]                         # B, h, w, 2
        ys, xs = torch.meshgrid(torch.arange(h, device=logits.device), torch.arange(w, device=logits.device),
                                indexing="ij")
        return (disp + torch.stack([xs, ys], dim=-1)).float()

    def warp_term(self, source: torch.Tensor, warped: torch.Tensor, matches: torch.Tensor, visible: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Soft cross-entropy of source features ``(B, C, h, w)`` against the warped ones.
        Returns ``(loss, correlation logits (B, K, h, w), diagnostics)``."""
        corr, valid = local_correlation(source, warped, self.radius)
        logits = corr / self.temperature
        target, nearest = soft_targets(matches, self.radius, self.sigma)
        used = self.used_cells(matches, visible)
        loss, diagnostics = soft_cross_entropy(logits, target, valid, used)
        hits = (logits.masked_fill(~valid, float("-inf")).argmax(1) == nearest) & used
        diagnostics.update(warp_ce=float(loss.detach()), warp_acc=float(hits.sum() / used.sum().clamp_min(1)),
                           warp_used=float(used.float().mean()))
        return loss, logits, diagnostics

    def reconstruction_term(self, query: torch.Tensor, reference: torch.Tensor, query_colour: torch.Tensor,
                            reference_colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smooth-L1 of ``query_colour (B, 3, h, w)`` rebuilt from ``reference_colour`` through
        the local correlation of the features. Returns ``(loss, logits (B, K, h, w))``."""
        corr, valid = local_correlation(query, reference, self.radius)
        logits = corr / self.temperature
        weights = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)            # B, K, h, w
        rebuilt = (weights[:, None] * neighbour_values(reference_colour, self.radius)).sum(2)  # B, 3, h, w
        return F.smooth_l1_loss(rebuilt, query_colour), logits

    def domain_term(self, synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, float]:
        """BCE of the classifier telling warped (0) from real (1) correlation distributions."""
        def samples(logits):
            return rearrange(torch.softmax(logits, dim=1), "b k h w -> (b h w) k")
        x = torch.cat([samples(synthetic), samples(real)])
        labels = torch.cat([torch.zeros(x.shape[0] // 2), torch.ones(x.shape[0] - x.shape[0] // 2)]).to(x)
        scores = self.domain_classifier(GradientReversal.apply(x, self.reversal)).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(scores, labels)
        return loss, float(((scores > 0).float() == labels).float().mean())

    def forward(self, frames: torch.Tensor, encoder: nn.Module, generator: Optional[torch.Generator] = None,
                visuals: bool = False):
        """``(loss, diagnostics)``, or ``(loss, diagnostics, visuals)`` with ``visuals=True``."""
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] < 2:
            raise ValueError(f"frames must be (B, T >= 2, 3, H, W), got shape {tuple(frames.shape)}")
        b, _, _, height, width = frames.shape
        first, second = frames[:, 0], frames[:, 1]                                           # B, 3, H, W
        warped, warps, in_view = self.make_pairs(first, generator)
        feats = F.normalize(encoder_features(encoder, torch.cat([first, warped, second]), self.layer), dim=1)
        f_first, f_warped, f_second = feats.float().split(b)                                  # B, C, h, w each
        h, w = f_first.shape[-2:]
        stride = max(1, round(height / h))                                                    # input pixels per cell
        matches, visible = self.cell_matches(warps, height, width, stride, frames.device)
        warp_loss, warp_logits, diagnostics = self.warp_term(f_first, f_warped, matches, visible)
        colour = F.adaptive_avg_pool2d(torch.cat([first, second]).float(), (h, w))           # 2B, 3, h, w
        rec_loss, real_logits = self.reconstruction_term(f_second, f_first, colour[b:], colour[:b])
        diagnostics["rec"] = float(rec_loss.detach())
        loss = warp_loss + self.rec_weight * rec_loss
        if self.domain_classifier is not None:
            domain_loss, domain_acc = self.domain_term(warp_logits, real_logits)
            diagnostics.update(domain=float(domain_loss.detach()), domain_acc=domain_acc)
            loss = loss + self.domain_weight * domain_loss
        if visuals:
            return loss, diagnostics, {
                "warped": warped.detach(), "in_view": in_view, "matches": matches,
                "used": self.used_cells(matches, visible), "predicted": self.predicted_matches(warp_logits.detach())}
        return loss, diagnostics
