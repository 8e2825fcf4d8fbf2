"""Optical flow on disk: FlyingThings3D's PFM files and its folder layout (docs/objectives.md,
fine-grained pixel).

PFM: a text header ``PF`` (3 channels) or ``Pf`` (1 channel), ``width height``, and a scale whose
sign gives the byte order (negative: little-endian); then float32 rows from the bottom of the
image up. :func:`read_pfm` returns ``(H, W, C)`` float32 with row 0 at the top.

FlyingThings3D flow files hold ``(u, v, 0)`` per pixel, ``u`` to the right and ``v`` down, in
pixels; ``optical_flow/<split>/<letter>/<scene>/into_future/<camera>/OpticalFlowIntoFuture_<n>_<C>.pfm``
maps frame n to frame n + 1 and ``into_past`` frame n to frame n - 1.
:func:`flyingthings_pairs` lists the pairs as the fine-grained pixel loss reads them: frames
``(reference, target)`` with ``flow`` on the target's pixels into the reference and
``flow_back`` on the reference's pixels into the target. :class:`FlowPairCrops` samples
random crops of them for training (``train.py --flow-data``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from datasets.augment import random_blur
from datasets.frames import DatasetError
from datasets.transforms import normalize_frames

_HEADER = re.compile(rb"^(PF|Pf)\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s", re.S)


def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM file as ``(H, W, C)`` float32, top row first (module docstring)."""
    data = Path(path).read_bytes()
    match = _HEADER.match(data)
    if match is None:
        raise ValueError(f"{path}: not a PFM file (header {data[:20]!r})")
    channels = 3 if match.group(1) == b"PF" else 1
    width, height, scale = int(match.group(2)), int(match.group(3)), float(match.group(4))
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    count = width * height * channels
    if len(data) < match.end() + 4 * count:
        raise ValueError(f"{path}: PFM data shorter than {width}x{height}x{channels} floats")
    values = np.frombuffer(data, dtype=dtype, count=count, offset=match.end())
    return np.ascontiguousarray(values.reshape(height, width, channels)[::-1]).astype(np.float32)


def read_flow(path: str | Path) -> np.ndarray:
    """A FlyingThings3D flow file: ``(H, W, 2)`` float32 ``(u, v)`` pixels (the third channel dropped)."""
    flow = read_pfm(path)
    if flow.shape[-1] != 3:
        raise ValueError(f"{path}: a flow PFM has 3 channels, found {flow.shape[-1]}")
    return flow[..., :2]


@dataclass(frozen=True)
class FlowPair:
    """Two frames and their flows (module docstring): ``frames = (reference, target)``."""

    frames: tuple[Path, Path]
    flow: Path                     # on the target's pixels, into the reference
    flow_back: Path                # on the reference's pixels, into the target


def flyingthings_pairs(root: str | Path, split: str = "TRAIN", camera: str = "left",
                       image_folder: str = "frames_cleanpass") -> list[FlowPair]:
    """Every consecutive pair of every scene under ``root``, both directions (into_future then
    into_past), as the authors' loader pairs them: for frames ``n, n + 1`` into the future the
    reference is ``n`` and the target ``n + 1``; into the past the reference is ``n + 1``."""
    root = Path(root)
    pairs = []
    for direction, opposite in (("into_future", "into_past"), ("into_past", "into_future")):
        for scene in sorted(p for p in (root / "optical_flow" / split).glob("*/*") if p.is_dir()):
            images = sorted(f for f in (root / image_folder / split / scene.parent.name / scene.name / camera).glob("*")
                            if f.suffix in (".png", ".webp", ".jpg"))
            flows = sorted((scene / direction / camera).glob("*.pfm"))
            for i in range(min(len(flows), len(images)) - 1):
                later = _opposite(flows[i + 1], direction, opposite)
                earlier = _opposite(flows[i], direction, opposite)
                if direction == "into_future":
                    pairs.append(FlowPair((images[i], images[i + 1]), later, flows[i]))
                else:
                    pairs.append(FlowPair((images[i + 1], images[i]), earlier, flows[i + 1]))
    return pairs


def _opposite(path: Path, direction: str, opposite: str) -> Path:
    """The same frame's flow in the other direction."""
    name = path.name.replace("IntoFuture", "@").replace("IntoPast", "IntoFuture").replace("@", "IntoPast")
    return path.parents[1].parent / opposite / path.parent.name / name


class FlowPairCrops:
    """FlyingThings3D pairs as training samples: one random ``crop_size`` crop of a random pair.

    :meth:`sample` returns ``{"frames": (2, 3, S, S)`` normalised RGB (ImageNet statistics, as
    the clips), ``(reference, target)``; ``"flow": (2, S, S)`` on the target's pixels into
    the reference; ``"flow_back": (2, S, S)`` the other way``}`` (pixels, ``(u, v)``). A crop
    does not change flow values; with ``blur`` the pair is blurred as FGVC's ``train_pipeline_sup``
    does (:func:`datasets.augment.random_blur`). Frames and both flows of a pair must have one size, at least
    ``crop_size`` on each side; anything else is a :class:`datasets.frames.DatasetError` naming
    the file.
    """

    def __init__(self, root: str | Path, crop_size: int, split: str = "TRAIN", camera: str = "left",
                 blur: float = 0.0):
        self.root, self.crop_size, self.blur = Path(root), crop_size, blur
        self.pairs = flyingthings_pairs(root, split=split, camera=camera)
        if not self.pairs:
            raise DatasetError(f"{self.root}: no FlyingThings3D pairs found (expected frames_cleanpass/{split}/"
                               f"<letter>/<scene>/{camera}/*.png and optical_flow/{split}/<letter>/<scene>/"
                               f"into_future|into_past/{camera}/*.pfm)")

    def __len__(self) -> int:
        return len(self.pairs)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        pair = self.pairs[int(rng.integers(len(self.pairs)))]
        frames = [_read_rgb(path) for path in pair.frames]
        flows = [_read_flow_checked(path) for path in (pair.flow, pair.flow_back)]
        height, width = frames[0].shape[:2]
        for path, array in zip((*pair.frames, pair.flow, pair.flow_back), (*frames, *flows)):
            if array.shape[:2] != (height, width):
                raise DatasetError(f"{path}: {array.shape[0]}x{array.shape[1]}, but {pair.frames[0].name} of its "
                                   f"pair is {height}x{width}")
        size = self.crop_size
        if height < size or width < size:
            raise DatasetError(f"{pair.frames[0]}: {height}x{width} is smaller than the {size} px crop")
        y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        crop = (slice(y, y + size), slice(x, x + size))
        pair_frames = np.stack([frame[crop] for frame in frames])
        if self.blur > 0:
            pair_frames = random_blur(pair_frames, self.blur, rng)
        return {"frames": normalize_frames(pair_frames),
                "flow": torch.from_numpy(np.ascontiguousarray(flows[0][crop].transpose(2, 0, 1))),
                "flow_back": torch.from_numpy(np.ascontiguousarray(flows[1][crop].transpose(2, 0, 1)))}


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_flow_checked(path: Path) -> np.ndarray:
    try:
        return read_flow(path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read the flow ({error})") from error
