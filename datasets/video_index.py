"""The index of a training video source: one ``(path, num_frames, fps, error)`` record per
video, from container metadata, cached next to the data.

Sources: a folder tree of videos at any depth and frame folders, a text file of video
paths or frame folders (``#`` comments, relative to the list), or one video file. The scan
follows symbolic links but visits each real folder and file once (a link loop or two links
to one video add nothing), and skips special files (FIFOs, sockets, devices) with a count
and a warning. Metadata is probed by a pool of threads, each file within a time limit
(``probe_timeout`` seconds; a file that does not answer is a bad video, "timed out").

Cache: ``.corr-index.json`` next to the data (or in ``cache_dir``); changed entries (size,
mtime) are probed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from corr.io import atomic_write_bytes
from datasets.video_decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_frame_files, probe_video, short_reason

logger = logging.getLogger("corr.data")

INDEX_FORMAT = "corr-video-index/1"
#: Seconds one file's metadata may take before it counts as a bad video.
PROBE_TIMEOUT = 60.0


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


class _Scan(NamedTuple):
    entries: list[_Entry]
    special_files: list[str]   # FIFOs, sockets and devices named like videos or images (skipped)


def _scan_folder(root: Path) -> _Scan:
    """Video files and frame folders under ``root``: any depth, symbolic links followed, each real
    folder and video file once (keyed by device and inode), special files skipped."""
    entries: list[_Entry] = []
    special: list[str] = []
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in seen_dirs:      # reached again through a link: a loop or a duplicate
            dirnames[:] = []
            continue
        seen_dirs.add((here.st_dev, here.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir + os.sep
        images_size, images_mtime, num_images = 0, 0, 0
        for name in sorted(filenames):
            lower = name.lower()
            is_video, is_image = lower.endswith(VIDEO_EXTENSIONS), lower.endswith(IMAGE_EXTENSIONS)
            if name.startswith(".") or not (is_video or is_image):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:                               # a dangling link
                continue
            if not stat.S_ISREG(st.st_mode):
                special.append(prefix + name)
                continue
            if is_video:
                if (st.st_dev, st.st_ino) not in seen_files:
                    seen_files.add((st.st_dev, st.st_ino))
                    entries.append(_Entry(prefix + name, st.st_size, st.st_mtime_ns))
            else:
                num_images += 1
                images_size += st.st_size
                images_mtime = max(images_mtime, st.st_mtime_ns)
        if num_images:
            # A frame folder: its signature is (image count, total bytes, newest mtime).
            entries.append(_Entry(rel_dir, images_size, images_mtime, num_images))
    return _Scan(entries, special)


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
    ``rel`` is relative to ``base`` (or absolute). ``num_probed``: entries probed this time;
    ``special_files``: FIFOs, sockets and devices the scan skipped (relative to ``base``).
    """

    base: Path
    records: list[dict]
    cache_path: Path | None
    num_probed: int
    special_files: list[str] = []


def build_index(
    source: Path, backend: str, cache_dir: Path | None = None, num_workers: int = 8,
    probe_timeout: float = PROBE_TIMEOUT,
) -> VideoIndex:
    """Scan ``source``, reuse cached metadata of unchanged entries, probe the rest in parallel.

    Cache file: ``{"format", "source", "videos": [{"path", "size", "mtime_ns", "count",
    "probes": {backend: [num_frames, fps, error]}}]}``; a record is reused when its
    signature (size, mtime_ns, count) is unchanged and it holds a probe by ``backend``
    (so switching backends probes once more, then both are cached).
    """
    special: list[str] = []
    if source.is_dir():
        (entries, special), base = _scan_folder(source), source
        if special:
            logger.warning("skipped %d special file(s) (FIFO, socket or device) under %s, e.g. %s", len(special),
                           source, special[0])
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
            return [0, 0.0, short_reason(e, 300)]

    if to_probe:
        start = time.perf_counter()
        for k, result in probe_all(probe, to_probe, num_workers, probe_timeout).items():
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
    return VideoIndex(base, records, cache_path, len(to_probe), special)


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


def probe_all(probe: Callable[[int], list], items: list[int], workers: int, timeout: float) -> dict[int, list]:
    """``probe(k)`` for every ``k`` of ``items`` on up to ``workers`` threads, each within ``timeout``
    seconds; a probe that takes longer gives ``[0, 0.0, "timed out ..."]``. Its thread is left
    behind (a daemon: it never keeps the process alive) and a new one takes over the rest."""
    todo: queue.Queue[int] = queue.Queue()
    for k in items:
        todo.put(k)
    done: queue.Queue[tuple[int, list]] = queue.Queue()
    started: dict[int, float] = {}
    lock = threading.Lock()

    def work() -> None:
        while True:
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            with lock:
                started[k] = time.monotonic()
            done.put((k, probe(k)))

    def add_worker() -> None:
        threading.Thread(target=work, daemon=True, name="video-probe").start()

    for _ in range(max(1, min(workers, len(items)))):
        add_worker()
    results: dict[int, list] = {}
    while len(results) < len(items):
        try:
            k, result = done.get(timeout=min(0.5, timeout))
            results.setdefault(k, result)             # a late answer of a timed-out probe is ignored
            continue
        except queue.Empty:
            pass
        now = time.monotonic()
        with lock:
            late = [k for k, began in started.items() if k not in results and now - began > timeout]
        for k in late:
            results[k] = [0, 0.0, f"timed out: no answer within {timeout:g} s"]
            add_worker()
    return results
