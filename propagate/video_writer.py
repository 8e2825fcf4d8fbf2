"""Videos people watch: H.264 MP4 that browsers play, written one frame at a time.

H.264 (``avc1``, 4:2:0, ``+faststart``) is what Chrome, Firefox and Safari all play. It is
written with PyAV, whose wheels carry FFmpeg with libx264, in process and from numpy
frames (no ffmpeg executable and no pipe to manage). Where PyAV or its H.264 encoder is
missing, the writer falls back to OpenCV's MPEG-4 Part 2 (``mp4v``), which desktop players
open but browsers do not, and warns once.

Frames are RGB ``uint8`` arrays ``(H, W, 3)``; odd sizes are cropped to even ones (4:2:0
needs them). The file appears under its name only when :meth:`VideoWriter.close` finishes
(written to ``.<name>.<random>.tmp`` beside it, then renamed), so a killed run leaves no
half video under the real name.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from corr.errors import OutputError

try:  # optional: the fallback below keeps videos working without it
    import av
except ImportError:  # pragma: no cover - exercised where PyAV is not installed
    av = None

H264 = "h264"
MPEG4 = "mp4v"
H264_MIME = 'video/mp4; codecs="avc1.42E01E"'  # what a page's <video> source declares


def h264_available() -> bool:
    """Whether PyAV and an H.264 encoder (libx264) are installed."""
    if av is None:
        return False
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # noqa: BLE001 - PyAV raises codec-specific errors
        return False
    return True


class VideoWriter:
    """Write RGB frames to an MP4, H.264 when possible; use as a context manager.

    ``codec`` is :data:`H264` (default; falls back to :data:`MPEG4` with a warning when the
    encoder is missing) or :data:`MPEG4`. ``quality`` is x264's CRF (lower is better; 20 is
    visually lossless for overlays). The codec actually used is ``self.codec``.
    """

    def __init__(self, path: str | Path, fps: float = 10.0, codec: str = H264, quality: int = 20):
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = quality
        if codec not in (H264, MPEG4):
            raise ValueError(f"codec must be {H264!r} or {MPEG4!r}, got {codec!r}")
        if codec == H264 and not h264_available():
            warnings.warn(f"{self.path}: PyAV with libx264 is not installed, so this video is MPEG-4 Part 2, "
                          "which browsers do not play; `pip install av` gives H.264", stacklevel=2)
            codec = MPEG4
        self.codec = codec
        self.frames_written = 0
        self._size: tuple[int, int] | None = None
        self._tmp: str | None = None
        self._container = self._stream = self._cv_writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB frame; every frame must have the first frame's size."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"{self.path}: a frame must be (H, W, 3) RGB, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        even = (h - h % 2, w - w % 2)
        if self._size is None:
            if min(even) < 2:
                raise ValueError(f"{self.path}: a {h}x{w} frame is too small for a video")
            self._open(*even)
        elif even != self._size:
            raise ValueError(f"{self.path}: frame {self.frames_written} is {h}x{w}, the first was "
                             f"{self._size[0]}x{self._size[1]} (after cropping to even sizes)")
        frame = np.ascontiguousarray(rgb[:even[0], :even[1]], dtype=np.uint8)
        try:
            if self.codec == H264:
                packet_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                for packet in self._stream.encode(packet_frame):
                    self._container.mux(packet)
            else:
                self._cv_writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        except OSError as error:
            self.abort()
            raise OutputError(f"{self.path}: cannot write ({error})") from error
        self.frames_written += 1

    def close(self) -> Path:
        """Finish the file and give it its name; a video without frames is an error."""
        if self._size is None:
            raise ValueError(f"{self.path}: no frames were written")
        try:
            if self.codec == H264:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
            else:
                self._cv_writer.release()
            os.replace(self._tmp, self.path)
        except OSError as error:
            self.abort()
            raise OutputError(f"{self.path}: cannot write ({error})") from error
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        try:
            if self._container is not None:
                self._container.close()
            if self._cv_writer is not None:
                self._cv_writer.release()
        except Exception:  # noqa: BLE001 - best effort while already failing
            pass
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None

    def _open(self, height: int, width: int) -> None:
        self._size = (height, width)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # OpenCV picks its container from the name's extension, so its temporary keeps one
            suffix = ".tmp" if self.codec == H264 else f".tmp{self.path.suffix}"
            fd, self._tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=suffix)
            os.close(fd)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write ({error.strerror or error})") from error
        if self.codec == H264:
            self._container = av.open(self._tmp, mode="w", format="mp4", options={"movflags": "+faststart"})
            rate = Fraction(self.fps).limit_denominator(1001)
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            # baseline-compatible settings every browser decodes
            self._stream.options = {"crf": str(self.quality), "preset": "veryfast", "profile": "baseline"}
        else:
            self._cv_writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*MPEG4), self.fps, (width, height))
            if not self._cv_writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot open an MP4 writer")


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 10.0, codec: str = H264) -> Path:
    """Write RGB frames (any iterable, consumed one at a time) as an MP4; see :class:`VideoWriter`."""
    with VideoWriter(path, fps=fps, codec=codec) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def video_codec(path: str | Path) -> str:
    """The codec name of a video file's first video stream, as FFmpeg or OpenCV reports it."""
    if av is not None:
        with av.open(str(path)) as container:
            return container.streams.video[0].codec_context.name
    capture = cv2.VideoCapture(str(path))
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
    capture.release()
    return "".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip().lower()
