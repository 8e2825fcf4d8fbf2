"""Decoding videos and frame folders: the backend (decord or OpenCV), container metadata
(:func:`probe_video`), frames by index (:func:`read_clip`) and one at a time from an open
video (:class:`FrameReader`).

A video file is decoded by decord, or by OpenCV where decord is not importable
(``backend`` forces one); a frame folder is its JPEG/PNG images in natural sort order.
Every failure is a :class:`VideoReadError` naming the file. Frames are ``uint8 (T, H, W, 3)`` RGB.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from corr.errors import OptionError, UserError

logger = logging.getLogger("corr.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_logged_backends: set[str] = set()


class VideoReadError(UserError, RuntimeError):
    """A video (or frame folder) could not be read; the message names the file."""


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """``"auto"`` -> ``"decord"`` if importable else ``"opencv"``; checks forced choices."""
    if backend not in ("auto", "decord", "opencv"):
        raise OptionError(f"backend must be 'auto', 'decord' or 'opencv', got {backend!r}")
    if backend == "auto":
        backend = "decord" if _decord_available() else "opencv"
    elif backend == "decord" and not _decord_available():
        raise ImportError("backend='decord' was requested but decord is not importable (pip install decord)")
    if backend not in _logged_backends:
        _logged_backends.add(backend)
        logger.info("video decoding backend: %s", backend)
    return backend


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: str | Path) -> list[str]:
    """Image files of a frame folder in natural sort order (the frame order)."""
    names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    return sorted(names, key=_natural_key)


def probe_video(path: str, backend: str) -> tuple[int, float]:
    """Container metadata ``(num_frames, fps)`` of a video file, without decoding frames.

    A frame folder gives ``(number of images, 0.0)`` (its fps is not stored on disk).
    Raises :class:`VideoReadError` naming the file when the metadata cannot be read.
    """
    if os.path.isdir(path):
        n = len(list_frame_files(path))
        if n == 0:
            raise VideoReadError(f"{path}: frame folder holds no JPEG/PNG images")
        return n, 0.0
    if backend == "decord":
        import decord

        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            n, fps = len(reader), float(reader.get_avg_fps())
        except Exception as e:  # decord raises its own DECORDError / RuntimeError types
            raise VideoReadError(f"{path}: decord cannot open the video ({short_reason(e)})") from None
    else:
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise VideoReadError(f"{path}: OpenCV cannot open the video")
            n = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            if n <= 0:  # some containers (webm/mkv) store no frame count: count by grabbing
                n = 0
                while cap.grab():
                    n += 1
        finally:
            cap.release()
    if n <= 0:
        raise VideoReadError(f"{path}: the video has no frames")
    if not math.isfinite(fps) or fps <= 0:
        fps = 0.0
    return n, fps


def short_reason(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def read_clip(path: str | Path, frame_indices: Sequence[int], backend: str = "auto") -> np.ndarray:
    """Decode frames ``frame_indices`` (0-based) of a video file or frame folder.

    Returns ``uint8`` RGB frames shaped ``(T, H, W, 3)`` in the order of ``frame_indices``.
    Raises :class:`VideoReadError` naming the file when it cannot be read.
    """
    path = str(path)
    indices = [int(i) for i in frame_indices]
    if not indices:
        raise ValueError("read_clip needs at least one frame index")
    if min(indices) < 0:
        raise VideoReadError(f"{path}: negative frame index in {indices}")
    if os.path.isdir(path):
        return _read_frame_folder(path, indices)
    backend = resolve_backend(backend)
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such file")
    if backend == "decord":
        return _read_decord(path, indices)
    return _read_opencv(path, indices)


def _read_frame_folder(path: str, indices: list[int]) -> np.ndarray:
    names = list_frame_files(path)
    if max(indices) >= len(names):
        raise VideoReadError(f"{path}: frame {max(indices)} requested but the folder holds {len(names)} images")
    frames = [_read_frame_folder_file(path, names[i]) for i in indices]
    if len({f.shape for f in frames}) > 1:
        raise VideoReadError(f"{path}: frames have different sizes {sorted({f.shape for f in frames})}")
    return np.stack(frames)


def _read_decord(path: str, indices: list[int]) -> np.ndarray:
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        if max(indices) >= len(reader):
            raise VideoReadError(f"{path}: frame {max(indices)} requested but the video has {len(reader)} frames")
        frames = reader.get_batch(indices).asnumpy()
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: decord failed to decode frames {indices} ({short_reason(e)})") from None
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoReadError(f"{path}: decord returned frames shaped {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


# Seek (set CAP_PROP_POS_FRAMES) when the first wanted frame is further than this from the
# current position; closer frames are reached by grabbing, which is exact on every codec.
_OPENCV_SEEK_MIN_GAP = 16


def _read_opencv(path: str, indices: list[int]) -> np.ndarray:
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoReadError(f"{path}: OpenCV cannot open the video")
        wanted = sorted(set(indices))
        decoded: dict[int, np.ndarray] = {}
        position = 0  # index of the frame the next grab() returns
        for index in wanted:
            if index - position > _OPENCV_SEEK_MIN_GAP:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                position = index
            while position <= index:
                if not cap.grab():
                    raise VideoReadError(f"{path}: OpenCV could not read frame {position} (video ended or is corrupt)")
                position += 1
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                raise VideoReadError(f"{path}: OpenCV could not decode frame {index}")
            decoded[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    return np.stack([decoded[i] for i in indices])


class FrameReader:
    """The frames of a video file or frame folder, one at a time: ``read(t)`` -> ``uint8 (H, W, 3)`` RGB.

    Reading frames in increasing order decodes each once (the file stays open, frames are
    grabbed in sequence); an earlier frame, or one more than a few frames ahead, is reached
    by seeking. ``num_frames`` and ``fps`` come from :func:`probe_video` (a frame folder's
    fps is 0.0), ``size`` ``(H, W)`` from the first frame. Use as a context manager, or call
    :meth:`close`.

    The backend is OpenCV unless ``backend`` says otherwise: its sequential decoder holds
    one frame, whereas reading a long video frame by frame through decord's random-access
    reader was measured to take memory that grows with the video's length (about 1 MB per
    480p frame), which is what this reader exists to avoid.
    """

    def __init__(self, path: str | Path, backend: str = "opencv"):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise VideoReadError(f"{self.path}: no such file or folder")
        self._folder = os.path.isdir(self.path)
        self._backend = "folder" if self._folder else resolve_backend(backend)
        self.num_frames, self.fps = probe_video(self.path, self._backend)
        self._names = list_frame_files(self.path) if self._folder else None
        self._reader = None  # decord.VideoReader or cv2.VideoCapture, opened on the first read
        self._position = 0   # OpenCV: the index of the frame the next grab() returns
        self.size = tuple(self.read(0).shape[:2])

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, t: int) -> np.ndarray:
        """Frame ``t`` (0-based) as ``uint8 (H, W, 3)`` RGB."""
        if not 0 <= t < self.num_frames:
            raise VideoReadError(f"{self.path}: frame {t} requested but the video has {self.num_frames} frames")
        if self._folder:
            frame = _read_frame_folder_file(self.path, self._names[t])
        elif self._backend == "decord":
            frame = self._read_decord(t)
        else:
            frame = self._read_opencv(t)
        if hasattr(self, "size") and tuple(frame.shape[:2]) != self.size:
            raise VideoReadError(f"{self.path}: frame {t} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is "
                                 f"{self.size[1]}x{self.size[0]}")
        return frame

    def close(self) -> None:
        if self._backend == "opencv" and self._reader is not None:
            self._reader.release()
        self._reader = None

    def _read_decord(self, t: int) -> np.ndarray:
        import decord

        try:
            if self._reader is None:
                self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
            return np.ascontiguousarray(self._reader[t].asnumpy(), dtype=np.uint8)
        except Exception as e:
            raise VideoReadError(f"{self.path}: decord failed to decode frame {t} ({short_reason(e)})") from None

    def _read_opencv(self, t: int) -> np.ndarray:
        if self._reader is None:
            self._reader = cv2.VideoCapture(self.path)
            self._position = 0
            if not self._reader.isOpened():
                raise VideoReadError(f"{self.path}: OpenCV cannot open the video")
        cap = self._reader
        if t < self._position or t - self._position > _OPENCV_SEEK_MIN_GAP:
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            self._position = t
        while self._position <= t:
            if not cap.grab():
                raise VideoReadError(f"{self.path}: OpenCV could not read frame {self._position} "
                                     f"(video ended or is corrupt)")
            self._position += 1
        ok, frame = cap.retrieve()
        if not ok or frame is None:
            raise VideoReadError(f"{self.path}: OpenCV could not decode frame {t}")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _read_frame_folder_file(folder: str, name: str) -> np.ndarray:
    """One image of a frame folder as ``uint8 (H, W, 3)`` RGB."""
    image = cv2.imread(os.path.join(folder, name), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(f"{os.path.join(folder, name)}: cannot decode the image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
