"""Training clips from folders or lists of unlabelled videos (Kinetics and the like).

Sources (``VideoClipDataset(source)``): a folder tree of videos at any depth (``.mp4 .avi
.mkv .webm .mov .m4v``), a text file of video paths or frame folders (``#`` comments,
relative to the list), folders of JPEG/PNG frames (natural sort order), or one video file.
Decoding uses decord, or OpenCV where decord is not importable (``backend`` forces one;
:mod:`datasets.video_decode`).

Index (:mod:`datasets.video_index`): one ``(path, num_frames, fps)`` record per video from
container metadata, built with a thread pool (a time limit per file) and cached as
``.corr-index.json`` next to the data (or in ``cache_dir``); changed entries (size, mtime)
are probed again. Symbolic links are followed, each real file once; special files are skipped.

Clips: item ``i`` is clip ``i % clips_per_video`` of video ``i // clips_per_video``, frames
``start + o_k * skip`` (offsets ``0 .. clip_len-1`` or ``frame_offsets``; ``skip =
frame_skip`` or ``max(1, round(video_fps / fps))``), its start drawn from its stratum of the
valid range. All randomness comes from ``default_rng([seed, epoch, i])``. A video that
fails to decode is never fatal: the item falls back to other videos and lists the failures
in ``sample["skipped"]``. Details: docs/training.md (Data)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from datasets.frames import DatasetError
from datasets.video_decode import VideoReadError, read_clip, resolve_backend
from datasets.video_index import build_index

logger = logging.getLogger("corr.data")

MAX_FALLBACK_VIDEOS = 16  # videos tried per item before giving up with an error

__all__ = ["MAX_FALLBACK_VIDEOS", "VideoClipDataset", "VideoInfo", "VideoReadError", "collate_clips", "frame_step",
           "measure_decode_throughput"]


class VideoInfo(NamedTuple):
    """One good video: absolute ``path`` (file or frame folder), ``num_frames``, ``fps``."""

    path: str
    num_frames: int
    fps: float


def frame_step(video_fps: float, fps: float | None, frame_skip: int | None) -> int:
    """Source frames between consecutive clip frames.

    ``frame_skip`` when given; else ``max(1, round(video_fps / fps))``; 1 when neither is
    known (``fps`` is None or the video's fps is unknown).
    """
    if frame_skip is not None:
        return max(1, int(frame_skip))
    if fps is None or fps <= 0 or video_fps <= 0:
        return 1
    return max(1, int(round(video_fps / fps)))


class VideoClipDataset(torch.utils.data.Dataset):
    """Random clips of ``clip_len`` frames from a folder tree, list file or frame folders.

    A sample is ``{"clip": transform(frames)`` or ``uint8 (T, H, W, 3)`` RGB tensor,
    ``"video": path, "skipped": [(path, reason), ...], "frame_indices": [int] * T}``.
    ``skipped`` lists the videos that failed to decode before ``video`` was read.

    ``transform`` receives ``uint8 (T, H, W, 3)`` RGB frames; when it has an attribute
    ``accepts_rng = True`` (as :class:`datasets.augment.ClipTransform`) it is called as
    ``transform(frames, rng=generator)`` with the item's generator, which makes the
    augmentation deterministic too. Frame folders have no stored fps; ``frame_folder_fps``
    (default 24, DAVIS) stands in for it.
    """

    def __init__(
        self,
        source: str | Path,
        clip_len: int = 4,
        fps: float | None = 8.0,
        frame_skip: int | None = None,
        clips_per_video: int = 5,
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        cache_dir: str | Path | None = None,
        backend: str = "auto",
        seed: int = 0,
        num_index_workers: int = 8,
        frame_folder_fps: float = 24.0,
        frame_offsets: Sequence[int] | None = None,
    ):
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1, got {clip_len}")
        if frame_offsets is not None:
            frame_offsets = tuple(int(o) for o in frame_offsets)
            if len(frame_offsets) != clip_len:
                raise ValueError(f"frame_offsets {frame_offsets} must have clip_len = {clip_len} entries")
            if frame_offsets[0] < 0 or any(b <= a for a, b in zip(frame_offsets, frame_offsets[1:])):
                raise ValueError(f"frame_offsets must be >= 0 and strictly increasing, got {frame_offsets}")
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        if frame_skip is not None and frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self.source = Path(source).expanduser().resolve()
        self.clip_len = int(clip_len)
        self.frame_offsets = frame_offsets if frame_offsets is not None else tuple(range(self.clip_len))
        self.fps = fps
        self.frame_skip = frame_skip
        self.clips_per_video = int(clips_per_video)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.backend = resolve_backend(backend)

        index = build_index(self.source, self.backend, Path(cache_dir) if cache_dir else None, num_index_workers)
        self.index_cache_path = index.cache_path
        self.num_probed = index.num_probed
        self.videos: list[VideoInfo] = []
        self.bad_videos: list[tuple[str, str]] = [
            (os.path.join(index.base, name), "a special file (FIFO, socket or device), not a video")
            for name in index.special_files]
        for record in index.records:
            path = os.path.normpath(os.path.join(index.base, record["path"]))
            if record["error"]:
                self.bad_videos.append((path, record["error"]))
                continue
            video_fps = record["fps"] if record["fps"] > 0 else (frame_folder_fps if os.path.isdir(path) else 0.0)
            need = self.frame_offsets[-1] * frame_step(video_fps, fps, frame_skip) + 1
            if record["num_frames"] < need:
                self.bad_videos.append((path, f"too short: {record['num_frames']} frames, a clip needs {need}"))
                continue
            self.videos.append(VideoInfo(path, int(record["num_frames"]), float(video_fps)))
        if not self.videos:
            reasons = "; ".join(f"{p}: {r}" for p, r in self.bad_videos[:5])
            raise DatasetError(f"no usable video in {self.source} ({len(self.bad_videos)} bad) {reasons}")
        if self.bad_videos:
            logger.warning("%d of %d videos in %s are unusable and skipped (first: %s: %s)",
                           len(self.bad_videos), len(index.records), self.source, *self.bad_videos[0])

    # -- sampling ---------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clips (starts, fallbacks, augmentation) items produce."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def item_rng(self, i: int) -> np.random.Generator:
        """The generator behind item ``i`` of the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(i)])

    def clip_indices(self, video: VideoInfo, slot: int, rng: np.random.Generator) -> list[int]:
        """Frame indices ``start + o_k * skip`` of clip ``slot`` (0 .. clips_per_video-1).

        ``start`` is uniform over part ``slot`` of ``clips_per_video`` equal parts of
        ``[0, num_frames - o_max * skip - 1]`` (``o_k`` the frame offsets, module docstring).
        """
        skip = frame_step(video.fps, self.fps, self.frame_skip)
        num_starts = video.num_frames - self.frame_offsets[-1] * skip
        lo = (slot * num_starts) // self.clips_per_video
        hi = max(lo + 1, ((slot + 1) * num_starts) // self.clips_per_video)
        start = int(rng.integers(lo, hi))
        return [start + o * skip for o in self.frame_offsets]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        rng = self.item_rng(i)
        video_id, slot = divmod(int(i), self.clips_per_video)
        skipped: list[tuple[str, str]] = []
        fallbacks: Iterator[int] | None = None  # other videos in a random order, drawn on first failure
        for _ in range(min(MAX_FALLBACK_VIDEOS, len(self.videos))):
            video = self.videos[video_id]
            indices = self.clip_indices(video, slot, rng)
            try:
                frames = read_clip(video.path, indices, self.backend)
            except VideoReadError as e:
                skipped.append((video.path, str(e)))
                if fallbacks is None:
                    fallbacks = (int(v) for v in rng.permutation(len(self.videos)) if v != video_id)
                video_id = next(fallbacks, None)
                if video_id is None:
                    break
                continue
            if self.transform is None:
                clip = torch.from_numpy(frames)
            elif getattr(self.transform, "accepts_rng", False):
                clip = self.transform(frames, rng=rng)
            else:
                clip = self.transform(frames)
            return {"clip": clip, "video": video.path, "skipped": skipped, "frame_indices": indices}
        raise VideoReadError(f"item {i}: {len(skipped)} videos in a row failed to decode: "
                             + "; ".join(reason for _, reason in skipped[:3]))


def collate_clips(samples: list[dict]) -> dict:
    """Batch samples: ``{"clip": stacked (B, ...), "videos": [path] * B, "skipped": [(path, reason)]}``,
    plus ``"flow_pair": {key: stacked (B, ...)}`` when the samples carry one."""
    clips = [s["clip"] for s in samples]
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) > 1:
        raise ValueError(f"clips of one batch have different shapes {sorted(shapes)}; "
                         "give the dataset a transform that resizes (e.g. datasets.augment.ClipTransform)")
    batch = {
        "clip": torch.stack(clips),
        "videos": [s["video"] for s in samples],
        "skipped": [entry for s in samples for entry in s["skipped"]],
    }
    if "flow_pair" in samples[0]:
        pairs = [s["flow_pair"] for s in samples]
        batch["flow_pair"] = {key: torch.stack([pair[key] for pair in pairs]) for key in pairs[0]}
    return batch


def measure_decode_throughput(dataset: VideoClipDataset, num_clips: int) -> dict:
    """Time ``dataset[i]`` (decode + the dataset's transform) in this process.

    ``num_clips`` items evenly spread over the dataset. Returns ``{"clips_per_s",
    "frames_per_s", "ms_per_clip", "num_clips", "seconds", "num_skipped", "backend"}``
    (``frames_per_s`` counts decoded clip frames: ``clips_per_s * clip_len``).
    """
    num_clips = max(1, min(int(num_clips), len(dataset)))
    items = np.linspace(0, len(dataset) - 1, num_clips).round().astype(int)
    skipped = 0
    start = time.perf_counter()
    for i in items:
        skipped += len(dataset[int(i)]["skipped"])
    seconds = time.perf_counter() - start
    return {
        "clips_per_s": num_clips / seconds,
        "frames_per_s": num_clips * dataset.clip_len / seconds,
        "ms_per_clip": 1000.0 * seconds / num_clips,
        "num_clips": num_clips,
        "seconds": seconds,
        "num_skipped": skipped,
        "backend": dataset.backend,
    }
