"""What every benchmark reader shares: videos stored as image files, and named sets of them.

* :class:`FrameVideo`: a video as an ordered list of frame files, read lazily as
  ``uint8 (H, W, 3)`` RGB; ``size`` is ``(H, W)``, read from the first frame's header.
* :class:`VideoSet`: the ordered, uniquely named videos of one split, indexable by position
  or name.
* Split files (:func:`find_split_file`, :func:`read_name_list`) and the ``listing_sha256``
  identity of what was read (:func:`listing_sha256`).

Every problem with the files on disk is a :class:`DatasetError` whose message names the file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from corr.errors import UserError

__all__ = ["DatasetError", "FrameVideo", "VideoSet", "find_split_file", "image_header", "listing_sha256",
           "read_name_list", "read_rgb_frame"]


class DatasetError(UserError, ValueError):
    """A dataset on disk is missing a file or holds a malformed one (message names it)."""


def image_header(path: Path) -> tuple[int, int, str]:
    """``(width, height, mode)`` from an image file's header (pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            return image.width, image.height, image.mode
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from error


def read_rgb_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image at ``path`` as ``uint8 (H, W, 3)`` RGB; a missing or unreadable file, or one
    whose size is not ``size = (H, W)`` (that of the video's other frames), is a DatasetError."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: frame file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DatasetError(f"{path}: cannot read frame ({error})") from error
    if rgb.shape[:2] != tuple(size):
        raise DatasetError(f"{path}: frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH), the video's "
                           f"frames are {size[1]}x{size[0]}")
    return rgb


@dataclass
class FrameVideo:
    """A video stored as image files, ``frame_paths`` in frame order."""

    name: str
    frame_paths: list[Path]
    _size: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames, from the first frame's header."""
        if self._size is None:
            width, height, _ = image_header(self.frame_paths[0])
            self._size = (height, width)
        return self._size

    def frame_index(self, i: int, count: int | None = None, what: str = "frame") -> int:
        """``i`` (negative counts from the end) as an index into ``count`` items (default: the frames)."""
        count = self.num_frames if count is None else count
        if not -count <= i < count:
            raise IndexError(f"video {self.name!r}: {what} index {i} out of range (has {count})")
        return i % count

    def read_frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``uint8 (H, W, 3)`` RGB."""
        return read_rgb_frame(self.frame_paths[self.frame_index(i)], self.size)

    def read_frames(self) -> np.ndarray:
        """All frames as ``uint8 (T, H, W, 3)``."""
        return np.stack([self.read_frame(i) for i in range(self.num_frames)])


VideoT = TypeVar("VideoT", bound=FrameVideo)


class VideoSet(Generic[VideoT]):
    """The ordered videos of one split; ``set[i]`` by position, ``set["name"]`` by name.

    Subclasses call :meth:`_set_videos` once, with the videos in split order; ``where``
    (the split file) is named in the error for a video listed twice.
    """

    names: list[str]
    _by_name: dict[str, VideoT]

    def _set_videos(self, videos: Iterable[VideoT], where: Path) -> None:
        self.names, self._by_name = [], {}
        for video in videos:
            if video.name in self._by_name:
                raise DatasetError(f"{where}: video {video.name!r} is listed twice")
            self.names.append(video.name)
            self._by_name[video.name] = video
        if not self.names:
            raise DatasetError(f"{where}: split file lists no videos")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[VideoT]:
        return (self._by_name[name] for name in self.names)

    def __getitem__(self, key: int | str) -> VideoT:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"no video {key!r} in {self!r}")
            return self._by_name[key]
        index = int(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"video index {index} out of range ({len(self)} videos)")
        return self._by_name[self.names[index]]


def find_split_file(root: Path, split: str, default: Path) -> Path:
    """The split file: ``split`` itself when it names a ``*.txt`` (relative paths are tried
    from the working directory, then from ``root``), else ``default``; it must exist."""
    if split.endswith(".txt"):
        path = Path(split)
        if not path.is_absolute() and not path.exists() and (root / path).exists():
            path = root / path
    else:
        path = default
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    return path


def read_name_list(path: Path) -> list[str]:
    """Names, one per line, in file order (blank lines and ``#`` comments skipped)."""
    names = [line.strip() for line in path.read_text().splitlines()]
    return [name for name in names if name and not name.startswith("#")]


def listing_sha256(paths: Iterable[Path], root: Path) -> str:
    """SHA-256 of the sorted lines ``"<path relative to root, with />\\t<size in bytes>\\n"``.

    It identifies what a dataset read without reading pixels: it changes when a file is
    added, removed or resized.
    """
    lines = sorted(f"{Path(os.path.relpath(path, root)).as_posix()}\t{os.stat(path).st_size}\n" for path in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
