"""Training clips from folders or lists of unlabelled videos (Kinetics and the like).

Sources (``VideoClipDataset(source)``): a folder tree of videos at any depth (``.mp4 .avi
.mkv .webm .mov .m4v``), a text file of video paths or frame folders (``#`` comments,
relative to the list), folders of JPEG/PNG frames (natural sort order), or one video file.
Decoding uses decord, or OpenCV where decord is not importable (``backend`` forces one).

Index: one ``(path, num_frames, fps)`` record per video from container metadata, built
with a thread pool and cached as ``.corr-index.json`` next to the data (or in
``cache_dir``); changed entries (size, mtime) are probed again.

Clips: item ``i`` is clip ``i % clips_per_video`` of video ``i // clips_per_video``, frames
``start + o_k * skip`` (offsets ``0 .. clip_len-1`` or ``frame_offsets``; ``skip =
frame_skip`` or ``max(1, round(video_fps / fps))``), its start drawn from its stratum of the
valid range. All randomness comes from ``default_rng([seed, epoch, i])``. A video that
fails to decode is never fatal: the item falls back to other videos and lists the failures
in ``sample["skipped"]``. Details: docs/training.md (Data)."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from corr.errors import OptionError, UserError
from corr.io import atomic_write_bytes

logger = logging.getLogger("corr.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
INDEX_FORMAT = "corr-video-index/1"
MAX_FALLBACK_VIDEOS = 16  # videos tried per item before giving up with an error

_logged_backends: set[str] = set()


class VideoReadError(UserError, RuntimeError):
    """A video (or frame folder) could not be read; the message names the file."""


class VideoInfo(NamedTuple):
    """One good video: absolute ``path`` (file or frame folder), ``num_frames``, ``fps``."""

    path: str
    num_frames: int
    fps: float


# ----------------------------------------------------------------------------- backends


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
            raise VideoReadError(f"{path}: decord cannot open the video ({_short(e)})") from None
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


def _short(e: BaseException, limit: int = 200) -> str:
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
    frames = []
    for i in indices:
        image = cv2.imread(os.path.join(path, names[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoReadError(f"{os.path.join(path, names[i])}: cannot decode the image")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
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
        raise VideoReadError(f"{path}: decord failed to decode frames {indices} ({_short(e)})") from None
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


# -------------------------------------------------------------------------------- index


@dataclass(frozen=True)
class _Entry:
    """One video found on disk: ``rel`` path (relative to the index base, or absolute).

    Its signature: file size and mtime; a frame folder: total image bytes, newest image
    mtime and image ``count`` (0 for a video file). ``size = -1``: the file is missing.
    """

    rel: str
    size: int
    mtime_ns: int
    count: int = 0


def _scan_folder(root: Path) -> list[_Entry]:
    """Video files and frame folders under ``root`` (any depth, symlinks followed)."""
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + os.sep
        images_size, images_mtime, num_images = 0, 0, 0
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            lower = name.lower()
            is_video, is_image = lower.endswith(VIDEO_EXTENSIONS), lower.endswith(IMAGE_EXTENSIONS)
            if not (is_video or is_image):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            if is_video:
                entries.append(_Entry(prefix + name, st.st_size, st.st_mtime_ns))
            else:
                num_images += 1
                images_size += st.st_size
                images_mtime = max(images_mtime, st.st_mtime_ns)
        if num_images:
            # A frame folder: its signature is (image count, total bytes, newest mtime).
            entries.append(_Entry(rel_dir, images_size, images_mtime, num_images))
    return entries


def _read_list_file(list_file: Path) -> list[_Entry]:
    """Entries of a list file; a missing entry is kept with size -1 (reported as bad)."""
    base = list_file.parent
    entries: list[_Entry] = []
    seen: set[str] = set()
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        rel = os.path.normpath(os.path.expanduser(line))  # absolute paths stay absolute
        path = base / rel
        if rel in seen:
            continue
        seen.add(rel)
        if path.is_dir():
            names = list_frame_files(path)
            stats = [os.stat(path / n) for n in names]
            entries.append(_Entry(rel, sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0),
                                  len(names)))
        elif path.is_file():
            st = path.stat()
            entries.append(_Entry(rel, st.st_size, st.st_mtime_ns))
        else:
            entries.append(_Entry(rel, -1, 0))
    return entries


def _default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corr"


def _cache_file_name(source: Path) -> str:
    if source.is_dir():
        return ".corr-index.json"
    return f".corr-index-{source.stem}.json"


def _cache_candidates(source: Path, cache_dir: Path | None) -> list[Path]:
    """Where the index may live, in order of preference."""
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:16]
    named = f"corr-index-{source.name}-{digest}.json"
    if cache_dir is not None:
        return [Path(cache_dir) / named]
    base = source if source.is_dir() else source.parent
    return [base / _cache_file_name(source), _default_cache_root() / named]


def _load_cache(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        return None
    return data


class VideoIndex(NamedTuple):
    """Result of :func:`build_index`.

    ``records``: one ``{"path": rel, "num_frames", "fps", "error"}`` per entry, as probed
    by the requested backend (``error`` is ``None`` for a good video, else why it is bad);
    ``rel`` is relative to ``base`` (or absolute). ``num_probed``: entries probed this time.
    """

    base: Path
    records: list[dict]
    cache_path: Path | None
    num_probed: int


def build_index(
    source: Path, backend: str, cache_dir: Path | None = None, num_workers: int = 8
) -> VideoIndex:
    """Scan ``source``, reuse cached metadata of unchanged entries, probe the rest in parallel.

    Cache file: ``{"format", "source", "videos": [{"path", "size", "mtime_ns", "count",
    "probes": {backend: [num_frames, fps, error]}}]}``; a record is reused when its
    signature (size, mtime_ns, count) is unchanged and it holds a probe by ``backend``
    (so switching backends probes once more, then both are cached).
    """
    if source.is_dir():
        base, entries = source, _scan_folder(source)
    elif source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS:
        st = source.stat()
        base, entries = source.parent, [_Entry(source.name, st.st_size, st.st_mtime_ns)]
    elif source.is_file():
        base, entries = source.parent, _read_list_file(source)
    else:
        raise FileNotFoundError(f"video source {source} does not exist")

    candidates = _cache_candidates(source, cache_dir)
    cached: dict[str, dict] = {}
    for candidate in candidates:
        data = _load_cache(candidate)
        if data is not None:
            cached = {r["path"]: r for r in data.get("videos", []) if isinstance(r, dict) and "path" in r}
            break

    stored: list[dict] = []  # cache records, in entry order
    to_probe: list[int] = []
    for k, entry in enumerate(entries):
        old = cached.get(entry.rel)
        signature = {"path": entry.rel, "size": entry.size, "mtime_ns": entry.mtime_ns, "count": entry.count}
        if old is not None and all(old.get(key) == value for key, value in signature.items()) \
                and isinstance(old.get("probes"), dict):
            stored.append(old)
        else:
            stored.append({**signature, "probes": {}})
        if entry.size < 0:
            stored[-1]["probes"][backend] = [0, 0.0, "file does not exist"]
        elif backend not in stored[-1]["probes"]:
            to_probe.append(k)

    def probe(k: int) -> list:
        try:
            n, fps = probe_video(str(base / entries[k].rel), backend)
            return [n, fps, None]
        except Exception as e:  # any failure makes the video bad, never the whole index
            return [0, 0.0, _short(e, 300)]

    if to_probe:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            for k, result in zip(to_probe, pool.map(probe, to_probe)):
                stored[k]["probes"][backend] = result
        logger.info("indexed %d of %d videos under %s in %.1fs", len(to_probe), len(entries), source,
                    time.perf_counter() - start)

    cache_path = None
    if to_probe or len(cached) != len(stored):
        cache_path = _write_cache(candidates, {"format": INDEX_FORMAT, "source": str(source), "videos": stored})
    else:
        cache_path = next((c for c in candidates if c.exists()), None)
    records = []
    for record in stored:
        n, fps, error = record["probes"][backend]
        records.append({"path": record["path"], "num_frames": int(n), "fps": float(fps), "error": error})
    return VideoIndex(base, records, cache_path, len(to_probe))


def _write_cache(candidates: list[Path], payload: dict) -> Path | None:
    """Write compact JSON atomically to the first writable candidate; None if none is."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    for candidate in candidates:
        try:
            atomic_write_bytes(candidate, data)
            return candidate
        except OSError:
            continue
    logger.warning("could not write the video index cache to any of %s", [str(c) for c in candidates])
    return None


# ------------------------------------------------------------------------------ dataset


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
        self.bad_videos: list[tuple[str, str]] = []
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
            raise ValueError(f"no usable video in {self.source} ({len(self.bad_videos)} bad) {reasons}")
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
    """Batch samples: ``{"clip": stacked (B, ...), "videos": [path] * B, "skipped": [(path, reason)]}``."""
    clips = [s["clip"] for s in samples]
    shapes = {tuple(c.shape) for c in clips}
    if len(shapes) > 1:
        raise ValueError(f"clips of one batch have different shapes {sorted(shapes)}; "
                         "give the dataset a transform that resizes (e.g. datasets.augment.ClipTransform)")
    return {
        "clip": torch.stack(clips),
        "videos": [s["video"] for s in samples],
        "skipped": [entry for s in samples for entry in s["skipped"]],
    }


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

