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
``flow_back`` on the reference's pixels into the target.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
