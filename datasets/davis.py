"""Reader for DAVIS-2017 (semi-supervised video object segmentation).

On-disk layout (also produced by :mod:`datasets.synthetic`)::

    <root>/JPEGImages/<res>/<seq>/00000.jpg ...   RGB frames
    <root>/Annotations/<res>/<seq>/00000.png ...  indexed PNGs: 0 background, 1..N objects,
                                                  255 void (see datasets.palette)
    <root>/ImageSets/2017/<split>.txt             one sequence name per line

``<res>`` is ``480p`` or ``Full-Resolution``. Sequences may differ in size (DAVIS-2017 val
has 854x480, 910x480 and 1152x480 videos). Every frame is annotated in train/val; the
test-dev layout annotates only the first frame, which is accepted
(``DavisSequence.fully_annotated`` is then False).

Opening a dataset validates the listing eagerly: frame numbering without gaps, one
annotation per frame (or only frame 0's), the image headers (size, annotation mode), and
that frame 0's annotation holds an object (a frame-0 mask of only 0 and 255 is an error
naming the file). Headers are a few hundred bytes per file; other pixels are read only when
asked for. ``binary_masks=True`` reads id 255 as object 1 instead of void, for binary masks
saved as 0/255.

Object ids follow the official scorer (:func:`count_objects`): ids ``1..N`` with ``N`` the
largest id in the first frame's annotation, ignoring the void id :data:`VOID_ID` = 255.

Arrays: frames ``uint8 (H, W, 3)`` RGB; annotations ``uint8 (H, W)`` ids; ``size`` is
``(H, W)``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datasets.frames import (
    DatasetError,
    FrameVideo,
    VideoSet,
    find_split_file,
    image_header,
    listing_sha256,
    read_name_list,
)
from datasets.palette import ID_MODES, VOID_ID, read_indexed_png, write_indexed_png

__all__ = ["DatasetError", "DavisDataset", "DavisSequence", "read_indexed_png",
           "write_indexed_png", "count_objects", "RESOLUTIONS", "VOID_ID"]

RESOLUTIONS = ("480p", "Full-Resolution")
FRAME_SUFFIX = ".jpg"
ANNOTATION_SUFFIX = ".png"
_NUMBERED = re.compile(r"^\d+$")


def count_objects(first_ids: np.ndarray) -> int:
    """N, the object count of a sequence, from frame 0's id map (any shape, integer ids).

    N = the largest id other than the void id 255, 0 when there is none: the official
    scorer's rule (docs/benchmarks.md, DAVIS). An id below N missing from frame 0 still
    counts as an object (its masks are then empty).
    """
    ids = np.asarray(first_ids)
    labels = ids[ids != VOID_ID]
    return int(labels.max()) if labels.size else 0


@dataclass
class DavisSequence(FrameVideo):
    """One video: its frame files and annotation files (ordered by frame number).

    ``annotation_paths[i]`` annotates ``frame_paths[i]``; in the first-frame-only layout
    (DAVIS test-dev) ``annotation_paths`` holds frame 0's annotation alone.
    """

    annotation_paths: list[Path]
    binary_masks: bool = False
    _object_ids: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fully_annotated(self) -> bool:
        """True when every frame has an annotation (train/val), False for first-frame-only."""
        return len(self.annotation_paths) == len(self.frame_paths)

    def read_annotation(self, i: int) -> np.ndarray:
        """Annotation of frame ``i`` as ``uint8 (H, W)`` ids (0 background, 255 void; with
        ``binary_masks`` 255 is object 1)."""
        path = self.annotation_paths[self.frame_index(i, len(self.annotation_paths), "annotation")]
        try:
            ids = read_indexed_png(path)
        except ValueError as error:
            raise DatasetError(f"sequence {self.name!r}: {error}") from error
        if ids.shape != self.size:
            raise DatasetError(f"{path}: annotation is {ids.shape[1]}x{ids.shape[0]} (WxH) but "
                               f"its frame is {self.size[1]}x{self.size[0]}")
        return np.where(ids == VOID_ID, 1, ids).astype(np.uint8) if self.binary_masks else ids

    def check_first_annotation(self) -> None:
        """A DatasetError naming frame 0's annotation file when it holds no object id (nothing to
        propagate or score), with a hint when it looks like a binary 0/255 mask."""
        if self.object_ids():
            return
        ids = np.unique(self.read_annotation(0))
        hint = (" It looks like a binary mask saved as 0/255: give --binary-masks to read 255 as object 1."
                if VOID_ID in ids else "")
        raise DatasetError(f"{self.annotation_paths[0]}: the first frame's annotation holds no object (ids "
                           f"{ids.tolist()}; 0 is background and {VOID_ID} void).{hint}")

    def annotations(self) -> np.ndarray:
        """Every frame's annotation, ``uint8 (T, H, W)``; needs a fully annotated sequence."""
        if not self.fully_annotated:
            raise DatasetError(f"sequence {self.name!r} annotates {len(self.annotation_paths)} of "
                               f"{self.num_frames} frames (first-frame-only layout); use "
                               "read_annotation(0)")
        return np.stack([self.read_annotation(i) for i in range(self.num_frames)])

    def object_ids(self) -> list[int]:
        """``[1, ..., N]`` with ``N`` = :func:`count_objects` of frame 0's annotation."""
        if self._object_ids is None:
            self._object_ids = list(range(1, count_objects(self.read_annotation(0)) + 1))
        return list(self._object_ids)


class DavisDataset(VideoSet[DavisSequence]):
    """The sequences of one DAVIS-2017 split, validated on opening, read lazily.

    ``split`` is a split name (``ImageSets/2017/<split>.txt`` under ``root``) or the path
    of a split file (any ``*.txt``; a relative path is tried from the working directory,
    then from ``root``). ``check_headers`` (default True) also opens each image's header
    to check annotation modes and that every annotation has its frame's size. ``names``
    lists the sequences in split-file order.
    """

    def __init__(self, root: str | Path, split: str = "val", resolution: str = "480p",
                 check_headers: bool = True, binary_masks: bool = False):
        self.root = Path(root)
        self.resolution = resolution
        self.split = str(split)
        self.binary_masks = binary_masks
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: DAVIS root folder not found")
        self.split_file = find_split_file(self.root, self.split, self.root / "ImageSets" / "2017" / f"{split}.txt")
        sequences = [_list_sequence(self.root, resolution, name, binary_masks)
                     for name in read_name_list(self.split_file)]
        self._set_videos(sequences, self.split_file)
        if check_headers:
            for sequence in self:
                _check_sequence_headers(sequence)
                sequence.check_first_annotation()

    @property
    def sequences(self) -> list[str]:
        """The sequence names, in split-file order (DAVIS's word for ``names``)."""
        return self.names

    def identity(self) -> dict:
        """What was read, for result files: names, counts and a hash of the file listing.

        ``listing_sha256`` (:func:`datasets.frames.listing_sha256`) covers every frame and
        annotation of the split, with paths relative to ``root``.
        """
        paths = [path for sequence in self for path in [*sequence.frame_paths, *sequence.annotation_paths]]
        return {
            "name": "DAVIS-2017",
            "root": str(self.root.resolve()),
            "split": self.split,
            "resolution": self.resolution,
            "num_sequences": len(self),
            "num_frames": sum(sequence.num_frames for sequence in self),
            "listing_sha256": listing_sha256(paths, self.root),
            **({"binary_masks": True} if self.binary_masks else {}),
        }

    def __repr__(self) -> str:
        return (f"DavisDataset(root={str(self.root)!r}, split={self.split!r}, "
                f"resolution={self.resolution!r}, sequences={len(self)})")


def _numbered_files(folder: Path, suffix: str, what: str) -> dict[int, Path]:
    """``{frame number: path}`` of the ``*<suffix>`` files of ``folder`` (hidden ones skipped)."""
    files: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() != suffix:
            continue
        if not _NUMBERED.match(path.stem):
            raise DatasetError(f"{path}: {what} file name is not a frame number")
        number = int(path.stem)
        if number in files:
            raise DatasetError(f"{path}: frame number {number} also used by {files[number].name}")
        files[number] = path
    return dict(sorted(files.items()))


def _list_sequence(root: Path, resolution: str, name: str, binary_masks: bool = False) -> DavisSequence:
    """Find a sequence's files and check their numbering (names only, no file is opened)."""
    frame_dir = root / "JPEGImages" / resolution / name
    annotation_dir = root / "Annotations" / resolution / name
    if not frame_dir.is_dir():
        raise DatasetError(f"{frame_dir}: frame folder of sequence {name!r} not found")
    if not annotation_dir.is_dir():
        raise DatasetError(f"{annotation_dir}: annotation folder of sequence {name!r} not found")
    frames = _numbered_files(frame_dir, FRAME_SUFFIX, "frame")
    annotations = _numbered_files(annotation_dir, ANNOTATION_SUFFIX, "annotation")
    if not frames:
        raise DatasetError(f"{frame_dir}: no {FRAME_SUFFIX} frames")
    numbers = list(frames)
    width = len(frames[numbers[0]].stem)
    for previous, number in zip(numbers, numbers[1:]):
        if number != previous + 1:
            missing = frame_dir / f"{previous + 1:0{width}d}{FRAME_SUFFIX}"
            raise DatasetError(f"{missing}: frame missing (numbering jumps from "
                               f"{frames[previous].name} to {frames[number].name})")
    if not annotations:
        raise DatasetError(f"{annotation_dir}: no {ANNOTATION_SUFFIX} annotations")
    first_only = list(annotations) == [numbers[0]]
    if not first_only:
        for number, path in annotations.items():
            if number not in frames:
                frame = frame_dir / f"{path.stem}{FRAME_SUFFIX}"
                raise DatasetError(f"{path}: annotation has no frame {frame} "
                                   f"({len(frames)} frames, {len(annotations)} annotations)")
        for number, path in frames.items():
            if number not in annotations:
                expected = annotation_dir / f"{path.stem}{ANNOTATION_SUFFIX}"
                raise DatasetError(f"{expected}: annotation missing ({len(frames)} frames, "
                                   f"{len(annotations)} annotations; only the first-frame-only "
                                   "layout may annotate fewer frames)")
    return DavisSequence(name=name, frame_paths=list(frames.values()),
                         annotation_paths=list(annotations.values()), binary_masks=binary_masks)


def _check_sequence_headers(sequence: DavisSequence) -> None:
    """All frames share one size; each annotation is an id map of its frame's size."""
    width, height, _ = image_header(sequence.frame_paths[0])
    for path in sequence.frame_paths[1:]:
        w, h, _ = image_header(path)
        if (w, h) != (width, height):
            raise DatasetError(f"{path}: frame is {w}x{h} (WxH) but {sequence.frame_paths[0].name} "
                               f"is {width}x{height}")
    for path in sequence.annotation_paths:
        w, h, mode = image_header(path)
        if mode not in ID_MODES:
            raise DatasetError(f"{path}: annotation has mode {mode!r}; expected an indexed "
                               "palette PNG (mode 'P') or grey ids (mode 'L')")
        if (w, h) != (width, height):
            raise DatasetError(f"{path}: annotation is {w}x{h} (WxH) but its frame is "
                               f"{width}x{height}")
    sequence._size = (height, width)
