"""Pictures of propagated labels: overlays, contact sheets, skeletons and tracks
(videos of them: :mod:`propagate.video_writer`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from corr.io import atomic_write
from datasets.palette import davis_palette


def overlay_mask(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend palette colours of an id map (H, W) onto an RGB frame (H, W, 3); outline each object.

    Background (id 0) is left as it is; void (255) is drawn in the palette's void colour.
    """
    palette = davis_palette()
    out = frame.astype(np.float32)
    fg = ids > 0
    colours = palette[ids].astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    out = out.round().clip(0, 255).astype(np.uint8)
    for obj in np.unique(ids[fg]):
        contours, _ = cv2.findContours((ids == obj).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in palette[obj]), thickness=2)
    return out


def contact_sheet(images: Sequence[np.ndarray], columns: int = 6, width: int = 240,
                  captions: Sequence[str] | None = None) -> np.ndarray:
    """Tile RGB images into one sheet, each resized to ``width`` pixels wide, with captions."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    h0, w0 = images[0].shape[:2]
    height = max(1, round(h0 * width / w0))
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * height, min(columns, len(images)) * width, 3), 255, np.uint8)
    for i, image in enumerate(images):
        tile = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        if captions is not None:
            cv2.putText(tile, captions[i], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, captions[i], (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(i, columns)
        sheet[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile
    return sheet


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    return atomic_write(path, lambda f: Image.fromarray(rgb).save(f, format="PNG"))


def _colours(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8 (n, 3)): hues evenly spaced around the HSV wheel."""
    hsv = np.stack([np.arange(n) * 180 // max(n, 1), np.full(n, 220), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_skeleton(frame: np.ndarray, keypoints: np.ndarray, parents: Sequence[int],
                  colour: tuple[int, int, int] | None = None, radius: int = 3, thickness: int = 2) -> np.ndarray:
    """Draw a keypoint skeleton on a copy of an RGB frame (H, W, 3).

    keypoints: (J, 2) (x, y) pixels, pixel centres at integers; a joint with a negative
    coordinate (not predicted) is not drawn, nor are its bones. ``parents[j]`` is the joint
    j is connected to (a root is its own parent), e.g. ``datasets.jhmdb.JHMDB_PARENTS``.
    ``colour`` None gives each joint (and the bone to its parent) its own colour.
    """
    out = np.ascontiguousarray(frame.copy())
    keypoints = np.asarray(keypoints, dtype=np.float64)
    palette = _colours(len(keypoints))
    present = np.isfinite(keypoints).all(1) & (keypoints >= 0).all(1)
    for j, parent in enumerate(parents):
        if j != parent and present[j] and present[parent]:
            c = colour or tuple(int(v) for v in palette[j])
            a = tuple(int(round(v)) for v in keypoints[j])
            b = tuple(int(round(v)) for v in keypoints[parent])
            cv2.line(out, a, b, c, thickness, cv2.LINE_AA)
    for j in np.flatnonzero(present):
        c = colour or tuple(int(v) for v in palette[j])
        cv2.circle(out, tuple(int(round(v)) for v in keypoints[j]), radius, c, -1, cv2.LINE_AA)
    return out


def overlay_parts(frame: np.ndarray, parts: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a part map (H, W) of class ids onto an RGB frame (H, W, 3); 0 (background) is left as is.

    Each class c > 0 gets a fixed colour (``_colours(20)``, by id), so a class keeps its
    colour across frames and videos.
    """
    parts = np.asarray(parts)
    palette = _colours(max(20, int(parts.max()) + 1) if parts.size else 20)
    out = frame.astype(np.float32)
    fg = parts > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * palette[parts[fg]].astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def draw_tracks(frame: np.ndarray, tracks: np.ndarray, occluded: np.ndarray, t: int, trail: int = 8,
                radius: int = 3) -> np.ndarray:
    """Draw point tracks up to frame ``t`` on a copy of an RGB frame (H, W, 3).

    tracks: (Q, T, 2) (x, y) in pixels of ``frame``, TAP-Vid corner convention (a pixel
    centre is at ``i + 0.5``); occluded: (Q, T) bool. Each track has its own colour; its
    last ``trail`` positions are joined by a line (segments touching an occluded frame are
    left out) and its position at ``t`` is a filled dot when visible and a hollow circle
    when predicted occluded.
    """
    out = np.ascontiguousarray(frame.copy())
    tracks = np.asarray(tracks, dtype=np.float64) - 0.5  # corner -> centre convention for drawing
    palette = _colours(len(tracks))
    for q in range(len(tracks)):
        c = tuple(int(v) for v in palette[q])
        for s in range(max(0, t - trail), t):
            if not (occluded[q, s] or occluded[q, s + 1]):
                a = tuple(int(round(v)) for v in tracks[q, s])
                b = tuple(int(round(v)) for v in tracks[q, s + 1])
                cv2.line(out, a, b, c, 1, cv2.LINE_AA)
        centre = tuple(int(round(v)) for v in tracks[q, t])
        cv2.circle(out, centre, radius, c, 1 if occluded[q, t] else -1, cv2.LINE_AA)
    return out


def error_overlay(frame: np.ndarray, gt: np.ndarray, pred: np.ndarray, void: int | None = None) -> np.ndarray:
    """Where an id map ``pred`` (H, W) differs from the ground truth ``gt`` (H, W), on a dimmed
    grey copy of an RGB frame (H, W, 3): red where ``pred`` puts an object (id > 0) that is not
    the ground truth's, blue where it puts background on an object; pixels whose ground truth
    is ``void`` are not counted."""
    grey = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    out = (0.5 * grey.astype(np.float32)).astype(np.uint8)
    wrong = pred != gt
    if void is not None:
        wrong &= gt != void
    out[wrong & (pred > 0)] = (230, 40, 40)
    out[wrong & (pred == 0)] = (40, 90, 230)
    return out


def side_by_side(panels: Sequence[np.ndarray], captions: Sequence[str], height: int = 240) -> np.ndarray:
    """RGB panels (H_i, W_i, 3) resized to ``height`` rows (aspect kept), captioned at the top
    left and joined left to right with a 4-pixel white gap -> (height, sum of widths + gaps, 3)."""
    tiles = []
    for i, (panel, caption) in enumerate(zip(panels, captions)):
        width = max(1, round(panel.shape[1] * height / panel.shape[0]))
        tile = cv2.resize(panel, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        if i:
            tiles.append(np.full((height, 4, 3), 255, np.uint8))
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)
