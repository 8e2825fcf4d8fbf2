"""Reader for VIP (Video instance-level Parsing) human-part propagation (mIoU evaluation).

On-disk layout (VIP_Fine, also produced by :mod:`datasets.synthetic_tasks`)::

    <root>/Images/<video>/<frame>.jpg                   RGB frames
    <root>/Annotations/Category_ids/<video>/<frame>.png part class ids 0..19 (grey or indexed
                                                        PNG; ids, never colours)
    <root>/lists/val_videos.txt                         one video name per line

Frames are ordered by name (numerically when every name is a number). A frame's
annotation is the PNG with the same stem. Frame 0 must be annotated (it seeds the
propagation); a later frame without annotation is propagated but not scored
(``VipVideo.annotation_paths[i]`` is then ``None``). An annotation without a frame is an
error. Classes: :data:`VIP_CLASSES` (index = id).

Arrays: frames ``uint8 (H, W, 3)`` RGB; part maps ``uint8 (H, W)`` class ids.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.davis import DatasetError, image_header, read_rgb_frame
from datasets.palette import read_indexed_png

__all__ = ["VIP_CLASSES", "NUM_CLASSES", "VipVideo", "VipDataset"]

#: The 20 VIP part classes, index = class id (0 = background).
VIP_CLASSES = ("background", "hat", "hair", "sun-glasses", "upper-clothes", "dress", "coat", "socks",
               "pants", "gloves", "scarf", "skirt", "torso-skin", "face", "right-arm", "left-arm",
               "right-leg", "left-leg", "right-shoe", "left-shoe")
NUM_CLASSES = len(VIP_CLASSES)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
ANNOTATION_SUFFIX = ".png"


def _sort_key(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


@dataclass
class VipVideo:
    """One VIP video: frame files and, per frame, its annotation file or ``None``."""

    name: str
    frame_paths: list[Path]
    annotation_paths: list[Path | None]
    _size: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def annotated_frames(self) -> list[int]:
        """Indices of the frames that have an annotation (the scored ones are those > 0)."""
        return [i for i, path in enumerate(self.annotation_paths) if path is not None]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames (from the first frame's header)."""
        if self._size is None:
            width, height, _ = image_header(self.frame_paths[0])
            self._size = (height, width)
        return self._size

    def _check_index(self, i: int) -> int:
        if not -self.num_frames <= i < self.num_frames:
            raise IndexError(f"video {self.name!r}: frame index {i} out of range (has {self.num_frames})")
        return i % self.num_frames

    def read_frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``uint8 (H, W, 3)`` RGB."""
        path = self.frame_paths[self._check_index(i)]
        return read_rgb_frame(path, self.size)

    def read_frames(self) -> np.ndarray:
        """All frames as ``uint8 (T, H, W, 3)``."""
        return np.stack([self.read_frame(i) for i in range(self.num_frames)])

    def read_annotation(self, i: int) -> np.ndarray | None:
        """Part map of frame ``i`` as ``uint8 (H, W)`` class ids, or ``None`` if not annotated.

        VIP annotations may differ in size from their frames; they are returned as stored
        (the scorer resizes predictions to the annotation's size, nearest neighbour).
        """
        path = self.annotation_paths[self._check_index(i)]
        if path is None:
            return None
        try:
            ids = read_indexed_png(path)
        except ValueError as error:
            raise DatasetError(f"video {self.name!r}: {error}") from error
        return ids


class VipDataset:
    """The videos of one VIP split, listed and checked on opening, pixels read lazily.

    ``split`` is a split name (``lists/<split>_videos.txt`` under ``root``) or the path of a
    split file (``*.txt``; a relative path is tried from the working directory, then ``root``).
    """

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        self.split = str(split)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: VIP root folder not found")
        if self.split.endswith(".txt"):
            path = Path(self.split)
            if not path.is_absolute() and not path.exists() and (self.root / path).exists():
                path = self.root / path
        else:
            path = self.root / "lists" / f"{self.split}_videos.txt"
        if not path.is_file():
            raise DatasetError(f"{path}: split file not found")
        self.split_file = path
        names = [line.strip() for line in path.read_text().splitlines()]
        names = [name for name in names if name and not name.startswith("#")]
        if not names:
            raise DatasetError(f"{path}: split file lists no videos")
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise DatasetError(f"{path}: video {twice!r} is listed twice")
        self.names = names
        self._by_name = {name: self._list_video(name) for name in names}

    def _list_video(self, name: str) -> VipVideo:
        frame_dir = self.root / "Images" / name
        annotation_dir = self.root / "Annotations" / "Category_ids" / name
        if not frame_dir.is_dir():
            raise DatasetError(f"{frame_dir}: frame folder of video {name!r} not found")
        if not annotation_dir.is_dir():
            raise DatasetError(f"{annotation_dir}: annotation folder of video {name!r} not found")
        frames = sorted((p for p in frame_dir.iterdir()
                         if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")), key=_sort_key)
        if not frames:
            raise DatasetError(f"{frame_dir}: no frames (*.jpg)")
        stems = [p.stem for p in frames]
        if len(set(stems)) != len(stems):
            raise DatasetError(f"{frame_dir}: two frames share a name stem")
        annotations = {p.stem: p for p in annotation_dir.iterdir()
                       if p.suffix.lower() == ANNOTATION_SUFFIX and not p.name.startswith(".")}
        for stem, path in annotations.items():
            if stem not in stems:
                raise DatasetError(f"{path}: annotation has no frame in {frame_dir}")
        if stems[0] not in annotations:
            raise DatasetError(f"{annotation_dir / (stems[0] + ANNOTATION_SUFFIX)}: the first frame's "
                               "annotation is missing (it seeds the propagation)")
        return VipVideo(name=name, frame_paths=frames,
                        annotation_paths=[annotations.get(stem) for stem in stems])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return (self._by_name[name] for name in self.names)

    def __getitem__(self, key: int | str) -> VipVideo:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"no video {key!r} in split {self.split!r} ({len(self)} videos)")
            return self._by_name[key]
        return self._by_name[self.names[key]]

    def identity(self) -> dict:
        """Counts and ``listing_sha256`` (sorted ``"<path rel. to root>\\t<bytes>\\n"`` lines)."""
        lines = []
        for video in self:
            for path in [*video.frame_paths, *(p for p in video.annotation_paths if p is not None)]:
                lines.append(f"{path.relative_to(self.root).as_posix()}\t{os.stat(path).st_size}\n")
        return {
            "name": "VIP",
            "root": str(self.root.resolve()),
            "split": self.split,
            "num_videos": len(self),
            "num_frames": sum(video.num_frames for video in self),
            "num_annotated_frames": sum(len(video.annotated_frames) for video in self),
            "listing_sha256": hashlib.sha256("".join(sorted(lines)).encode()).hexdigest(),
        }

    def __repr__(self) -> str:
        return f"VipDataset(root={str(self.root)!r}, split={self.split!r}, videos={len(self)})"
