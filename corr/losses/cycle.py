"""Cycle-consistency of time (docs/objectives.md, TimeCycle; Wang, Jabri, Efros, CVPR 2019).

Input: a normalised clip ``frames (B, T, 3, H, W)`` and the encoder. Frames ``0 .. N-1`` are the
base frames (oldest first), frame ``N`` the target; with ``motion_frame=True`` a last frame only
serves patch placement (``T = N + 2``), else ``T = N + 1``. Features
``x = normalize(relu(conv1x1(encoder_layer3(image))))`` (512-d, stride 8); the patch is a crop
of the target frame cut by ``theta_0`` (placed on high-motion positions, rotated) and encoded on
its own. Tracker, for a query ``q (B, C, p, p)`` and a frame ``x (B, C, h, w)``:

    A = softmax over frame cells of <x(i, j), q(u, v)> / 512^-0.5            (B, h w, p, p)
    (tx, ty, angle) = linear(lrelu(conv(lrelu(conv(A))))),  theta = [[s cos a, -s sin a, tx], [s sin a, s cos a, ty]]

``theta`` maps the patch's normalised grid to the frame's. Crops follow the authors' two
conventions: the image patch is cut on the plain affine grid (``affine_grid`` and ``grid_sample``
with ``align_corners=True``, the semantics of the PyTorch they used), feature crops on
``g(u, v) = A (x_v, y_u) + (227 / 210) t`` (``theta = [A | t]``, ``x, y`` = ``linspace(-1, 1, n)``,
sampled with ``align_corners=True``, zero padding; :func:`feature_crop_grid`). With ``d`` the
mean squared distance of a 20x20 grid of points mapped by two transforms: ``long`` (cycles
back through the last ``c <= 4`` base frames and into the target), ``skip`` (to each base frame
and straight back) and ``sim`` (minus the weak inlier score of the patch in each base frame,
:meth:`CycleConsistencyLoss.inlier`, or ``1 - cos`` with ``similarity="cosine"``) give
``loss = 0.02 long + 1.0 sim + 0.1 skip`` (the authors' ``0.2 lamda``, ``1``, ``lamda`` with
``lamda = 0.1``). ``forward(..., visuals=True)`` also returns the detached transforms
(``theta0``, ``skip``, ``skip_back``, ``long``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from corr.encoders import encoder_features

WEIGHTS = {"long": 0.02, "sim": 1.0, "skip": 0.1}
SIMILARITIES = ("inlier", "cosine")
#: The authors' feature-crop offset factor: the translation of a feature crop is scaled by it.
OFFSET_FACTOR = 227 / 210
#: Added to every entry of the warped inlier mask before its sum (the authors' normalisation).
INLIER_EPS = 1e-5


def grid_points(n: int = 20, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(n*n, 3)`` homogeneous points of a regular grid on ``[-1, 1]^2``."""
    lin = torch.linspace(-1, 1, n, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([gx.ravel(), gy.ravel(), torch.ones(n * n, device=device, dtype=dtype)], dim=-1)


def grid_mse(theta: torch.Tensor, target: torch.Tensor, n: int = 20) -> torch.Tensor:
    """``mean_{b, points} |theta G - target G|^2`` for ``theta, target (B, 2, 3)``."""
    points = grid_points(n, theta.device, theta.dtype)                                   # P, 3
    diff = torch.einsum("bij,pj->bpi", theta - target, points)                          # B, P, 2
    return (diff ** 2).sum(-1).mean()


def affine_from_params(params: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """``(B, 3)`` (tx, ty, angle) -> ``(B, 2, 3)`` with fixed scale ``(sx, sy)``."""
    tx, ty, angle = params.unbind(-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = scale
    return torch.stack([torch.stack([sx * cos, -sx * sin, tx], -1),
                        torch.stack([sy * sin, sy * cos, ty], -1)], dim=1)


def feature_crop_grid(theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The authors' feature-crop sampling grid ``(B, p, q, 2)`` (x, y) for ``theta (B, 2, 3)``:
    ``g(u, v) = A (x_v, y_u) + OFFSET_FACTOR * t`` with ``x = linspace(-1, 1, q)``, ``y = linspace(-1, 1, p)``
    (to be sampled with ``align_corners=True``)."""
    p, q = size
    y = torch.linspace(-1, 1, p, device=theta.device, dtype=theta.dtype)
    x = torch.linspace(-1, 1, q, device=theta.device, dtype=theta.dtype)
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    linear = torch.einsum("bij,uvj->buvi", theta[:, :, :2], torch.stack([gx, gy], dim=-1))   # B, p, q, 2
    return linear + OFFSET_FACTOR * theta[:, None, None, :, 2]


def crop(features: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear feature crop ``(B, C, h, w) -> (B, C, *size)`` of the region ``theta (B, 2, 3)``
    (:func:`feature_crop_grid`)."""
    grid = feature_crop_grid(theta.to(features.dtype), size)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def image_crop(images: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear image patch ``(B, 3, H, W) -> (B, 3, *size)`` on the plain affine grid of ``theta``
    (``align_corners=True``, zero padding): the authors' patch of the target frame."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], *size], align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def patch_affinity(query: torch.Tensor, frame: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax over frame positions of <frame(i, j), query(u, v)> / scale``.

    ``query (B, C, p, q)``, ``frame (B, C, h, w)`` -> ``(B, h*w, p, q)`` (frame positions as channels).
    """
    logits = torch.einsum("bchw,bcuv->bhwuv", frame, query) / scale
    return logits.flatten(1, 2).softmax(dim=1)


class Tracker(nn.Module):
    """Affinity ``(B, h*w, p, q)`` -> ``(B, 3)`` (tx, ty, angle): two convs + linear (TimeCycle)."""

    def __init__(self, frame_cells: int, patch_size: tuple[int, int]):
        super().__init__()
        kernel = 4 if min(patch_size) >= 7 else 1
        self.convs = nn.Sequential(
            nn.Conv2d(frame_cells, 128, kernel, bias=False), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 64, kernel, bias=False), nn.LeakyReLU(0.1, inplace=True))
        out = [s - 2 * (kernel - 1) for s in patch_size]
        self.linear = nn.Linear(64 * out[0] * out[1], 3)
        for conv in self.convs:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.linear.weight, 0, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(affinity).flatten(1))


class CycleConsistencyLoss(nn.Module):
    """``(frames (B, T, 3, H, W), encoder) -> (loss, diagnostics)`` (module docstring).

    Args:
        in_channels: channels of the encoder's ``layer`` features (1024 for ResNet-50).
        frame_size: ``(h, w)`` feature cells of a frame (30x30 for 240 px at stride 8).
        patch_fraction: patch side / frame side (1/3).
        dim: projection channels (512); the affinity scale is ``dim ** -0.5``.
        max_cycle: longest cycle (4).
        layer: encoder stage used (``layer3``; None: the encoder's output).
        motion_patch: place the patch among the highest-motion positions.
        motion_frame: the clip's last frame is only the motion reference (published layout).
        positions, top_k, max_rotation: patch placement (module docstring; 7, 10, pi/4).
        similarity: ``"inlier"`` (the authors' weak inlier score) or ``"cosine"`` (module docstring).
    """

    needs_frames = True  # the training loop passes the clip and the encoder, not walk nodes

    def __init__(self, in_channels: int, frame_size: tuple[int, int], patch_fraction: float = 1 / 3,
                 dim: int = 512, max_cycle: int = 4, layer: Optional[str] = "layer3", motion_patch: bool = True,
                 weights: Optional[dict[str, float]] = None, motion_frame: bool = False, positions: int = 7,
                 top_k: int = 10, max_rotation: float = math.pi / 4, similarity: str = "inlier"):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.similarity = similarity
        if positions < 1 or top_k < 1 or max_rotation < 0:
            raise ValueError(f"need positions >= 1, top_k >= 1, max_rotation >= 0; got {positions}, {top_k}, "
                             f"{max_rotation}")
        h, w = frame_size
        self.frame_size = (h, w)
        self.patch_size = (max(1, round(h * patch_fraction)), max(1, round(w * patch_fraction)))
        self.scale = (self.patch_size[1] / w, self.patch_size[0] / h)                # (sx, sy) in normalised units
        self.temperature = dim ** -0.5
        self.max_cycle, self.layer, self.motion_patch = max_cycle, layer, motion_patch
        self.motion_frame, self.positions, self.top_k, self.max_rotation = motion_frame, positions, top_k, max_rotation
        self.weights = dict(WEIGHTS if weights is None else weights)
        self.project = nn.Conv2d(in_channels, dim, 1, bias=False)
        nn.init.kaiming_normal_(self.project.weight, mode="fan_out", nonlinearity="relu")
        self.tracker = Tracker(h * w, self.patch_size)

    # ------------------------------------------------------------------ pieces

    def embed(self, encoder: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` -> ``(relu features, their L2-normalised copy)``, each ``(N, dim, h', w')``."""
        raw = F.relu(self.project(encoder_features(encoder, images, self.layer)))
        return raw, F.normalize(raw, dim=1)

    def track(self, query: torch.Tensor, frame_norm: torch.Tensor, frame_raw: torch.Tensor,
              with_affinity: bool = False):
        """Locate ``query (B, C, p, q)`` in a frame: ``(theta (B, 2, 3), tracked raw patch (B, C, p, q))``,
        plus the affinity ``(B, h*w, p, q)`` with ``with_affinity=True``."""
        affinity = patch_affinity(query, frame_norm, self.temperature)
        theta = affine_from_params(self.tracker(affinity), self.scale)
        tracked = crop(frame_raw, theta, self.patch_size)
        return (theta, tracked, affinity) if with_affinity else (theta, tracked)

    def inlier_mask(self, theta: torch.Tensor) -> torch.Tensor:
        """The warped identity mask ``M (B, h*w, p, q)`` for ``theta (B, 2, 3)``, frame cells row-major:
        ``M[(i, j), u, v] = max(0, 1 - |X - j|) max(0, 1 - |Y - i|)``, the bilinear weight of cell
        ``(i, j)`` at the point ``g(u, v)`` of :func:`feature_crop_grid` in cells (``X = (g_x + 1)(w - 1) / 2``,
        ``Y = (g_y + 1)(h - 1) / 2``): the authors' undilated mask (``dilation_filter=0``,
        ``use_conv_filter=False``) sampled like their ``grid_sample``, at most 4 cells per patch cell."""
        (h, w), (p, q) = self.frame_size, self.patch_size
        grid = feature_crop_grid(theta, (p, q))                                             # B, p, q, 2
        x = (grid[..., 0] + 1) * (w - 1) / 2
        y = (grid[..., 1] + 1) * (h - 1) / 2
        mx = (1 - (x[..., None] - torch.arange(w, device=theta.device, dtype=theta.dtype)).abs()).clamp_min(0)
        my = (1 - (y[..., None] - torch.arange(h, device=theta.device, dtype=theta.dtype)).abs()).clamp_min(0)
        return torch.einsum("buvi,buvj->bijuv", my, mx).flatten(1, 2)                     # B, h*w, p, q

    def inlier(self, affinity: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The authors' weak inlier score ``(B,)`` of ``affinity (B, h*w, p, q)`` (frame cells row-major)
        under ``theta (B, 2, 3)``: ``sum(M * affinity) / sum(M + 1e-5)``, the sums over all ``h w p q``
        entries (the 1e-5 is added to every entry), ``M`` = :meth:`inlier_mask`. The loss term is its negative."""
        mask = self.inlier_mask(theta.float())
        total = (mask + INLIER_EPS).flatten(1).sum(1)
        return (mask * affinity.float()).flatten(1).sum(1) / total

    def candidate_centres(self, device=None) -> torch.Tensor:
        """``(n*n, 2)`` normalised patch centres ``(cx, cy)`` of the placement lattice, row-major (y, x)."""
        n, (sx, sy) = self.positions, self.scale
        loc = torch.linspace(0, 1, n, device=device) if n > 1 else torch.full((1,), 0.5, device=device)
        ly, lx = torch.meshgrid(loc, loc, indexing="ij")
        return torch.stack([(2 * lx.ravel() - 1) * (1 - sx), (2 * ly.ravel() - 1) * (1 - sy)], dim=-1)

    def motion_scores(self, target: torch.Tensor, reference: torch.Tensor, samples: int = 8) -> torch.Tensor:
        """``(B, n*n)`` mean ``|target - reference|`` inside each candidate window (images ``(B, 3, H, W)``),
        averaged over ``samples x samples`` bilinear samples of the (unrotated) window."""
        b = target.shape[0]
        motion = (target.float() - reference.float()).abs().mean(1, keepdim=True)          # B, 1, H, W
        centres = self.candidate_centres(target.device)                                    # P, 2
        params = torch.cat([centres, torch.zeros_like(centres[:, :1])], dim=-1)             # P, 3
        grid = F.affine_grid(affine_from_params(params, self.scale), [len(centres), 1, samples, samples],
                             align_corners=False)                                           # P, s, s, 2
        grid = grid.reshape(1, -1, samples, 2).expand(b, -1, -1, -1)                       # B, P*s, s, 2
        values = F.grid_sample(motion, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return values.reshape(b, len(centres), samples * samples).mean(-1)                 # B, P

    def patch_transform(self, target: torch.Tensor, reference: Optional[torch.Tensor],
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``theta_0 (B, 2, 3)``: where (and at which angle) the patch is cut from ``target (B, 3, H, W)``;
        ``reference (B, 3, H, W)`` is the frame whose difference to the target is the motion."""
        b, n = target.shape[0], self.positions
        if self.motion_patch and reference is not None:
            scores = self.motion_scores(target, reference)                                 # B, n*n
            top = min(self.top_k, n * n)
            best = scores.topk(top, dim=1).indices.cpu()                                   # B, top
            pick = torch.randint(top, (b,), generator=generator)
            index = best.gather(1, pick[:, None])[:, 0]
        else:
            index = torch.randint(n * n, (b,), generator=generator)
        row, col = (index // n).double(), (index % n).double()
        step = 1.0 / (n - 1) if n > 1 else 0.0
        jitter = (torch.rand(b, 2, generator=generator, dtype=torch.float64) - 0.5) * step
        lx = (col * step + jitter[:, 0]).clamp(0, 1) if n > 1 else torch.full((b,), 0.5, dtype=torch.float64)
        ly = (row * step + jitter[:, 1]).clamp(0, 1) if n > 1 else torch.full((b,), 0.5, dtype=torch.float64)
        angle = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * self.max_rotation
        sx, sy = self.scale
        params = torch.stack([(2 * lx - 1) * (1 - sx), (2 * ly - 1) * (1 - sy), angle], dim=-1)
        return affine_from_params(params.to(target.device, torch.float32), self.scale)

    def cycle_terms(self, base_norm: torch.Tensor, base_raw: torch.Tensor, target_norm: torch.Tensor,
                    target_raw: torch.Tensor, patch_norm: torch.Tensor, theta0: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, torch.Tensor]]:
        """The three terms from features: ``base_* (B, N, C, h, w)`` (N base frames, oldest
        first), ``target_* (B, C, h, w)``, ``patch_norm (B, C, p, q)``, ``theta0 (B, 2, 3)``.

        Returns ``(terms, diagnostics, transforms)``; ``transforms`` holds the detached
        ``skip``, ``skip_back`` ``(B, N, 2, 3)`` and ``long`` ``(B, C, 2, 3)`` (module docstring)."""
        n = base_norm.shape[1]
        diagnostics: dict[str, float] = {}
        # long cycles: back through the last c base frames, forward to the newest, into the target
        long_terms, long_thetas = [], []
        for c in range(1, min(self.max_cycle, n) + 1):
            query = patch_norm
            order = list(range(n - 1, n - 1 - c, -1)) + list(range(n - c + 1, n))
            for t in order:
                _, tracked = self.track(query, base_norm[:, t], base_raw[:, t])
                query = F.normalize(tracked, dim=1)
            theta_c, _ = self.track(query, target_norm, target_raw)
            long_terms.append(grid_mse(theta_c, theta0))
            long_thetas.append(theta_c.detach())
            diagnostics[f"long/c={c}"] = float(long_terms[-1].detach())
        # skip cycles and similarity: target -> base frame t directly, and directly back
        skip_terms, sim_terms, inliers, skip_thetas, back_thetas = [], [], [], [], []
        for t in range(n):
            theta_t, tracked, affinity = self.track(patch_norm, base_norm[:, t], base_raw[:, t], with_affinity=True)
            tracked_norm = F.normalize(tracked, dim=1)
            inliers.append(self.inlier(affinity, theta_t).mean())
            if self.similarity == "inlier":
                sim_terms.append(-inliers[-1])
            else:
                sim_terms.append(1 - (tracked_norm * patch_norm).sum(1).mean())
            theta_back, _ = self.track(tracked_norm, target_norm, target_raw)
            skip_terms.append(grid_mse(theta_back, theta0))
            skip_thetas.append(theta_t.detach())
            back_thetas.append(theta_back.detach())
        terms = {"long": torch.stack(long_terms).mean(), "skip": torch.stack(skip_terms).mean(),
                 "sim": torch.stack(sim_terms).mean()}
        diagnostics.update({k: float(v.detach()) for k, v in terms.items()})
        diagnostics["inlier"] = float(torch.stack(inliers).mean().detach())
        transforms = {"skip": torch.stack(skip_thetas, 1), "skip_back": torch.stack(back_thetas, 1),
                      "long": torch.stack(long_thetas, 1)}
        return terms, diagnostics, transforms

    def forward(self, frames: torch.Tensor, encoder: nn.Module, generator: Optional[torch.Generator] = None,
                visuals: bool = False):
        """``(loss, diagnostics)``, or ``(loss, diagnostics, transforms)`` with ``visuals=True``."""
        least = 3 if self.motion_frame else 2
        if frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] < least:
            raise ValueError(f"frames must be (B, T >= {least}, 3, H, W), got shape {tuple(frames.shape)}")
        if self.motion_frame:
            reference, frames = frames[:, -1], frames[:, :-1]                            # motion reference only
        else:
            reference = frames[:, -2]
        b, t, _, height, width = frames.shape
        theta0 = self.patch_transform(frames[:, -1], reference, generator)                 # B, 2, 3
        p, q = self.patch_size
        patch_px = (round(height * p / self.frame_size[0]), round(width * q / self.frame_size[1]))
        patch_image = image_crop(frames[:, -1], theta0, patch_px)                          # B, 3, P, Q
        raw, norm = self.embed(encoder, frames.flatten(0, 1))                              # BT, C, h, w
        if tuple(raw.shape[-2:]) != self.frame_size:
            raise ValueError(f"frames of {height}x{width} px give {tuple(raw.shape[-2:])} feature cells, but the "
                             f"loss was built for {self.frame_size}; build it for this frame size")
        _, patch_norm = self.embed(encoder, patch_image)
        if tuple(patch_norm.shape[-2:]) != self.patch_size:
            patch_norm = F.normalize(F.adaptive_avg_pool2d(patch_norm, self.patch_size), dim=1)
        raw, norm = raw.unflatten(0, (b, t)), norm.unflatten(0, (b, t))                     # B, T, C, h, w
        terms, diagnostics, transforms = self.cycle_terms(norm[:, :-1], raw[:, :-1], norm[:, -1], raw[:, -1],
                                                          patch_norm, theta0)
        loss = sum(self.weights[k] * v for k, v in terms.items())
        if visuals:
            return loss, diagnostics, {"theta0": theta0.detach(), **transforms}
        return loss, diagnostics
