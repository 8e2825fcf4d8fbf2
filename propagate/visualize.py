"""Pictures of propagated labels: overlays, contact sheets and overlay videos."""
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


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: float = 10.0) -> Path:
    """Write RGB frames as an MP4 video (OpenCV 'mp4v'); sizes are made even for the codec."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w2, h2))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open an MP4 writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(np.ascontiguousarray(frame[:h2, :w2]), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    tmp.replace(path)
    return path
