"""Reader for TAP-Vid point tracking (DAVIS, RGB-Stacking, Kinetics) and its query sampling.

Files (as released by the TAP-Vid authors; also produced by :mod:`datasets.synthetic_tasks`):

* ``tapvid_davis.pkl``: a dict ``name -> record``;
* ``tapvid_rgb_stacking.pkl``: a list of records (named ``<file stem>-0000``, ...);
* Kinetics: a folder of shards ``0000_of_0010.pkl`` ... (any ``*.pkl``), each a list (or
  dict) of records whose frames are JPEG-encoded (a list of ``bytes``, one per frame).

A record is ``{"video": uint8 [T, H, W, 3] (or T JPEG bytes), "points": float [N, T, 2]
(x, y) in [0, 1], "occluded": bool [N, T]}``.

Coordinates (tapnet's convention): (0, 0) is the top-left corner of the top-left pixel, so
the centre of pixel (i, j) is (j + 0.5, i + 0.5); a normalised point ``p`` is at pixel
position ``p * (W, H)``. Query points are ``[t, y, x]``, tracks ``[x, y]``.

Protocol (docs/benchmarks.md, TAP-Vid; tapnet ``evaluation_datasets.py``): frames are
resized to 256x256 (Lanczos, as ``mediapy.resize_video``) and points scaled to it, so
metrics are in 256x256 pixel units. ``resolution=None`` (or another size) keeps the native (or that) size
with points in its pixels: a separate category, not comparable with 256x256 numbers.

Query modes: ``first`` (one query per track, at its first visible frame; tracks never visible
are dropped) and ``strided`` (every 5th frame, each track visible there becomes a query).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from corr.errors import OptionError
from datasets.frames import DatasetError

__all__ = ["QUERY_MODES", "STANDARD_RESOLUTION", "QUERY_STRIDE", "TapVidVideo", "TapVidSample",
           "TapVidDataset", "sample_queries_first", "sample_queries_strided", "resize_frames",
           "load_tapvid_pickle", "resolution_category"]

#: TAP-Vid query modes: how queries are sampled, and so which frames are scored (docs/benchmarks.md).
QUERY_MODES = ("first", "strided")
STANDARD_RESOLUTION = (256, 256)
QUERY_STRIDE = 5


# ----------------------------------------------------------------------------- query sampling

def sample_queries_first(occluded: np.ndarray, points: np.ndarray) -> dict[str, np.ndarray]:
    """One query per track at its first visible frame (tapnet ``sample_queries_first``).

    occluded: bool [N, T]; points: float [N, T, 2] (x, y) in pixels. Tracks never visible are
    dropped. Returns ``query_points`` [Q, 3] (t, y, x), ``target_points`` [Q, T, 2],
    ``occluded`` [Q, T] and ``track_ids`` [Q] (index of each query's track in the input).
    """
    occluded = np.asarray(occluded, dtype=bool)
    points = np.asarray(points)
    track_ids = np.flatnonzero((~occluded).any(axis=1))
    first = np.argmax(~occluded[track_ids], axis=1)  # first visible frame of each kept track
    xy = points[track_ids, first]                    # (Q, 2)
    query_points = np.stack([first.astype(points.dtype), xy[:, 1], xy[:, 0]], axis=-1).reshape(-1, 3)
    return {"query_points": query_points, "target_points": points[track_ids],
            "occluded": occluded[track_ids], "track_ids": track_ids}


def sample_queries_strided(occluded: np.ndarray, points: np.ndarray,
                           stride: int = QUERY_STRIDE) -> dict[str, np.ndarray]:
    """Queries every ``stride`` frames from frame 0 (tapnet ``sample_queries_strided``).

    For t = 0, stride, 2 stride, ...: each track visible in frame t gives a query [t, y, x]
    with its whole track as target; queries are ordered by frame, then by track. Same
    outputs as :func:`sample_queries_first`; a track may appear several times.
    """
    occluded = np.asarray(occluded, dtype=bool)
    points = np.asarray(points)
    num_tracks, num_frames = occluded.shape
    queries, track_ids = [], []
    for t in range(0, num_frames, stride):
        visible = np.flatnonzero(~occluded[:, t])
        xy = points[visible, t]
        queries.append(np.stack([np.full(len(visible), t, dtype=points.dtype), xy[:, 1], xy[:, 0]], axis=-1))
        track_ids.append(visible)
    track_ids = np.concatenate(track_ids) if track_ids else np.zeros(0, np.int64)
    query_points = np.concatenate(queries).reshape(-1, 3) if queries else np.zeros((0, 3), points.dtype)
    return {"query_points": query_points, "target_points": points[track_ids],
            "occluded": occluded[track_ids], "track_ids": track_ids}


# ----------------------------------------------------------------------------- records

def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size[0], size[1], 3] with a Lanczos filter (as mediapy)."""
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
                     for frame in frames])


def resolution_category(resolution: tuple[int, int] | None) -> str:
    """Label of a run's resolution: ``"256x256"`` (the standard protocol), ``"HxW"`` or ``"native"``."""
    return "native" if resolution is None else f"{int(resolution[0])}x{int(resolution[1])}"


@dataclass
class TapVidVideo:
    """One TAP-Vid record as stored: frames (arrays or JPEG bytes) and normalised tracks.

    video:    uint8 [T, H, W, 3], or a list of T JPEG ``bytes`` (Kinetics)
    points:   float32 [N, T, 2] (x, y) in [0, 1] (corner convention)
    occluded: bool [N, T]
    """

    name: str
    video: np.ndarray | list
    points: np.ndarray
    occluded: np.ndarray
    source: Path

    @property
    def num_frames(self) -> int:
        return len(self.video)

    def read_frames(self) -> np.ndarray:
        """Native frames uint8 [T, H, W, 3] (JPEG frames decoded)."""
        if isinstance(self.video, np.ndarray) and self.video.dtype == np.uint8 and self.video.ndim == 4:
            return self.video
        frames = []
        for index, data in enumerate(self.video):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except (UnidentifiedImageError, OSError, SyntaxError, TypeError) as error:
                raise DatasetError(f"{self.source}: video {self.name!r} frame {index}: cannot decode "
                                   f"JPEG ({error})") from error
        if len({frame.shape for frame in frames}) != 1:
            raise DatasetError(f"{self.source}: video {self.name!r}: frames differ in size")
        return np.stack(frames)

    def sample(self, query_mode: str = "first",
               resolution: tuple[int, int] | None = STANDARD_RESOLUTION) -> "TapVidSample":
        """Frames resized to ``resolution`` (None = native), points scaled to it, queries sampled."""
        if query_mode not in QUERY_MODES:
            raise OptionError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        frames = self.read_frames()
        if resolution is not None:
            frames = resize_frames(frames, (int(resolution[0]), int(resolution[1])))
        height, width = frames.shape[1:3]
        points = self.points.astype(np.float64) * np.array([width, height])
        if query_mode == "first":
            queries = sample_queries_first(self.occluded, points)
        else:
            queries = sample_queries_strided(self.occluded, points)
        return TapVidSample(name=self.name, frames=frames, query_mode=query_mode,
                            resolution=(height, width), **queries)


@dataclass
class TapVidSample:
    """A video ready for tracking and scoring (one element of tapnet's evaluation datasets).

    frames:        uint8 [T, H, W, 3] at ``resolution``
    query_points:  float64 [Q, 3] (t, y, x), pixels of ``resolution``, corner convention
    target_points: float64 [Q, T, 2] (x, y), same units: the ground-truth tracks
    occluded:      bool [Q, T] ground-truth occlusion
    track_ids:     int [Q] track of the record each query comes from
    """

    name: str
    frames: np.ndarray
    query_points: np.ndarray
    target_points: np.ndarray
    occluded: np.ndarray
    track_ids: np.ndarray
    query_mode: str
    resolution: tuple[int, int]


def _validate_record(record, name: str, source: Path) -> TapVidVideo:
    where = f"{source}: video {name!r}"
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a record must be a dict, got {type(record).__name__}")
    missing = [key for key in ("video", "points", "occluded") if key not in record]
    if missing:
        raise DatasetError(f"{where}: record lacks {missing} (has {sorted(record)})")
    video = record["video"]
    if isinstance(video, np.ndarray) and video.dtype != object:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise DatasetError(f"{where}: video has shape {video.shape}, expected [T, H, W, 3]")
        video = video.astype(np.uint8, copy=False)
    elif not all(isinstance(frame, (bytes, bytearray)) for frame in video):
        raise DatasetError(f"{where}: video must be a uint8 [T, H, W, 3] array or a list of JPEG bytes")
    points = np.asarray(record["points"], dtype=np.float32)
    occluded = np.asarray(record["occluded"]).astype(bool)
    num_frames = len(video)
    if points.ndim != 3 or points.shape[1:] != (num_frames, 2):
        raise DatasetError(f"{where}: points have shape {points.shape}, expected [N, {num_frames}, 2]")
    if occluded.shape != points.shape[:2]:
        raise DatasetError(f"{where}: occluded has shape {occluded.shape}, expected {points.shape[:2]}")
    return TapVidVideo(name=name, video=video, points=points, occluded=occluded, source=source)


def _read_pickle(path: Path) -> tuple[bool, list[TapVidVideo]]:
    """(content is a dict, its validated records) of one TAP-Vid pickle."""
    try:
        with open(path, "rb") as file:
            content = pickle.load(file)
    except FileNotFoundError:
        raise DatasetError(f"{path}: TAP-Vid pickle not found") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, IndexError) as error:
        raise DatasetError(f"{path}: cannot unpickle ({type(error).__name__}: {error})") from error
    if isinstance(content, dict):
        items = [(str(name), record) for name, record in content.items()]
    elif isinstance(content, (list, tuple)):
        items = [(f"{path.stem}-{index:04d}", record) for index, record in enumerate(content)]
    else:
        raise DatasetError(f"{path}: expected a dict or list of records, got {type(content).__name__}")
    if not items:
        raise DatasetError(f"{path}: holds no video")
    return isinstance(content, dict), [_validate_record(record, name, path) for name, record in items]


def load_tapvid_pickle(path: str | Path) -> list[TapVidVideo]:
    """Every record of one TAP-Vid pickle: a dict (names = keys) or a list (``<stem>-%04d``)."""
    return _read_pickle(Path(path))[1]


class TapVidDataset:
    """TAP-Vid videos from a pickle file (DAVIS dict / RGB-Stacking list) or a Kinetics folder.

    Iterating yields :class:`TapVidSample` (frames resized to ``resolution``, queries in
    ``query_mode``). A pickle is read on opening; Kinetics shards are read one at a time.
    ``kind`` is ``"davis"`` (dict file), ``"rgb_stacking"`` (list file) or ``"kinetics"``
    (folder of shards).
    """

    def __init__(self, path: str | Path, query_mode: str = "first",
                 resolution: tuple[int, int] | None = STANDARD_RESOLUTION):
        if query_mode not in QUERY_MODES:
            raise OptionError(f"query_mode must be one of {QUERY_MODES}, got {query_mode!r}")
        self.path = Path(path)
        self.query_mode = query_mode
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))
        self._videos: list[TapVidVideo] | None = None
        if self.path.is_dir():
            self.kind = "kinetics"
            self.files = sorted(self.path.glob("*_of_*.pkl")) or sorted(self.path.glob("*.pkl"))
            if not self.files:
                raise DatasetError(f"{self.path}: no *.pkl shards in the Kinetics folder")
        elif self.path.is_file():
            self.files = [self.path]
            is_dict, self._videos = _read_pickle(self.path)
            self.kind = "davis" if is_dict else "rgb_stacking"
        else:
            raise DatasetError(f"{self.path}: TAP-Vid pickle or Kinetics folder not found")

    @property
    def category(self) -> str:
        """The resolution category results belong to (``"256x256"`` is the standard protocol)."""
        return resolution_category(self.resolution)

    def videos(self) -> Iterator[TapVidVideo]:
        """The stored records, in file order (shards in name order)."""
        if self._videos is not None:
            yield from self._videos
            return
        for shard in self.files:
            yield from load_tapvid_pickle(shard)

    def __iter__(self) -> Iterator[TapVidSample]:
        for video in self.videos():
            yield video.sample(self.query_mode, self.resolution)

    def identity(self) -> dict:
        """Kind, query mode, resolution category and ``listing_sha256`` (``"<name>\\t<bytes>\\n"`` lines)."""
        lines = "".join(f"{path.name}\t{os.stat(path).st_size}\n" for path in self.files)
        return {
            "name": f"TAP-Vid-{self.kind}",
            "path": str(self.path.resolve()),
            "query_mode": self.query_mode,
            "resolution": self.category,
            "num_files": len(self.files),
            "listing_sha256": hashlib.sha256(lines.encode()).hexdigest(),
        }

    def __repr__(self) -> str:
        return (f"TapVidDataset(path={str(self.path)!r}, kind={self.kind!r}, "
                f"query_mode={self.query_mode!r}, resolution={self.category!r})")
