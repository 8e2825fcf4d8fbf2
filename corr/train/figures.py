"""Training figures: what each loss did on the first clip of a batch, as ``uint8 (H, W, 3)``
RGB images for TensorBoard.

* :func:`walk_image`: where the walk sends frame 0's nodes in the last frame (arrows);
* :func:`cycle_image`: the TimeCycle patch and where it was tracked (boxes);
* :func:`pixel_image`: the pixel loss's warped pair, correspondences and out-of-view region.

Clips are normalised ``(T, 3, H, W)`` frames (dense mode) or ``(T, N, 3, h, w)`` patches
(grid mode). Pixel coordinates are (x, y) with pixel centres at integers; feature cell
``(i, j)`` of a stride-``s`` map has its centre at ``(s j + (s-1)/2, s i + (s-1)/2)``. Images
lower than ``min_height`` are enlarged by an integer factor (nearest neighbour) to be readable.
The losses return the data for their figures; only the training loop draws.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from einops import rearrange

from corr.losses.cycle import OFFSET_FACTOR
from datasets.transforms import denormalize_frames


def node_positions(clip: torch.Tensor, mode: str, stride: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frame images ``uint8 (H, W, 3)`` of one clip and node centres ``(N, 2)`` as (x, y) pixels.

    Grid mode shows a frame as the mosaic of its (jittered) patches in grid order; dense
    mode shows the crop, with node (i, j) at the centre of feature cell (i, j).
    """
    if mode == "grid":                                                  # clip: T, N, 3, h, w
        t, n, _, h, w = clip.shape
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"grid mode with {n} patches per frame is not a square grid")
        patches = denormalize_frames(rearrange(clip, "t n c h w -> (t n) c h w").float())
        frames = list(rearrange(patches, "(t gy gx) h w c -> t (gy h) (gx w) c", t=t, gy=side))
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * w, (ys.ravel() + 0.5) * h], axis=1)
    else:                                                               # clip: T, 3, H, W
        frames = list(denormalize_frames(clip.float()))
        height, width = frames[0].shape[:2]
        ys, xs = np.meshgrid(np.arange(math.ceil(height / stride)), np.arange(math.ceil(width / stride)), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
    return frames, centres


def _enlarge(frames: list[np.ndarray], min_height: int) -> tuple[list[np.ndarray], int]:
    """Frames lower than ``min_height`` enlarged by an integer factor ``s`` (nearest); ``(frames, s)``."""
    scale = max(1, min_height // frames[0].shape[0])
    if scale > 1:
        frames = [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for f in frames]
    return [np.ascontiguousarray(f) for f in frames], scale


def _hue_colour(rank: int, count: int) -> list[int]:
    """RGB colour of item ``rank`` of ``count``, hues spread over the circle."""
    hue = int(180 * rank / max(1, count))
    return cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()


def walk_figure(frame_a: np.ndarray, frame_b: np.ndarray, centres: np.ndarray, targets: np.ndarray,
                max_arrows: int = 16, min_height: int = 256) -> np.ndarray:
    """Frames a | b side by side; arrows from some nodes of a to their walk targets in b.

    ``centres (N, 2)`` node (x, y) in either frame, ``targets (N,)`` node index in b.
    Frames lower than ``min_height`` are enlarged by an integer factor ``s``.
    Returns ``uint8 (s H, 2 s W, 3)``.
    """
    (frame_a, frame_b), scale = _enlarge([frame_a, frame_b], min_height)
    centres = centres * scale
    width = frame_a.shape[1]
    canvas = np.ascontiguousarray(np.concatenate([frame_a, frame_b], axis=1))
    chosen = np.linspace(0, len(centres) - 1, min(max_arrows, len(centres))).round().astype(int)
    for rank, i in enumerate(chosen):
        colour = _hue_colour(rank, len(chosen))
        start = tuple(int(v) for v in centres[i])
        end = (int(centres[targets[i]][0]) + width, int(centres[targets[i]][1]))
        cv2.circle(canvas, start, 3, colour, -1)
        cv2.arrowedLine(canvas, start, end, colour, 1, tipLength=0.02)
        cv2.circle(canvas, end, 3, colour, -1)
    return canvas


def walk_image(clip: torch.Tensor, nodes: torch.Tensor, mode: str, stride: int) -> np.ndarray:
    """Where the forward walk sends frame 0's nodes in the last frame, for one clip.

    ``nodes (T, N, C)``: the target of node i is ``argmax_j (A_0 ... A_{T-2})_{ij}`` (no
    dropout; the temperature does not change an argmax of a single step but does for
    products, so tau = 0.05 is used).
    """
    frames, centres = node_positions(clip.detach().cpu(), mode, stride)
    q = nodes.detach().float().cpu()
    walk = torch.eye(q.shape[1])
    for t in range(q.shape[0] - 1):
        walk = walk @ torch.softmax(q[t] @ q[t + 1].T / 0.05, dim=-1)
    return walk_figure(frames[0], frames[-1], centres, walk.argmax(dim=-1).numpy())


def _theta_quad(theta: np.ndarray, height: int, width: int, offset: float = 1.0) -> np.ndarray:
    """Pixel corners ``(4, 2)`` (x, y) of the region that ``theta (2, 3)`` crops (TimeCycle's grids,
    ``align_corners=True``): patch corners ``(+-1, +-1)`` mapped to ``A c + offset * t`` (``offset``:
    1 for the image patch, ``OFFSET_FACTOR`` for a feature crop), then ``x = (u + 1)(W - 1) / 2``."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    uv = corners @ theta[:, :2].T + offset * theta[:, 2]                                  # 4, 2
    return np.stack([(uv[:, 0] + 1) * (width - 1) / 2, (uv[:, 1] + 1) * (height - 1) / 2], axis=1)


def _draw_quad(image: np.ndarray, quad: np.ndarray, colour: tuple[int, int, int], scale: int) -> None:
    """Outline ``quad (4, 2)`` (unscaled pixels) and a tick from its centre to its top edge (its angle)."""
    points = ((quad + 0.5) * scale - 0.5).round().astype(np.int32)
    cv2.polylines(image, [points], isClosed=True, color=colour, thickness=2)
    centre, top = points.mean(0), (points[0] + points[1]) / 2
    cv2.line(image, tuple(int(v) for v in centre), tuple(int(v) for v in top), colour, 1)


def cycle_image(clip: torch.Tensor, visuals: dict[str, torch.Tensor], min_height: int = 256) -> np.ndarray:
    """The tracked TimeCycle patch of one clip: base frames 0 .. N-1 | target frame.

    ``clip (T, 3, H, W)`` normalised (``T = N + 1``, or ``N + 2`` when the last frame is the
    motion reference); ``visuals`` as :class:`corr.losses.cycle.CycleConsistencyLoss` returns
    them for this clip (``theta0 (2, 3)``, ``skip (N, 2, 3)``, ``long (C, 2, 3)``). Base frame t
    shows (yellow) where the patch was tracked directly; the target shows the cut patch
    (green) and where the longest cycle returned it (red). A tick marks each box's top edge.
    Returns ``uint8 (s H, (N + 1) s W, 3)``.
    """
    skip = visuals["skip"].float().cpu().numpy()
    n = len(skip)
    frames = list(denormalize_frames(clip[:n + 1].detach().float().cpu()))
    height, width = frames[0].shape[:2]
    frames, scale = _enlarge(frames, min_height)
    for t in range(n):
        _draw_quad(frames[t], _theta_quad(skip[t], height, width, OFFSET_FACTOR), (255, 220, 0), scale)
    _draw_quad(frames[n], _theta_quad(visuals["theta0"].float().cpu().numpy(), height, width), (0, 220, 0), scale)
    _draw_quad(frames[n], _theta_quad(visuals["long"][-1].float().cpu().numpy(), height, width, OFFSET_FACTOR),
               (255, 0, 0), scale)
    return np.concatenate(frames, axis=1)


def pixel_image(clip: torch.Tensor, visuals: dict[str, torch.Tensor], max_lines: int = 12,
                min_height: int = 256) -> np.ndarray:
    """The warped pair of the pixel loss for one clip: frame 0 | its warp.

    ``clip (T, 3, H, W)`` normalised; ``visuals`` as :class:`corr.losses.pixel.FinePixelLoss`
    returns them for this clip (``warped (3, H, W)``, ``in_view (H, W)``, ``matches`` and
    ``predicted (h, w, 2)`` in cells, ``used (h, w)``). Out-of-view pixels of the warp are
    darkened and tinted red. For up to ``max_lines`` used cells, a line joins the cell centre
    to its true match (dot) and a cross marks the features' most likely match.
    Returns ``uint8 (k H, 2 k W, 3)``.
    """
    source, warped = denormalize_frames(torch.stack([clip[0], visuals["warped"]]).detach().float().cpu())
    out_view = ~visuals["in_view"].cpu().numpy()
    warped = warped.copy()
    warped[out_view] = (0.35 * warped[out_view] + np.array([90, 0, 0])).astype(np.uint8)
    width = source.shape[1]
    used = visuals["used"].cpu().numpy()
    stride = source.shape[0] / used.shape[0]
    (source, warped), scale = _enlarge([source, warped], min_height)
    canvas = np.ascontiguousarray(np.concatenate([source, warped], axis=1))

    def pixel(cell_xy: np.ndarray, offset: int = 0) -> tuple[int, int]:
        xy = (cell_xy * stride + (stride - 1) / 2 + 0.5) * scale - 0.5
        return int(round(xy[0])) + offset, int(round(xy[1]))

    cells = np.argwhere(used)                                                            # (i, j) rows
    chosen = cells[np.linspace(0, len(cells) - 1, min(max_lines, len(cells))).round().astype(int)] if len(cells) else []
    matches, predicted = visuals["matches"].float().cpu().numpy(), visuals["predicted"].float().cpu().numpy()
    for rank, (i, j) in enumerate(chosen):
        colour = _hue_colour(rank, len(chosen))
        start, end = pixel(np.array([j, i], dtype=np.float64)), pixel(matches[i, j], width * scale)
        cv2.circle(canvas, start, 3, colour, -1)
        cv2.line(canvas, start, end, colour, 1)
        cv2.circle(canvas, end, 3, colour, -1)
        cv2.drawMarker(canvas, pixel(predicted[i, j], width * scale), colour, cv2.MARKER_CROSS, 9, 2)
    return canvas
