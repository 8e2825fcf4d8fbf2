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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.frames import DatasetError, FrameVideo, VideoSet, find_split_file, listing_sha256, read_name_list
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
class VipVideo(FrameVideo):
    """One VIP video: frame files and, per frame, its annotation file or ``None``."""

    annotation_paths: list[Path | None]

    @property
    def annotated_frames(self) -> list[int]:
        """Indices of the frames that have an annotation (the scored ones are those > 0)."""
        return [i for i, path in enumerate(self.annotation_paths) if path is not None]

    def read_annotation(self, i: int) -> np.ndarray | None:
        """Part map of frame ``i`` as ``uint8 (H, W)`` class ids, or ``None`` if not annotated.

        VIP annotations may differ in size from their frames; they are returned as stored
        (the scorer resizes predictions to the annotation's size, nearest neighbour).
        """
        path = self.annotation_paths[self.frame_index(i)]
        if path is None:
            return None
        try:
            ids = read_indexed_png(path)
        except ValueError as error:
            raise DatasetError(f"video {self.name!r}: {error}") from error
        return ids


class VipDataset(VideoSet[VipVideo]):
    """The videos of one VIP split, listed and checked on opening, pixels read lazily.

    ``split`` is a split name (``lists/<split>_videos.txt`` under ``root``) or the path of a
    split file (``*.txt``; a relative path is tried from the working directory, then ``root``).
    """

    def __init__(self, root: str | Path, split: str = "val"):
        self.root = Path(root)
        self.split = str(split)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: VIP root folder not found")
        self.split_file = find_split_file(self.root, self.split, self.root / "lists" / f"{self.split}_videos.txt")
        self._set_videos((self._list_video(name) for name in read_name_list(self.split_file)), self.split_file)

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

    def identity(self) -> dict:
        """Counts and ``listing_sha256`` (sorted ``"<path rel. to root>\\t<bytes>\\n"`` lines)."""
        paths = [path for video in self for path in [*video.frame_paths, *video.annotation_paths] if path is not None]
        return {
            "name": "VIP",
            "root": str(self.root.resolve()),
            "split": self.split,
            "num_videos": len(self),
            "num_frames": sum(video.num_frames for video in self),
            "num_annotated_frames": sum(len(video.annotated_frames) for video in self),
            "listing_sha256": listing_sha256(paths, self.root),
        }

    def __repr__(self) -> str:
        return f"VipDataset(root={str(self.root)!r}, split={self.split!r}, videos={len(self)})"
