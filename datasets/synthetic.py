"""Procedural videos with exact instance masks, written as a DAVIS-2017 folder.

A scene is a textured background that pans (a larger texture image seen through a moving
window) with 1..N textured objects ("sprites": an ellipse or polygon cut out of a stripe,
checker, noise or dot texture, each object in its own hue) that translate, rotate and
scale smoothly (a few pixels per frame) and occlude each other by depth order (later ids
in front; in some scenes two neighbours in depth swap once mid-video).

Ground truth is exact: the mask of frame t holds id k exactly where the frame shows
object k's texture (before JPEG compression). Ids 1..N identify objects whatever their
depth; an object hidden in a frame simply has no pixels there. Every object is at least
partly visible in frame 0, so the DAVIS rule "ids 1..max id of frame 0" finds them all.

Geometry (kept in :class:`SyntheticScene` so that point tracks can be derived later).
Coordinates are (x, y) in pixels with integer values at pixel centres (OpenCV's
``warpAffine`` convention; TAP-Vid's corner convention is these plus 0.5):

- object k (index k-1) in frame t: ``p_frame = affines[t, k-1] @ [x_s, y_s, 1]`` maps a
  sprite pixel ``(x_s, y_s)`` to the frame; ``affines[t, k-1] = [s R(theta) | c - s R c_s]``
  with centre ``c(t)``, rotation ``theta(t)``, scale ``s(t)`` and sprite centre ``c_s``.
- background in frame t: frame pixel ``p`` shows background-texture pixel
  ``p + background_offsets[t]``.
- a point of object k is visible in frame t iff ``masks[t]`` at its (rounded) position is k.

Determinism: everything is drawn from one ``numpy.random.Generator`` per sequence
(derived from the seed with ``SeedSequence.spawn``), and files are encoded with fixed
settings, so the same seed gives byte-identical files with the same library versions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from datasets.palette import ids_to_image

__all__ = ["SyntheticScene", "render_scene", "render_sequence", "object_layer", "object_sprite_map",
           "sequence_rng", "generate_davis", "write_generated_set"]

GENERATOR_VERSION = 1
JPEG_QUALITY = 90
RESOLUTION = "480p"
PARAMETERS_FILE = "synthetic.json"

# Motion ranges (pixels and radians per frame) and object sizes (fractions of min(H, W)).
OBJECT_SPEED = (1.0, 4.0)
ROTATION_SPEED = 0.04
BACKGROUND_SPEED = (0.5, 2.5)
OBJECT_RADIUS = (0.14, 0.26)
MIN_VISIBLE_FRACTION_FRAME0 = 0.4


@dataclass
class SyntheticScene:
    """One rendered video and the geometry that produced it (see the module docstring).

    frames:             uint8 (T, H, W, 3) RGB
    masks:              uint8 (T, H, W) ids, 0 background, k = object k
    affines:            float64 (T, N, 2, 3) sprite -> frame transform of object k at [t, k-1]
    depth_order:        int64 (T, N) object ids from back to front in each frame
    background_offsets: float64 (T, 2) (x, y) offset of the frame window in ``background``
    sprite_textures:    list of N uint8 (S_k, S_k, 3) object textures
    sprite_alphas:      list of N bool (S_k, S_k) object shapes (True inside)
    background:         uint8 (H + 2m, W + 2m, 3) background texture
    """

    frames: np.ndarray
    masks: np.ndarray
    affines: np.ndarray
    depth_order: np.ndarray
    background_offsets: np.ndarray
    sprite_textures: list[np.ndarray]
    sprite_alphas: list[np.ndarray]
    background: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.sprite_alphas)


# ----------------------------------------------------------------------------- textures

def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One colour, hue in [0, 180) (OpenCV units), saturation/value in [0, 255] -> RGB uint8."""
    hsv = np.array([[[hue % 180, saturation, value]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float,
                  channels: int = 1) -> np.ndarray:
    """Noise in [-1, 1] smooth over ``cell`` pixels: a coarse random grid resized (cubic)."""
    grid_h, grid_w = max(2, math.ceil(height / cell) + 1), max(2, math.ceil(width / cell) + 1)
    coarse = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w, channels)).astype(np.float32)
    fine = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(fine.reshape(height, width, channels), -1.0, 1.0)


def _object_texture(rng: np.random.Generator, side: int, hue: float, kind: str) -> np.ndarray:
    """A square ``uint8 (side, side, 3)`` texture in the given hue; ``kind`` picks the pattern."""
    colour_a = _hsv_to_rgb(hue, rng.uniform(150, 255), rng.uniform(170, 255)).astype(np.float32)
    colour_b = _hsv_to_rgb(hue + rng.uniform(-12, 12), rng.uniform(120, 255),
                           rng.uniform(40, 110)).astype(np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    if kind == "stripes":
        period = rng.uniform(6, 16)
        weight = np.clip(1.5 * np.sin(2 * np.pi * u / period) + 0.5, 0, 1)
    elif kind == "checkers":
        cell = rng.uniform(6, 14)
        weight = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == "noise":
        weight = 0.5 + 0.5 * _smooth_noise(rng, side, side, rng.uniform(4, 9))[..., 0]
    elif kind == "dots":
        canvas = np.zeros((side, side), np.uint8)
        for _ in range(max(4, side * side // 250)):
            centre = tuple(int(c) for c in rng.integers(0, side, size=2))
            cv2.circle(canvas, centre, int(rng.integers(2, 7)), 255, -1, cv2.LINE_AA)
        weight = canvas.astype(np.float32) / 255.0
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    weight = weight[..., None]
    texture = weight * colour_a + (1 - weight) * colour_b
    texture += 12.0 * _smooth_noise(rng, side, side, 2.0, channels=3)  # fine detail to match
    return np.clip(texture, 0, 255).round().astype(np.uint8)


def _background_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted ``uint8 (height, width, 3)`` texture: multi-scale colour noise plus shapes."""
    base = _hsv_to_rgb(rng.uniform(0, 180), rng.uniform(20, 80), rng.uniform(90, 170))
    image = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    for cell, grey, colour in ((64.0, 45.0, 15.0), (16.0, 25.0, 8.0), (4.0, 12.0, 4.0)):
        image += grey * _smooth_noise(rng, height, width, cell)  # brightness, same in R, G, B
        image += colour * _smooth_noise(rng, height, width, cell, channels=3)
    shapes = np.zeros((height, width, 3), np.float32)
    for _ in range(max(8, height * width // 6000)):
        colour = tuple(float(c) for c in rng.uniform(-50, 50, size=3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        if rng.random() < 0.5:
            x1, y1 = x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 60))
            cv2.rectangle(shapes, (x0, y0), (x1, y1), colour, -1, cv2.LINE_AA)
        else:
            x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.line(shapes, (x0, y0), (x1, y1), colour, int(rng.integers(1, 4)), cv2.LINE_AA)
    image += cv2.GaussianBlur(shapes, (0, 0), 1.0)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def _object_shape(rng: np.random.Generator, side: int, radius: float) -> np.ndarray:
    """A filled ellipse or star-shaped polygon within ``radius`` of the centre -> bool (side, side)."""
    alpha = np.zeros((side, side), np.uint8)
    centre = (side - 1) / 2.0
    if rng.random() < 0.4:
        axes = (int(radius * rng.uniform(0.6, 1.0)), int(radius * rng.uniform(0.5, 1.0)))
        cv2.ellipse(alpha, (round(centre), round(centre)), axes, float(rng.uniform(0, 180)),
                    0, 360, 1, -1, cv2.LINE_8)
    else:
        count = int(rng.integers(3, 9))
        spacing = 2 * np.pi / count
        angles = (rng.uniform(0, 2 * np.pi) + spacing * np.arange(count)
                  + rng.uniform(-0.4, 0.4, size=count) * spacing)  # increasing: a simple polygon
        radii = radius * rng.uniform(0.55, 1.0, size=count)
        points = np.stack([centre + radii * np.cos(angles), centre + radii * np.sin(angles)], -1)
        cv2.fillPoly(alpha, [np.round(points).astype(np.int32)], 1, cv2.LINE_8)
    return alpha.astype(bool)


# ----------------------------------------------------------------------------- motion

def _oscillation(rng: np.random.Generator, t: np.ndarray, amplitude: float,
                 speed_range: tuple[float, float]) -> np.ndarray:
    """``amplitude * sin(w t + phase)`` whose peak speed ``amplitude * w`` lies in ``speed_range``."""
    if amplitude <= 0:
        return np.zeros_like(t)
    speed = rng.uniform(*speed_range)
    return amplitude * np.sin(speed / amplitude * t + rng.uniform(0, 2 * np.pi))


def _object_affines(rng: np.random.Generator, num_frames: int, size: tuple[int, int],
                    sprite_centre: float) -> np.ndarray:
    """Smooth per-frame sprite -> frame affines ``(T, 2, 3)``; the centre stays in the middle 70%."""
    height, width = size
    t = np.arange(num_frames, dtype=np.float64)
    centre = np.empty((num_frames, 2))
    for axis, extent in enumerate((width, height)):
        base = rng.uniform(0.35, 0.65) * extent
        amplitude = rng.uniform(0.05, 0.2) * extent
        centre[:, axis] = base + _oscillation(rng, t, amplitude, (OBJECT_SPEED[0] / np.sqrt(2),
                                                                  OBJECT_SPEED[1] / np.sqrt(2)))
    theta = rng.uniform(0, 2 * np.pi) + rng.uniform(-ROTATION_SPEED, ROTATION_SPEED) * t
    scale = np.exp(rng.uniform(-0.1, 0.1) + rng.uniform(0.0, 0.15)
                   * np.sin(rng.uniform(0.05, 0.15) * t + rng.uniform(0, 2 * np.pi)))
    cos, sin = scale * np.cos(theta), scale * np.sin(theta)
    affines = np.empty((num_frames, 2, 3))
    affines[:, 0, 0], affines[:, 0, 1] = cos, -sin
    affines[:, 1, 0], affines[:, 1, 1] = sin, cos
    affines[:, :, 2] = centre - affines[:, :, :2] @ np.array([sprite_centre, sprite_centre])
    return affines


def _depth_order(rng: np.random.Generator, num_frames: int, num_objects: int) -> np.ndarray:
    """Ids back to front per frame ``(T, N)``: 1..N, with one swap of neighbours half the time."""
    order = np.tile(np.arange(1, num_objects + 1), (num_frames, 1))
    if num_objects >= 2 and num_frames >= 4 and rng.random() < 0.5:
        frame = int(rng.integers(num_frames // 4, 3 * num_frames // 4 + 1))
        slot = int(rng.integers(0, num_objects - 1))
        order[frame:, [slot, slot + 1]] = order[frame:, [slot + 1, slot]]
    return order


# ----------------------------------------------------------------------------- rendering

def _warp(image: np.ndarray, affine: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """``out(p) = image(affine^-1 p)`` on an (H, W) canvas (OpenCV pixel-centre convention)."""
    height, width = size
    if nearest:
        return cv2.warpAffine(image, affine, (width, height), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpAffine(image, affine, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _object_patch(scene: SyntheticScene, t: int, object_id: int, size: tuple[int, int]
                  ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Object ``object_id`` in frame ``t`` on the frame window around it (None if off-frame).

    Returns ``(window, texture, coverage)``: ``window`` = (rows, cols) slices of the frame,
    texture ``uint8 (h, w, 3)`` and coverage ``bool (h, w)`` on that window. Only the
    window is warped (the same result as warping the whole frame, at a fraction of the cost).
    """
    height, width = size
    alpha = scene.sprite_alphas[object_id - 1]
    affine = scene.affines[t, object_id - 1]
    side_y, side_x = alpha.shape
    corners = np.array([[-0.5, -0.5, 1], [side_x - 0.5, -0.5, 1], [-0.5, side_y - 0.5, 1],
                        [side_x - 0.5, side_y - 0.5, 1]]) @ affine.T  # (4, 2) x, y
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    local = affine.copy()
    local[:, 2] -= (x0, y0)  # frame pixel (x, y) is window pixel (x - x0, y - y0)
    window = (y1 - y0, x1 - x0)
    coverage = _warp(alpha.astype(np.uint8), local, window, nearest=True).astype(bool)
    texture = _warp(scene.sprite_textures[object_id - 1], local, window, nearest=False)
    return (slice(y0, y1), slice(x0, x1)), texture, coverage


def object_layer(scene: SyntheticScene, t: int, object_id: int,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Object ``object_id`` alone in frame ``t``: (texture uint8 (H, W, 3), coverage bool (H, W)).

    Texture is 0 where the object does not cover the frame.
    """
    texture = np.zeros((*size, 3), np.uint8)
    coverage = np.zeros(size, bool)
    patch = _object_patch(scene, t, object_id, size)
    if patch is not None:
        window, window_texture, window_coverage = patch
        texture[window] = window_texture * window_coverage[..., None]
        coverage[window] = window_coverage
    return texture, coverage


def object_sprite_map(scene: SyntheticScene, t: int, object_id: int, sprite_map: np.ndarray,
                      size: tuple[int, int]) -> np.ndarray:
    """A per-sprite-pixel integer map of object ``object_id`` carried into frame ``t``: (H, W).

    ``sprite_map`` (uint8 or uint16, the sprite's shape (S, S), e.g. part ids) is warped
    with nearest sampling on exactly the window and transform that make the object's
    coverage, so its nonzero pixels inside the sprite's shape line up with
    ``object_layer``'s coverage.
    0 where the object does not cover the frame.
    """
    out = np.zeros(size, sprite_map.dtype)
    alpha = scene.sprite_alphas[object_id - 1]
    if sprite_map.shape != alpha.shape:
        raise ValueError(f"sprite_map has shape {sprite_map.shape}, the sprite {alpha.shape}")
    height, width = size
    affine = scene.affines[t, object_id - 1]
    side_y, side_x = alpha.shape
    corners = np.array([[-0.5, -0.5, 1], [side_x - 0.5, -0.5, 1], [-0.5, side_y - 0.5, 1],
                        [side_x - 0.5, side_y - 0.5, 1]]) @ affine.T
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return out
    local = affine.copy()
    local[:, 2] -= (x0, y0)
    inside = np.where(alpha, sprite_map, 0)
    out[y0:y1, x0:x1] = _warp(inside, local, (y1 - y0, x1 - x0), nearest=True)
    return out


def _composite(scene: SyntheticScene, t: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paint frame ``t`` back to front: background, then each object where it covers."""
    height, width = size
    ox, oy = scene.background_offsets[t]
    shift = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]])
    frame = _warp(scene.background, shift, size, nearest=False)
    mask = np.zeros((height, width), np.uint8)
    for object_id in scene.depth_order[t]:
        patch = _object_patch(scene, t, int(object_id), size)
        if patch is None:
            continue
        window, texture, coverage = patch
        frame[window][coverage] = texture[coverage]
        mask[window][coverage] = object_id
    return frame, mask


def render_scene(rng: np.random.Generator, num_frames: int, size: tuple[int, int],
                 num_objects: int) -> SyntheticScene:
    """Draw a scene from ``rng`` and render it: frames, exact masks and all geometry."""
    height, width = int(size[0]), int(size[1])
    if num_frames < 1 or height < 16 or width < 16:
        raise ValueError(f"need num_frames >= 1 and size >= 16x16, got {num_frames}, {size}")
    if not 1 <= num_objects <= 254:
        raise ValueError(f"num_objects must be in [1, 254], got {num_objects}")
    size = (height, width)
    margin = math.ceil(0.15 * max(height, width)) + 2
    background = _background_texture(rng, height + 2 * margin, width + 2 * margin)
    t = np.arange(num_frames, dtype=np.float64)
    offsets = np.stack([margin + _oscillation(rng, t, rng.uniform(0.3, 1.0) * (margin - 2),
                                              BACKGROUND_SPEED) for _ in range(2)], axis=-1)

    hue0 = rng.uniform(0, 180)
    kinds = rng.permutation(["stripes", "checkers", "noise", "dots"])
    textures, alphas = [], []
    for index in range(num_objects):
        radius = rng.uniform(*OBJECT_RADIUS) * min(height, width)
        side = 2 * math.ceil(radius) + 3
        hue = hue0 + index * 180.0 / num_objects + rng.uniform(-8, 8)
        textures.append(_object_texture(rng, side, hue, str(kinds[index % len(kinds)])))
        alphas.append(_object_shape(rng, side, radius))

    # Motion, redrawn until every object shows enough of itself in frame 0.
    for _attempt in range(50):
        affines = np.stack([_object_affines(rng, num_frames, size, (alpha.shape[0] - 1) / 2.0)
                            for alpha in alphas], axis=1)
        depth = _depth_order(rng, num_frames, num_objects)
        scene = SyntheticScene(np.empty(0), np.empty(0), affines, depth, offsets,
                               textures, alphas, background)
        _, mask0 = _composite(scene, 0, size)
        visible = np.bincount(mask0.ravel(), minlength=num_objects + 1)[1:]
        if all(visible[k] >= MIN_VISIBLE_FRACTION_FRAME0 * alphas[k].sum() for k in range(num_objects)):
            break

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    masks = np.empty((num_frames, height, width), np.uint8)
    for index in range(num_frames):
        frames[index], masks[index] = _composite(scene, index, size)
    scene.frames, scene.masks = frames, masks
    return scene


def render_sequence(rng: np.random.Generator, num_frames: int, size: tuple[int, int],
                    num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``uint8 (T, H, W, 3)`` and masks ``uint8 (T, H, W)``; see :func:`render_scene`."""
    scene = render_scene(rng, num_frames, size, num_objects)
    return scene.frames, scene.masks


# ----------------------------------------------------------------------------- DAVIS files

def sequence_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws sequence ``index`` of a set made with ``seed``.

    It is the ``index``-th child of ``SeedSequence(seed)``, so a sequence does not depend
    on how many sequences the set has.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _listing_sha256(root: Path) -> str:
    """SHA-256 of sorted ``"<relative path>\\t<bytes>\\n"`` lines of the written files.

    Hidden files (a name starting with ``.``) are not the set's: readers keep caches there
    (the video index's ``.corr-index.json``), and a set must stay reusable after being read.
    """
    lines = []
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if path.is_file() and path.name != PARAMETERS_FILE and not hidden:
            lines.append(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def _reusable(root: Path, parameters: dict) -> bool:
    """True when ``root`` holds a complete set generated with exactly ``parameters``."""
    try:
        record = json.loads((root / PARAMETERS_FILE).read_text())
    except (OSError, ValueError):
        return False
    if record.get("parameters") != parameters:
        return False
    return record.get("listing_sha256") == _listing_sha256(root)


def write_generated_set(root: str | Path, generator: str, parameters: dict,
                        write: Callable[[Path], dict]) -> Path:
    """Build a generated data set at ``root`` atomically, or reuse an identical one.

    ``write(staging)`` fills a temporary folder next to ``root`` and returns extra fields
    for ``synthetic.json`` (which also records ``generator``, ``parameters`` and a hash of
    the file listing); the folder is then moved into place. ``root`` is reused as is when
    it holds a complete set made with the same parameters, and replaced only if it is
    empty or was generated (has ``synthetic.json``), never otherwise.
    """
    root = Path(root)
    if root.is_dir() and _reusable(root, parameters):
        return root
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder")
    if root.exists() and not (root / PARAMETERS_FILE).is_file() and any(root.iterdir()):
        raise ValueError(f"{root}: folder is not empty and was not made by {generator}; "
                         "refusing to overwrite it")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        extra = write(staging)
        record = {"generator": generator, "parameters": parameters, **extra,
                  "listing_sha256": _listing_sha256(staging)}
        (staging / PARAMETERS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(staging, root)
        except OSError:
            if not _reusable(root, parameters):  # not a twin process finishing first
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _write_sequence(root: Path, name: str, frames: np.ndarray, masks: np.ndarray) -> None:
    frame_dir = root / "JPEGImages" / RESOLUTION / name
    annotation_dir = root / "Annotations" / RESOLUTION / name
    frame_dir.mkdir(parents=True)
    annotation_dir.mkdir(parents=True)
    for index, (frame, mask) in enumerate(zip(frames, masks)):
        Image.fromarray(frame).save(frame_dir / f"{index:05d}.jpg", format="JPEG",
                                    quality=JPEG_QUALITY)
        ids_to_image(mask).save(annotation_dir / f"{index:05d}.png", format="PNG")


def generate_davis(root: str | Path, num_sequences: int = 3, num_frames: int = 24,
                   size: tuple[int, int] = (240, 320), max_objects: int = 3, seed: int = 0,
                   split: str = "val", sizes: list[tuple[int, int]] | None = None) -> Path:
    """Write a synthetic DAVIS-2017 set to ``root`` and return ``root``.

    Layout: ``JPEGImages/480p/synth-000/00000.jpg`` (JPEG quality 90),
    ``Annotations/480p/synth-000/00000.png`` (indexed PNGs, DAVIS palette),
    ``ImageSets/2017/<split>.txt``, and ``synthetic.json`` (parameters, per-sequence
    sizes and object counts, a hash of the file listing). Sequence i has
    ``rng.integers(1, max_objects + 1)`` objects and size ``sizes[i]`` (default ``size``,
    as (H, W)).

    If ``root`` already holds a complete set made with the same parameters it is reused
    as is. Otherwise the set is built in a temporary folder next to ``root`` and moved
    into place; an existing ``root`` is replaced only if it is empty or was made by this
    function (it has ``synthetic.json``), never otherwise.
    """
    root = Path(root)
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    if not 1 <= max_objects <= 254:
        raise ValueError(f"max_objects must be in [1, 254], got {max_objects}")
    if sizes is None:
        sizes = [tuple(size)] * num_sequences
    if len(sizes) != num_sequences:
        raise ValueError(f"sizes lists {len(sizes)} sizes for {num_sequences} sequences")
    parameters = {
        "generator_version": GENERATOR_VERSION,
        "num_sequences": int(num_sequences),
        "num_frames": int(num_frames),
        "size": [int(s) for s in size],
        "max_objects": int(max_objects),
        "seed": int(seed),
        "split": str(split),
        "sizes": [[int(h), int(w)] for h, w in sizes],
        "jpeg_quality": JPEG_QUALITY,
    }

    def write(staging: Path) -> dict:
        names, sequences = [], []
        for index in range(num_sequences):
            rng = sequence_rng(seed, index)
            num_objects = int(rng.integers(1, max_objects + 1))
            frames, masks = render_sequence(rng, num_frames, sizes[index], num_objects)
            name = f"synth-{index:03d}"
            _write_sequence(staging, name, frames, masks)
            names.append(name)
            sequences.append({"name": name, "size": [int(s) for s in sizes[index]],
                              "num_frames": int(num_frames), "num_objects": num_objects})
        split_file = staging / "ImageSets" / "2017" / f"{split}.txt"
        split_file.parent.mkdir(parents=True)
        split_file.write_text("".join(f"{name}\n" for name in names))
        return {"sequences": sequences}

    return write_generated_set(root, "datasets.synthetic.generate_davis", parameters, write)
