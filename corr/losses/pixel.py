"""Fine-grained pixel correspondence loss (docs/objectives.md, fine-grained pixel; Li et al.,
"Learning Fine-Grained Features for Pixel-wise Video Correspondences", ICCV 2023), as the
authors' mixed tracker computes it.

Input: a normalised RGB clip ``frames (B, T >= 2, 3, H, W)`` and a LAB encoder
(``resnet18-fgvc``) whose trained stage gives ``f (B, C, h, w)`` at stride ``s``. Window:
displacements ``d_k`` with ``|d|_inf <= R``, ``K = (2R+1)^2``, dy-major; a displacement leaving
the map correlates with zeros (logit 0) and carries the value 0.

1. reconstruction (real pair: frame 0 the reference, frame 1 the target): frames in normalised
   LAB, one colour channel ``c`` (a or b) zeroed in both inputs and the rest scaled by 3/2;
   ``a_k(p) = softmax_k(<f_1(p), f_0(p + d_k)> / sqrt(C))`` on raw features;
   ``out(p) = sum_k a_k(p) lab_0[c](s (p + d_k))`` (the reference's channel at every s-th pixel),
   upsampled bilinearly to ``H x W``; ``L_rec = mean smooth_L1(20 out, 20 lab_1[c])``.
2. supervised (synthetic pair ``(J, I)``: ``J`` is frame 0 warped by a random warp, ``I`` frame 0;
   ``flow`` on ``I``'s pixels points into ``J``, ``flow_back`` the other way): a frozen teacher's
   features ``g`` of the undropped ``J`` give the targets
   ``t_k(p) = <g(p + flow(p)/s), g(p + d_k)> / 0.07`` (``g`` L2-normalised over the map's rows,
   as the authors' code does), the student's ``<f_I(p), f_J(p + d_k)> / 0.07`` on channel-dropped
   inputs (``f`` L2-normalised per cell); ``L_sup = mean_p -sum_k softmax(t(p))_k log softmax_k``
   over cells whose flow stays in the window and passes the forward-backward check.
3. domain: a discriminator (gradient reversal, then ``K -> K/2 -> K/4 -> 1``) tells each cell's
   raw correlation of the synthetic pair (label 0) from the real pair's (label 1), BCE.

``loss = rec_weight L_rec + sup_weight L_sup + domain_weight L_dom``. Diagnostics: ``rec``,
``sup``, ``sup_used``, ``sup_acc``, ``domain``, ``domain_acc`` for the terms that are on;
``visuals=True`` also returns ``warped``, ``in_view``, ``matches``, ``predicted`` and ``used``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from corr.encoders import encoder_features, reads_lab
from corr.encoders.lab import normalised_lab as frame_lab
from corr.warps import WARP_KINDS, Warp, pixel_grid, random_warp, warp_image

#: The scale of the reconstruction's smooth-L1 (the authors' ``weight``): both sides times 20.
RECONSTRUCTION_SCALE = 20.0


def window_displacements(radius: int, device=None) -> torch.Tensor:
    """``(K, 2)`` integer ``(dx, dy)`` with ``|dx|, |dy| <= radius``, dy-major (unfold order)."""
    r = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.ravel(), dy.ravel()], dim=-1)


class _LocalCorrelation(torch.autograd.Function):
    """:func:`local_correlation` with a hand-written backward that loops over the displacements
    like the forward, so memory stays ``O(B C h w)`` whatever the window (autograd through the
    loop would keep one gradient map per displacement)."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, reference: torch.Tensor, radius: int) -> torch.Tensor:
        h, w = query.shape[-2:]
        padded = F.pad(reference, (radius, radius, radius, radius))
        shifts = window_displacements(radius).tolist()
        out = query.new_empty(query.shape[0], len(shifts), h, w)
        for k, (dx, dy) in enumerate(shifts):
            out[:, k] = (query * padded[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]).sum(1)
        ctx.save_for_backward(query, reference)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        query, reference = ctx.saved_tensors
        radius, (h, w) = ctx.radius, query.shape[-2:]
        padded = F.pad(reference, (radius, radius, radius, radius))
        grad_query, grad_padded = torch.zeros_like(query), torch.zeros_like(padded)
        for k, (dx, dy) in enumerate(window_displacements(radius).tolist()):
            window = (slice(None), slice(None), slice(radius + dy, radius + dy + h),
                      slice(radius + dx, radius + dx + w))
            g = grad[:, k:k + 1]
            grad_query += g * padded[window]
            grad_padded[window] += g * query
        return grad_query, grad_padded[:, :, radius:radius + h, radius:radius + w], None


def local_correlation(query: torch.Tensor, reference: torch.Tensor, radius: int) -> torch.Tensor:
    """``corr[b, k, i, j] = <query[b, :, i, j], reference[b, :, i + dy_k, j + dx_k]>``, 0 where
    the displacement leaves the map (zero padding). ``(B, C, h, w)`` twice -> ``(B, K, h, w)``."""
    if query.shape != reference.shape or query.ndim != 4:
        raise ValueError(f"query and reference must be (B, C, h, w) alike, got {tuple(query.shape)} "
                         f"and {tuple(reference.shape)}")
    return _LocalCorrelation.apply(query, reference, radius)


def window_valid(height: int, width: int, radius: int, device=None) -> torch.Tensor:
    """``bool (K, h, w)``: displacement k of cell (i, j) stays inside the ``h x w`` map."""
    ones = torch.ones(1, 1, height, width, device=device)
    return local_correlation(ones, ones, radius)[0] > 0


def neighbour_values(values: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, C, h, w) -> (B, C, K, h, w)``: ``out[:, :, k, i, j] = values[:, :, i + dy_k, j + dx_k]`` (0 outside)."""
    b, c, h, w = values.shape
    patches = F.unfold(values, kernel_size=2 * radius + 1, padding=radius)          # B, C*K, h*w
    return rearrange(patches, "b (c k) (h w) -> b c k h w", c=c, h=h, w=w)


def drop_colour_channel(lab: torch.Tensor, channel: int) -> torch.Tensor:
    """Normalised LAB ``(..., 3, H, W)`` with colour ``channel`` (1: a, 2: b) zeroed and all
    channels scaled by 3 / (3 - 1) (a new tensor)."""
    if channel not in (1, 2):
        raise ValueError(f"channel must be 1 (a) or 2 (b), got {channel}")
    keep = torch.ones(3, 1, 1, dtype=lab.dtype, device=lab.device)
    keep[channel] = 0
    return lab * keep * (3 / 2)


def reconstruction_loss(target_features: torch.Tensor, reference_features: torch.Tensor,
                        reference_channel: torch.Tensor, target_channel: torch.Tensor, radius: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Term 1 of the module docstring. ``*_features (B, C, h, w)`` raw; ``reference_channel (B, 1,
    H, W)`` and ``target_channel`` the dropped channel of the undropped frames, ``H = s h``
    (``s`` = H / h). Returns ``(loss, raw correlation (B, K, h, w))``."""
    h, w = target_features.shape[-2:]
    stride = reference_channel.shape[-2] // h
    corr = local_correlation(target_features, reference_features, radius)
    weights = torch.softmax(corr / math.sqrt(target_features.shape[1]), dim=1)        # B, K, h, w
    sampled = reference_channel[:, :, ::stride, ::stride][:, :, :h, :w]               # B, 1, h, w
    rebuilt = (weights[:, None] * neighbour_values(sampled, radius)).sum(2)           # B, 1, h, w
    rebuilt = F.interpolate(rebuilt, size=target_channel.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.smooth_l1_loss(rebuilt * RECONSTRUCTION_SCALE, target_channel * RECONSTRUCTION_SCALE)
    return loss, corr


def warp_by_flow(values: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``values`` sampled at ``p + flow(p)`` as the authors' flow warp does: the position scaled
    by ``2 / (size - 1)`` but sampled with ``align_corners=False``, zeros outside, and pixels
    whose warped all-ones mask is not above 0.9999 set to 0. ``(B, C, H, W)``, ``flow (B, 2, H, W)``
    (x, y) pixels."""
    b, _, height, width = flow.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=flow.device, dtype=flow.dtype),
                            torch.arange(width, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[:, 0]) * 2 / max(width - 1, 1) - 1
    y = (ys + flow[:, 1]) * 2 / max(height - 1, 1) - 1
    grid = torch.stack([x, y], dim=-1)                                                 # B, H, W, 2
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(torch.ones_like(values), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out * (mask > 0.9999)


def forward_backward_visible(flow: torch.Tensor, flow_back: torch.Tensor) -> torch.Tensor:
    """``bool (B, H, W)``: the authors' forward-backward check, with their expressions,

        w = flow_back warped by flow (:func:`warp_by_flow`)
        visible = |flow + w|^2 < 0.01 * sum_xy(2 flow + w^2) + 0.5
    """
    warped = warp_by_flow(flow_back, flow)
    squared_difference = ((flow + warped) ** 2).sum(1)
    scale = (flow * 2 + warped ** 2).sum(1)
    return squared_difference < scale * 0.01 + 0.5


def teacher_targets(teacher_features: torch.Tensor, flow: torch.Tensor, flow_back: torch.Tensor, radius: int,
                    temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Term 2's targets: ``(logits (B, K, h, w), used bool (B, h, w))``.

    ``teacher_features (B, C, h, w)`` of the reference frame (raw; L2-normalised here over the
    rows, dim 2, as the authors' code does), ``flow``/``flow_back (B, 2, H, W)`` pixels with
    ``H = s h``. Cell ``p`` reads the flow at pixel ``s p``, divided by ``s``: ``u(p)``;
    ``logits_k(p) = <g(p + u(p)), g(p + d_k)> / temperature`` with ``g(p + u)`` bilinear
    (align-corners cell coordinates, zeros outside); ``used`` where ``|u|_inf <= R`` and the
    pixel passes :func:`forward_backward_visible`.
    """
    h, w = teacher_features.shape[-2:]
    stride = flow.shape[-2] // h
    g = F.normalize(teacher_features, dim=2)
    visible = forward_backward_visible(flow, flow_back)[:, ::stride, ::stride][:, :h, :w]
    cell_flow = flow[:, :, ::stride, ::stride][:, :, :h, :w] / stride                    # B, 2, h, w
    used = visible & (cell_flow.abs() <= radius).all(1)
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = (xs + cell_flow[:, 0]) * 2 / max(w - 1, 1) - 1
    y = (ys + cell_flow[:, 1]) * 2 / max(h - 1, 1) - 1
    at_match = F.grid_sample(g, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="zeros",
                             align_corners=True)                                            # B, C, h, w
    return local_correlation(at_match, g, radius) / temperature, used


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """``sum_p -sum_k softmax(target(p))_k log softmax(logits(p))_k / #used`` over ``used (B, h, w)``
    cells; ``logits, target_logits (B, K, h, w)``. No used cell: 0."""
    log_p = torch.log_softmax(rearrange(logits, "b k h w -> b h w k")[used], dim=-1)
    target = torch.softmax(rearrange(target_logits, "b k h w -> b h w k")[used], dim=-1)
    return -(target * log_p).sum() / max(int(used.sum()), 1)


class GradientReversal(torch.autograd.Function):
    """Identity forward; ``-scale * grad`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


class CorrelationDiscriminator(nn.Module):
    """The authors' discriminator: gradient reversal (strength ``reversal``), then
    ``Linear(K, K//2) ReLU Linear(K//2, K//4) ReLU Linear(K//4, 1)`` per cell.
    ``(B, K, h, w) -> (B h w, 1)`` logits, cells in ``(b, i, j)`` order."""

    def __init__(self, window: int, reversal: float = 1.0):
        super().__init__()
        self.reversal = reversal
        self.layers = nn.Sequential(nn.Linear(window, window // 2), nn.ReLU(), nn.Linear(window // 2, window // 4),
                                    nn.ReLU(), nn.Linear(window // 4, 1))

    def forward(self, corr: torch.Tensor) -> torch.Tensor:
        return self.layers(GradientReversal.apply(rearrange(corr, "b k h w -> (b h w) k"), self.reversal))


def domain_loss(discriminator: nn.Module, synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, float]:
    """BCE of ``discriminator`` on raw correlations ``(B, K, h, w)``: synthetic cells label 0, real 1
    (synthetic first). Returns ``(loss, accuracy)``."""
    scores = torch.cat([discriminator(synthetic), discriminator(real)])
    labels = torch.cat([torch.zeros(scores.shape[0] - real[:, 0].numel(), 1),
                        torch.ones(real[:, 0].numel(), 1)]).to(scores)
    loss = F.binary_cross_entropy_with_logits(scores, labels)
    return loss, float(((scores > 0).float() == labels).float().mean())


def warp_flows(warps: Sequence[Warp], height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense flows of the synthetic pairs ``(J, I)`` (``J`` = ``I`` warped): ``flow (B, 2, H, W)``
    on ``I``'s pixels into ``J`` (``to_warped(q) - q``) and ``flow_back`` on ``J``'s pixels into
    ``I`` (``to_source(p) - p``), in integer-centre pixels (pixel (i, j) at (j, i))."""
    grid = pixel_grid(height, width)                                                      # H, W, 2
    flow = torch.stack([warp.to_warped(grid) - grid for warp in warps])
    back = torch.stack([warp.to_source(grid) - grid for warp in warps])
    return (rearrange(flow, "b h w c -> b c h w").to(device, torch.float32),
            rearrange(back, "b h w c -> b c h w").to(device, torch.float32))


class FinePixelLoss(nn.Module):
    """``(frames (B, T, 3, H, W), encoder) -> (loss, diagnostics)`` (module docstring).

    Args:
        radius: window half-size R in feature cells (window (2R+1)^2).
        rec_weight, sup_weight, domain_weight: weights of the three terms (0: the term is off).
        temperature: tau of the supervised term (targets and student).
        layer: ResNet stage whose features are trained (None: the encoder's output).
        teacher: frozen LAB encoder giving the supervised targets (its output stage); None: the
            student's own features, detached. Not a submodule: never trained nor saved.
        warp_kinds: the warp families the synthetic pairs are drawn from (uniformly).
        reversal: gradient-reversal strength of the domain term.
    """

    needs_frames = True  # the training loop passes the clip and the encoder, not walk nodes

    def __init__(self, radius: int = 24, rec_weight: float = 1.0, sup_weight: float = 1.0, domain_weight: float = 1.0,
                 temperature: float = 0.07, layer: Optional[str] = "layer3", teacher: Optional[nn.Module] = None,
                 warp_kinds: Sequence[str] = WARP_KINDS, reversal: float = 1.0):
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        if temperature <= 0 or min(rec_weight, sup_weight, domain_weight) < 0:
            raise ValueError(f"temperature must be positive and the weights >= 0, got {temperature}, "
                             f"{rec_weight}, {sup_weight}, {domain_weight}")
        unknown = [k for k in warp_kinds if k not in WARP_KINDS]
        if unknown or not warp_kinds:
            raise ValueError(f"warp_kinds must be a non-empty subset of {WARP_KINDS}, got {list(warp_kinds)}")
        self.radius, self.temperature, self.layer = radius, temperature, layer
        self.rec_weight, self.sup_weight, self.domain_weight = rec_weight, sup_weight, domain_weight
        self.warp_kinds = tuple(warp_kinds)
        self.teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else ()
        self.domain_classifier = (CorrelationDiscriminator((2 * radius + 1) ** 2, reversal)
                                  if domain_weight > 0 else None)

    def _apply(self, fn, *args, **kwargs):
        """Moves and casts reach the teacher too (it is not a submodule)."""
        for teacher in self.teacher:
            teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

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

    def features(self, encoder: nn.Module, lab: torch.Tensor) -> torch.Tensor:
        """The trained stage of ``encoder`` on normalised LAB ``(N, 3, H, W)``: ``(N, C, h, w)`` float32."""
        return encoder_features(encoder, lab, self.layer, prepared=True).float()

    def predicted_matches(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, 2)`` cell ``(x, y)`` of the most likely in-map displacement of ``logits (B, K, h, w)``."""
        b, _, h, w = logits.shape
        valid = window_valid(h, w, self.radius, logits.device)
        best = logits.masked_fill(~valid, float("-inf")).argmax(1)                            # B, h, w
        disp = window_displacements(self.radius, logits.device)[best]                         # B, h, w, 2
        ys, xs = torch.meshgrid(torch.arange(h, device=logits.device), torch.arange(w, device=logits.device),
                                indexing="ij")
        return (disp + torch.stack([xs, ys], dim=-1)).float()

    def forward(self, frames: torch.Tensor, encoder: nn.Module, generator: Optional[torch.Generator] = None,
                visuals: bool = False, flow_pairs: Optional[dict[str, torch.Tensor]] = None):
        """``(loss, diagnostics)``, or ``(loss, diagnostics, visuals)`` with ``visuals=True``.

        ``flow_pairs`` (FlyingThings3D, :class:`datasets.flow_files.FlowPairCrops` batched:
        ``frames (B, 2, 3, H, W)`` normalised RGB ``(reference, target)``, ``flow`` and
        ``flow_back (B, 2, H, W)``) replace the warped pairs: ``J`` = the reference, ``I`` = the
        target, with their own flows (the published data of the supervised and domain terms).
        """
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] < 2:
            raise ValueError(f"frames must be (B, T >= 2, 3, H, W), got shape {tuple(frames.shape)}")
        if not reads_lab(encoder):
            raise ValueError(f"the pixel loss feeds LAB frames: it needs a LAB encoder (resnet18-fgvc), "
                             f"got {type(encoder).__name__}")
        b, _, _, height, width = frames.shape
        loss, diagnostics, real_corr = frames.new_zeros(()), {}, None
        if self.rec_weight > 0 or self.domain_classifier is not None:
            real = normalised_lab(frames[:, :2].float())                                        # B, 2, 3, H, W
            channel = 1 + int(torch.randint(2, (1,), generator=generator))
            f_ref, f_tar = self.features(encoder, rearrange(drop_colour_channel(real, channel),
                                                            "b t c h w -> (t b) c h w")).split(b)
            rec, real_corr = reconstruction_loss(f_tar, f_ref, real[:, 0, channel:channel + 1],
                                                 real[:, 1, channel:channel + 1], self.radius)
            loss = loss + self.rec_weight * rec
            diagnostics["rec"] = float(rec.detach())
        if self.sup_weight == 0 and self.domain_classifier is None:
            return (loss, diagnostics, {}) if visuals else (loss, diagnostics)

        if flow_pairs is None:
            source = frames[:, 0].float()                                                      # I
            warped, warps, in_view = self.make_pairs(source, generator)                        # J
            flow, flow_back = warp_flows(warps, height, width, frames.device)
        else:
            warped, source = flow_pairs["frames"][:, 0].float(), flow_pairs["frames"][:, 1].float()
            flow, flow_back = flow_pairs["flow"].float(), flow_pairs["flow_back"].float()
            height, width = source.shape[-2:]
            in_view = torch.ones(source.shape[0], height, width, dtype=torch.bool, device=source.device)
        synthetic = normalised_lab(torch.stack([warped, source], dim=1))                       # B, 2, 3, H, W: (J, I)
        channel = 1 + int(torch.randint(2, (1,), generator=generator))
        s_ref, s_tar = self.features(encoder, rearrange(drop_colour_channel(synthetic, channel),
                                                        "b t c h w -> (t b) c h w")).split(b)
        student = local_correlation(F.normalize(s_tar, dim=1), F.normalize(s_ref, dim=1), self.radius)
        student = student / self.temperature
        with torch.no_grad():
            teacher = self.teacher[0] if self.teacher else encoder
            target, used = teacher_targets(self.features(teacher, synthetic[:, 0]).detach(), flow, flow_back,
                                           self.radius, self.temperature)
        if self.sup_weight > 0:
            sup = soft_cross_entropy(student, target, used)
            loss = loss + self.sup_weight * sup
            hits = (student.argmax(1) == target.argmax(1)) & used
            diagnostics.update(sup=float(sup.detach()), sup_used=float(used.float().mean()),
                               sup_acc=float(hits.sum() / used.sum().clamp_min(1)))
        if self.domain_classifier is not None:
            domain, accuracy = domain_loss(self.domain_classifier, local_correlation(s_tar, s_ref, self.radius),
                                           real_corr)
            loss = loss + self.domain_weight * domain
            diagnostics.update(domain=float(domain.detach()), domain_acc=accuracy)
        if visuals:
            h, w = student.shape[-2:]
            ys, xs = torch.meshgrid(torch.arange(h, device=flow.device), torch.arange(w, device=flow.device),
                                    indexing="ij")
            cell_flow = flow[:, :, ::height // h, ::width // w][:, :, :h, :w] / (height // h)
            matches = rearrange(cell_flow, "b c h w -> b h w c") + torch.stack([xs, ys], dim=-1)
            return loss, diagnostics, {"warped": warped.detach(), "in_view": in_view, "matches": matches,
                                       "used": used, "predicted": self.predicted_matches(student.detach())}
        return loss, diagnostics


def normalised_lab(frames: torch.Tensor) -> torch.Tensor:
    """Normalised RGB clips ``(B, T, 3, H, W)`` -> the LAB encoders' normalised LAB, same shape
    (:func:`corr.encoders.lab.normalised_lab`: OpenCV's conversion of the 8-bit frames, as the
    authors' loader computes it)."""
    b = frames.shape[0]
    return rearrange(frame_lab(rearrange(frames, "b t c h w -> (b t) c h w")), "(b t) c h w -> b t c h w", b=b)
