"""Random geometric warps with exact dense correspondence (homography, affine, thin-plate), the
synthetic supervision of the fine-grained pixel loss (docs/objectives.md, fine-grained pixel).

Coordinates: ``(x, y)`` pixels of an ``H x W`` image in integer-centre coordinates, pixel
``(row i, column j)`` centred at ``(j, i)``: the coordinates of :mod:`corr.geometry` minus 0.5
(:func:`corr.geometry.to_integer_centres`); the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
A warp relates a *source* image ``I`` and the *warped* image ``J`` it produces:

    J(p) = I(to_source(p)),   to_warped = to_source^{-1}

so the match in ``J`` of source point ``q`` is ``to_warped(q)``. Geometry is float64; homographies
and affine maps are inverted in closed form, thin-plate splines by Newton iterations (< 1e-9 px).
``J``'s pixel ``p`` is *in view* when ``to_source(p)`` lies inside ``I``'s pixel-centre box
``[0, W-1] x [0, H-1]``; a source point ``q`` has a visible match when ``to_warped(q)`` lies
inside the same box of ``J``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from corr.geometry import cell_centres, from_integer_centres, grid_size, normalise_pixels, to_integer_centres

__all__ = [
    "Warp", "Homography", "ThinPlateSpline", "WARP_KINDS",
    "random_homography", "random_affine", "random_thin_plate", "random_warp",
    "pixel_grid", "inside", "warp_image", "source_matches",
]

WARP_KINDS = ("homography", "affine", "thin-plate")


def pixel_grid(height: int, width: int, stride: int = 1, dtype=torch.float64, device=None) -> torch.Tensor:
    """Centres of the ``stride``-cells of an ``H x W`` image as integer-centre ``(x, y)``:
    ``(ceil(H/s), ceil(W/s), 2)``, cell ``(i, j)`` at ``(j s + (s-1)/2, i s + (s-1)/2)``."""
    return to_integer_centres(cell_centres(*grid_size(height, width, stride), stride, device=device, dtype=dtype))


def inside(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``points (..., 2)`` -> bool ``(...)``: within the pixel-centre box ``[0, W-1] x [0, H-1]``."""
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


class Warp:
    """A bijective plane map between a source and a warped image (module docstring)."""

    def to_source(self, points: torch.Tensor) -> torch.Tensor:
        """Warped-image points ``(..., 2)`` -> source points ``(..., 2)``."""
        raise NotImplementedError

    def to_warped(self, points: torch.Tensor) -> torch.Tensor:
        """Source points ``(..., 2)`` -> warped-image points ``(..., 2)``."""
        raise NotImplementedError


@dataclass
class Homography(Warp):
    """``to_warped(q) ~ M [q; 1]`` (projective); ``matrix (3, 3)`` float64, ``M[2, 2] = 1``.

    An affine warp is a homography whose last row is ``(0, 0, 1)``.
    """

    matrix: torch.Tensor

    @staticmethod
    def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        p = points.to(torch.float64)
        ones = torch.ones_like(p[..., :1])
        h = torch.cat([p, ones], dim=-1) @ matrix.to(p.device).T          # ..., 3
        return h[..., :2] / h[..., 2:]

    def to_warped(self, points: torch.Tensor) -> torch.Tensor:
        return self._apply(self.matrix, points)

    def to_source(self, points: torch.Tensor) -> torch.Tensor:
        return self._apply(torch.linalg.inv(self.matrix), points)


def _tps_kernel(r2: torch.Tensor) -> torch.Tensor:
    """U(r) = r^2 log r^2 (0 at r = 0), from squared distances."""
    return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-300)), torch.zeros_like(r2))


@dataclass
class ThinPlateSpline(Warp):
    """Thin-plate spline backward map in normalised coordinates ``u = p / scale``:

        to_source(p) = scale * (u + a0 + A u + sum_k w_k U(|u - c_k|^2)),   U(r2) = r2 log r2

    with ``controls c (K, 2)``, ``weights w (K, 2)``, ``affine A (2, 2)``, ``offset a0 (2,)``
    (all float64) and ``scale = max(H, W)``. ``to_warped`` inverts it by Newton's method
    (analytic Jacobian), started from the first-order inverse; small displacements (as
    drawn by :func:`random_thin_plate`) keep the map bijective.
    """

    controls: torch.Tensor
    weights: torch.Tensor
    affine: torch.Tensor
    offset: torch.Tensor
    scale: float
    iterations: int = 50

    def _displacement(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Displacement ``d(u) (..., 2)`` and its Jacobian ``(..., 2, 2)`` (normalised units)."""
        c, w = self.controls.to(u.device), self.weights.to(u.device)
        diff = u[..., None, :] - c                                         # ..., K, 2
        r2 = (diff ** 2).sum(-1)                                           # ..., K
        d = self.offset.to(u.device) + u @ self.affine.to(u.device).T + _tps_kernel(r2) @ w
        dkernel = torch.where(r2 > 0, torch.log(r2.clamp_min(1e-300)) + 1, torch.zeros_like(r2))  # dU/dr2
        # d/du of U(|u - c|^2) = dU/dr2 * 2 (u - c)
        jac = torch.einsum("...k,...ki,kj->...ji", 2 * dkernel, diff, w) + self.affine.to(u.device)
        return d, jac

    def to_source(self, points: torch.Tensor) -> torch.Tensor:
        u = points.to(torch.float64) / self.scale
        d, _ = self._displacement(u)
        return (u + d) * self.scale

    def to_warped(self, points: torch.Tensor) -> torch.Tensor:
        target = points.to(torch.float64) / self.scale
        d, _ = self._displacement(target)
        u = target - d                                                     # first-order inverse
        for _ in range(self.iterations):
            d, jac = self._displacement(u)
            residual = u + d - target                                      # ..., 2
            a, b = 1 + jac[..., 0, 0], jac[..., 0, 1]                      # I + J = [[a, b], [c, e]]
            c, e = jac[..., 1, 0], 1 + jac[..., 1, 1]
            det = a * e - b * c
            step = torch.stack([e * residual[..., 0] - b * residual[..., 1],
                                a * residual[..., 1] - c * residual[..., 0]], dim=-1) / det[..., None]
            u = u - step
            if float(step.abs().max()) * self.scale < 1e-9:
                break
        return u * self.scale


# ----------------------------------------------------------------------------- sampling


def _uniform(generator: Optional[torch.Generator], *shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def random_homography(height: int, width: int, max_corner_shift: float = 0.12,
                      generator: Optional[torch.Generator] = None) -> Homography:
    """Homography moving each image corner by up to ``max_corner_shift * (W, H)`` (uniform)."""
    corners = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=torch.float64)
    moved = corners + _uniform(generator, 4, 2) * max_corner_shift * torch.tensor([width, height], dtype=torch.float64)
    return Homography(_homography_from_points(corners, moved))


def _homography_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 3x3 ``M`` (``M[2,2] = 1``) mapping 4 points ``src (4, 2)`` onto ``dst (4, 2)`` (DLT)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src.tolist(), dst.tolist()):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).reshape(3, 3)


def random_affine(height: int, width: int, max_rotation: float = 0.2, scale_range: tuple[float, float] = (0.85, 1.15),
                  max_shear: float = 0.1, max_translation: float = 0.1,
                  generator: Optional[torch.Generator] = None) -> Homography:
    """Rotation (radians), anisotropic scale, shear and translation about the image centre."""
    angle, shear = _uniform(generator, 2) * torch.tensor([max_rotation, max_shear], dtype=torch.float64)
    scales = _uniform(generator, 2, low=scale_range[0], high=scale_range[1])
    shift = _uniform(generator, 2) * max_translation * torch.tensor([width, height], dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])]) @ torch.tensor(
        [[1.0, float(shear)], [0.0, 1.0]], dtype=torch.float64) @ torch.diag(scales)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre - linear @ centre + shift
    return Homography(matrix)


def random_thin_plate(height: int, width: int, grid: int = 3, max_displacement: float = 0.04,
                      max_translation: float = 0.05, generator: Optional[torch.Generator] = None) -> ThinPlateSpline:
    """A TPS through a ``grid x grid`` lattice of controls, each moved by up to
    ``max_displacement * max(H, W)``, plus a random translation of up to ``max_translation``.

    Weights and the affine part are fitted so the backward map moves every control point
    by its drawn displacement (the standard interpolating TPS system).
    """
    scale = float(max(height, width))
    lin_x = torch.linspace(0, (width - 1) / scale, grid, dtype=torch.float64)
    lin_y = torch.linspace(0, (height - 1) / scale, grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(lin_y, lin_x, indexing="ij")
    controls = torch.stack([gx.ravel(), gy.ravel()], dim=-1)                # K, 2
    k = controls.shape[0]
    displacement = _uniform(generator, k, 2) * max_displacement + _uniform(generator, 1, 2) * max_translation
    kernel = _tps_kernel(((controls[:, None] - controls[None]) ** 2).sum(-1))  # K, K
    basis = torch.cat([torch.ones(k, 1, dtype=torch.float64), controls], dim=1)  # K, 3
    system = torch.zeros(k + 3, k + 3, dtype=torch.float64)
    system[:k, :k], system[:k, k:], system[k:, :k] = kernel, basis, basis.T
    rhs = torch.cat([displacement, torch.zeros(3, 2, dtype=torch.float64)])
    solution = torch.linalg.solve(system, rhs)                             # K+3, 2
    weights, offset, affine = solution[:k], solution[k], solution[k + 1:].T
    return ThinPlateSpline(controls, weights, affine, offset, scale)


def random_warp(height: int, width: int, kind: Optional[str] = None,
                generator: Optional[torch.Generator] = None) -> Warp:
    """A warp of ``kind`` (one of :data:`WARP_KINDS`; ``None``: chosen uniformly)."""
    if kind is None:
        kind = WARP_KINDS[int(torch.randint(len(WARP_KINDS), (1,), generator=generator))]
    if kind == "homography":
        return random_homography(height, width, generator=generator)
    if kind == "affine":
        return random_affine(height, width, generator=generator)
    if kind == "thin-plate":
        return random_thin_plate(height, width, generator=generator)
    raise ValueError(f"unknown warp kind {kind!r}; known kinds: {', '.join(WARP_KINDS)}")


def to_grid_sample(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Integer-centre pixel ``(x, y)`` -> ``grid_sample`` coordinates with ``align_corners=False``:
    ``u = (2 x + 1) / W - 1``, ``v = (2 y + 1) / H - 1``."""
    size = torch.tensor([width, height], dtype=points.dtype, device=points.device)
    return normalise_pixels(from_integer_centres(points), size)


def warp_image(image: torch.Tensor, warp: Warp) -> tuple[torch.Tensor, torch.Tensor]:
    """``J = I o to_source``: ``image (C, H, W)`` -> ``(warped (C, H, W), in_view bool (H, W))``.

    Bilinear sampling; pixels whose source point leaves the image are 0 and out of view.
    """
    if image.ndim != 3:
        raise ValueError(f"warp_image expects one image (C, H, W), got shape {tuple(image.shape)}")
    _, height, width = image.shape
    source = warp.to_source(pixel_grid(height, width, device=image.device))  # H, W, 2
    grid = to_grid_sample(source, height, width).to(image.dtype)
    warped = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return warped, inside(source, height, width)


def source_matches(warp: Warp, height: int, width: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each source cell centre lands in the warped image.

    Returns ``matches (h, w, 2)`` float64 pixel ``(x, y)`` in the warped image and
    ``visible bool (h, w)``, for the ``stride``-cells of :func:`pixel_grid`.
    """
    matches = warp.to_warped(pixel_grid(height, width, stride))
    return matches, inside(matches, height, width)
