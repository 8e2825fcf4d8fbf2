"""Synthetic JHMDB, VIP and TAP-Vid sets, written in each benchmark's real on-disk format.

Every video is a :func:`datasets.synthetic.render_scene` scene (textured objects over a
panning background, exact masks and per-frame sprite -> frame affines); the labels of each
task are derived from its geometry, so they are exact:

* JHMDB (:func:`generate_jhmdb`): the front object is the "figure". 15 keypoints are fixed
  sprite pixels (a stick-figure template in JHMDB joint order, each snapped to the nearest
  pixel inside the shape) carried by the object's affine; the figure moves rigidly (it is
  not articulated). Annotated in every frame, visible or not, like JHMDB's puppet joints.
* VIP (:func:`generate_vip`): each object is a "person" cut into 3-6 parts (Voronoi cells of
  random seeds inside its shape), each part a distinct class in 1..19 and tinted slightly;
  the part map of a frame is the class of the sprite pixel each pixel shows, 0 elsewhere.
* TAP-Vid (:func:`generate_tapvid`): tracks of points on objects (sprite pixels away from
  the shape's edge, moved by the affines) and on the background (moved by the pan). A point
  is occluded in frame t when it is outside the frame or the mask at its nearest pixel is not
  its own surface (a nearer object covers it).

Coordinates: the scene's (pixel centres at integers, 0-based); files use each format's
own convention (JHMDB 1-based ``pos_img``; TAP-Vid normalised corner coordinates
``(x + 0.5) / W``).

Determinism: video i of a set is drawn from ``sequence_rng(seed, i)`` and files are written
with fixed settings, so one seed gives byte-identical files. A folder holding a complete
set made with the same parameters is reused; a folder not made here is never overwritten.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from datasets.synthetic import SyntheticScene, object_sprite_map, render_scene, sequence_rng, write_generated_set
from datasets.vip import NUM_CLASSES

__all__ = ["generate_jhmdb", "generate_vip", "generate_tapvid", "scene_keypoints", "scene_part_maps",
           "scene_point_tracks", "JHMDB_SPLIT", "VIP_SPLIT", "TAPVID_KINDS"]

GENERATOR_VERSION = 1
JPEG_QUALITY = 90
PICKLE_PROTOCOL = 4
JHMDB_SPLIT = Path("splits") / "test_split1.txt"  # relative to the generated root
VIP_SPLIT = "val"
TAPVID_KINDS = ("davis", "rgb_stacking", "kinetics")

#: Stick-figure template in JHMDB joint order, (x, y) in units of the sprite's half side
#: (y down): neck, belly, face, R/L shoulder, R/L hip, R/L elbow, R/L knee, R/L wrist, R/L ankle.
FIGURE_TEMPLATE = np.array([
    [0.0, -0.45], [0.0, 0.1], [0.0, -0.75], [-0.3, -0.4], [0.3, -0.4], [-0.18, 0.25], [0.18, 0.25],
    [-0.5, -0.1], [0.5, -0.1], [-0.22, 0.55], [0.22, 0.55], [-0.6, 0.2], [0.6, 0.2], [-0.25, 0.85],
    [0.25, 0.85]])


# ----------------------------------------------------------------------------- labels of a scene

def _inside_pixels(alpha: np.ndarray, margin: int) -> np.ndarray:
    """(x, y) of the shape's pixels at least ``margin`` pixels inside its edge (all if none are)."""
    core = ndimage.binary_erosion(alpha, iterations=margin) if margin > 0 else alpha
    if not core.any():
        core = alpha
    ys, xs = np.nonzero(core)
    return np.stack([xs, ys], axis=1).astype(np.float64)


def _to_frame(affines: np.ndarray, sprite_points: np.ndarray) -> np.ndarray:
    """Sprite points (P, 2) -> frame points (T, P, 2) through the per-frame affines (T, 2, 3)."""
    homogeneous = np.concatenate([sprite_points, np.ones((len(sprite_points), 1))], axis=1)  # (P, 3)
    return np.einsum("tij,pj->tpi", affines, homogeneous)


def scene_keypoints(scene: SyntheticScene, object_id: int, rng: np.random.Generator) -> np.ndarray:
    """15 keypoints of object ``object_id`` in every frame: float64 (T, 15, 2) (x, y), 0-based.

    The template (jittered by up to 0.05 half-sides) is scaled to the sprite and each joint
    snapped to the nearest sprite pixel at least 2 pixels inside the shape.
    """
    alpha = scene.sprite_alphas[object_id - 1]
    side = alpha.shape[0]
    centre = (side - 1) / 2.0
    template = FIGURE_TEMPLATE + rng.uniform(-0.05, 0.05, size=FIGURE_TEMPLATE.shape)
    wanted = centre + template * (side / 2.0 - 1.5)
    inside = _inside_pixels(alpha, margin=2)
    nearest = np.argmin(((wanted[:, None, :] - inside[None]) ** 2).sum(-1), axis=1)
    return _to_frame(scene.affines[:, object_id - 1], inside[nearest])


def _part_sprites(scene: SyntheticScene, rng: np.random.Generator) -> list[np.ndarray]:
    """Per object, uint8 (S, S) part classes inside its shape (0 outside): Voronoi cells of seeds."""
    sprites = []
    for alpha in scene.sprite_alphas:
        inside = _inside_pixels(alpha, margin=0)
        count = int(rng.integers(3, 7))
        seeds = inside[rng.choice(len(inside), size=min(count, len(inside)), replace=False)]
        classes = rng.choice(np.arange(1, NUM_CLASSES), size=len(seeds), replace=False).astype(np.uint8)
        ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
        dist = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2
        sprites.append(np.where(alpha, classes[np.argmin(dist, axis=0)], 0).astype(np.uint8))
    return sprites


def scene_part_maps(scene: SyntheticScene, part_sprites: list[np.ndarray]) -> np.ndarray:
    """Part class map of every frame, uint8 (T, H, W): the class of the sprite pixel shown, else 0."""
    T, H, W = scene.masks.shape
    parts = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for object_id in range(1, scene.num_objects + 1):
            shown = scene.masks[t] == object_id
            if shown.any():
                warped = object_sprite_map(scene, t, object_id, part_sprites[object_id - 1], (H, W))
                parts[t][shown] = warped[shown]
    return parts


def _tint_parts(scene: SyntheticScene, parts: np.ndarray, rng: np.random.Generator) -> None:
    """Shift each part class's colour a little in the frames (in place), so parts differ in looks."""
    shifts = rng.uniform(-40, 40, size=(20, 3))
    shifts[0] = 0
    frames = scene.frames.astype(np.float32) + shifts[parts]
    scene.frames = np.clip(frames, 0, 255).round().astype(np.uint8)


def _visible(masks: np.ndarray, points: np.ndarray, surface: int) -> np.ndarray:
    """bool (T, P): point inside the frame and the mask at its nearest pixel equals ``surface``."""
    T, H, W = masks.shape
    cols, rows = np.round(points[..., 0]).astype(np.int64), np.round(points[..., 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < W) & (rows >= 0) & (rows < H)
    frame_index = np.broadcast_to(np.arange(T)[:, None], cols.shape)
    shown = masks[frame_index, rows.clip(0, H - 1), cols.clip(0, W - 1)]
    return inside & (shown == surface)


def scene_point_tracks(scene: SyntheticScene, num_points: int, rng: np.random.Generator,
                       object_fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Point tracks of a scene: (points float64 (N, T, 2) (x, y) pixels, occluded bool (N, T)).

    About ``object_fraction`` of the points lie on objects (sprite pixels 2+ pixels inside the
    shape, spread over the objects), the rest on the background (uniform in frame 0).
    Every track is visible in at least one frame (tracks never visible are redrawn).
    """
    T, H, W = scene.masks.shape
    offsets = scene.background_offsets - scene.background_offsets[0]  # (T, 2) pan since frame 0
    tracks, occluded, count = [], [], 0
    for _attempt in range(20):
        need = num_points - count
        if need <= 0:
            break
        owners = rng.integers(1, scene.num_objects + 1, size=int(round(need * object_fraction)))
        drawn, hidden = [], []
        for object_id in range(1, scene.num_objects + 1):
            inside = _inside_pixels(scene.sprite_alphas[object_id - 1], margin=2)
            chosen = inside[rng.integers(0, len(inside), size=int((owners == object_id).sum()))]
            points = _to_frame(scene.affines[:, object_id - 1], chosen)        # (T, P, 2)
            drawn.append(points)
            hidden.append(~_visible(scene.masks, points, object_id))
        start = rng.uniform([0, 0], [W - 1, H - 1], size=(need - len(owners), 2))  # frame-0 (x, y)
        points = start[None] - offsets[:, None]                                    # (T, P, 2)
        drawn.append(points)
        hidden.append(~_visible(scene.masks, points, 0))
        drawn = np.concatenate(drawn, axis=1).transpose(1, 0, 2)  # (P, T, 2)
        hidden = np.concatenate(hidden, axis=1).T                  # (P, T)
        seen = (~hidden).any(axis=1)
        tracks.append(drawn[seen])
        occluded.append(hidden[seen])
        count += int(seen.sum())
    points, hidden = np.concatenate(tracks)[:num_points], np.concatenate(occluded)[:num_points]
    order = rng.permutation(len(points))
    return points[order], hidden[order]


# ----------------------------------------------------------------------------- writing sets

def _build(root: str | Path, generator: str, parameters: dict, write: Callable[[Path], list[dict]]) -> Path:
    """Write a set with ``write(staging) -> per-video records`` into ``root`` (reused if identical)."""
    parameters = {"generator_version": GENERATOR_VERSION, **parameters}
    return write_generated_set(root, f"datasets.synthetic_tasks.{generator}", parameters,
                               lambda staging: {"videos": write(staging)})


def _scene(seed: int, index: int, num_frames: int, size: tuple[int, int], max_objects: int
           ) -> tuple[SyntheticScene, np.random.Generator]:
    rng = sequence_rng(seed, index)
    num_objects = int(rng.integers(1, max_objects + 1))
    return render_scene(rng, num_frames, size, num_objects), rng


def _check(num_videos: int, num_frames: int, max_objects: int) -> None:
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 1 <= max_objects <= 19:
        raise ValueError(f"max_objects must be in [1, 19], got {max_objects}")


def generate_jhmdb(root: str | Path, num_videos: int = 3, num_frames: int = 20,
                   size: tuple[int, int] = (240, 320), max_objects: int = 2, seed: int = 0) -> Path:
    """Write a synthetic JHMDB set to ``root`` and return ``root``.

    Layout (as JHMDB): ``Rename_Images/synth/synth-000/00001.png ...`` (PNG frames),
    ``joint_positions/synth/synth-000/joint_positions.mat`` (``pos_img`` float64 [2, 15, T],
    1-based, written with ``scipy.io.savemat``), and the split file ``splits/test_split1.txt``
    (:data:`JHMDB_SPLIT`; lines ``<frames dir> <joint_positions.mat>``, relative to ``root``,
    so ``JhmdbDataset(root / JHMDB_SPLIT, root=root)`` reads it).
    """
    import scipy.io

    _check(num_videos, num_frames, max_objects)
    parameters = {"task": "jhmdb", "num_videos": num_videos, "num_frames": num_frames,
                  "size": [int(s) for s in size], "max_objects": max_objects, "seed": seed}

    def write(staging: Path) -> list[dict]:
        lines, videos = [], []
        for index in range(num_videos):
            scene, rng = _scene(seed, index, num_frames, size, max_objects)
            figure = scene.num_objects  # the front object (unless a depth swap moves it back)
            keypoints = scene_keypoints(scene, figure, rng)  # (T, 15, 2), 0-based
            name = f"synth/synth-{index:03d}"
            frame_dir = staging / "Rename_Images" / name
            joints_dir = staging / "joint_positions" / name
            frame_dir.mkdir(parents=True)
            joints_dir.mkdir(parents=True)
            for t, frame in enumerate(scene.frames, start=1):
                Image.fromarray(frame).save(frame_dir / f"{t:05d}.png", format="PNG")
            pos_img = np.transpose(keypoints + 1.0, (2, 1, 0))  # (2, 15, T), 1-based
            scipy.io.savemat(joints_dir / "joint_positions.mat", {"pos_img": pos_img}, do_compression=False)
            lines.append(f"Rename_Images/{name} joint_positions/{name}/joint_positions.mat\n")
            videos.append({"name": name, "num_objects": scene.num_objects, "figure": figure})
        (staging / JHMDB_SPLIT).parent.mkdir(parents=True)
        (staging / JHMDB_SPLIT).write_text("".join(lines))
        return videos

    return _build(root, "generate_jhmdb", parameters, write)


def generate_vip(root: str | Path, num_videos: int = 3, num_frames: int = 12,
                 size: tuple[int, int] = (240, 320), max_objects: int = 3, seed: int = 0) -> Path:
    """Write a synthetic VIP_Fine set to ``root`` and return ``root``.

    Layout (as VIP_Fine): ``Images/synth-000/000000000001.jpg ...`` (JPEG quality 90),
    ``Annotations/Category_ids/synth-000/000000000001.png`` (grey PNG, class ids 0..19),
    ``lists/val_videos.txt``. Every frame is annotated.
    """
    _check(num_videos, num_frames, max_objects)
    parameters = {"task": "vip", "num_videos": num_videos, "num_frames": num_frames,
                  "size": [int(s) for s in size], "max_objects": max_objects, "seed": seed}

    def write(staging: Path) -> list[dict]:
        names, videos = [], []
        for index in range(num_videos):
            scene, rng = _scene(seed, index, num_frames, size, max_objects)
            parts = scene_part_maps(scene, _part_sprites(scene, rng))
            _tint_parts(scene, parts, rng)
            name = f"synth-{index:03d}"
            frame_dir = staging / "Images" / name
            annotation_dir = staging / "Annotations" / "Category_ids" / name
            frame_dir.mkdir(parents=True)
            annotation_dir.mkdir(parents=True)
            for t, (frame, part) in enumerate(zip(scene.frames, parts), start=1):
                Image.fromarray(frame).save(frame_dir / f"{t:012d}.jpg", format="JPEG", quality=JPEG_QUALITY)
                Image.fromarray(part, mode="L").save(annotation_dir / f"{t:012d}.png", format="PNG")
            names.append(name)
            videos.append({"name": name, "num_objects": scene.num_objects,
                           "classes": sorted(int(c) for c in np.unique(parts))})
        (staging / "lists").mkdir()
        (staging / "lists" / f"{VIP_SPLIT}_videos.txt").write_text("".join(f"{n}\n" for n in names))
        return videos

    return _build(root, "generate_vip", parameters, write)


def _jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
    return buffer.tobytes()


def generate_tapvid(root: str | Path, kind: str = "davis", num_videos: int = 3, num_frames: int = 24,
                    size: tuple[int, int] = (240, 320), num_points: int = 48, max_objects: int = 3,
                    seed: int = 0, num_shards: int = 2) -> Path:
    """Write a synthetic TAP-Vid set of one ``kind`` under ``root``; return the dataset's path.

    * ``davis``: ``root/tapvid_davis.pkl``, a dict ``"synth-000" -> record``;
    * ``rgb_stacking``: ``root/tapvid_rgb_stacking.pkl``, a list of records;
    * ``kinetics``: ``root/kinetics/0000_of_0002.pkl ...``, ``num_shards`` lists of records
      whose ``video`` is a list of JPEG ``bytes`` (quality 90), videos dealt round-robin.

    A record is ``{"video": uint8 [T, H, W, 3], "points": float32 [N, T, 2] (x, y) in [0, 1],
    "occluded": bool [N, T]}`` with ``points = (x + 0.5, y + 0.5) / (W, H)`` (corner convention).
    The returned path is what :class:`datasets.tapvid.TapVidDataset` opens.
    """
    if kind not in TAPVID_KINDS:
        raise ValueError(f"kind must be one of {TAPVID_KINDS}, got {kind!r}")
    _check(num_videos, num_frames, max_objects)
    if num_points < 1 or num_shards < 1:
        raise ValueError(f"need num_points >= 1 and num_shards >= 1, got {num_points}, {num_shards}")
    parameters = {"task": "tapvid", "kind": kind, "num_videos": num_videos, "num_frames": num_frames,
                  "size": [int(s) for s in size], "num_points": num_points, "max_objects": max_objects,
                  "seed": seed, "num_shards": num_shards if kind == "kinetics" else 1}

    def write(staging: Path) -> list[dict]:
        records, videos = {}, []
        for index in range(num_videos):
            scene, rng = _scene(seed, index, num_frames, size, max_objects)
            points, occluded = scene_point_tracks(scene, num_points, rng)
            height, width = scene.masks.shape[1:]
            normalised = ((points + 0.5) / np.array([width, height])).astype(np.float32)
            video = scene.frames if kind != "kinetics" else [_jpeg_bytes(f) for f in scene.frames]
            name = f"synth-{index:03d}"
            records[name] = {"video": video, "points": normalised, "occluded": occluded}
            videos.append({"name": name, "num_objects": scene.num_objects, "num_points": int(len(points)),
                           "visible_fraction": float((~occluded).mean())})
        if kind == "davis":
            with open(staging / "tapvid_davis.pkl", "wb") as file:
                pickle.dump(records, file, protocol=PICKLE_PROTOCOL)
        elif kind == "rgb_stacking":
            with open(staging / "tapvid_rgb_stacking.pkl", "wb") as file:
                pickle.dump(list(records.values()), file, protocol=PICKLE_PROTOCOL)
        else:
            (staging / "kinetics").mkdir()
            values = list(records.values())
            for shard in range(num_shards):
                with open(staging / "kinetics" / f"{shard:04d}_of_{num_shards:04d}.pkl", "wb") as file:
                    pickle.dump(values[shard::num_shards], file, protocol=PICKLE_PROTOCOL)
        return videos

    root = _build(root, "generate_tapvid", parameters, write)
    return root / {"davis": "tapvid_davis.pkl", "rgb_stacking": "tapvid_rgb_stacking.pkl",
                   "kinetics": "kinetics"}[kind]
