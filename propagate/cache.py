"""On-disk cache of per-video encoder features and propagation matches (``evaluate.py --cache DIR``).

An entry holds one video's features ``(T, C, h, w)`` (:func:`propagate.video.extract_features`)
under the SHA-256 of the encoder's identity (:func:`encoder_identity`: name, kwargs,
checkpoint SHA-256 or random-init seed), the preprocessing (input size, resize,
normalisation, DAVIS resolution) and the video's identity (dataset name, listing hash,
video name; not its location on disk). Next to them it keeps the :class:`Matches` of each
matching setting (``context``, ``radius``, ``pad_with_first``, ``normalize_features``) the
video was propagated with; matches kept at top-k serve any ``topk <= k``, temperature and
label normalisation. ``float32`` storage is bit-exact; ``float16`` halves the disk.

Layout ``DIR/<key>-<dtype>/``: ``chunk-<first frame>.npy`` ``(n, C, h, w)``,
``matches-<setting hash>/chunk-<first>-values.npy`` / ``-source.npy``, and ``meta.json``
files written last (atomically, :mod:`corr.io`), so an entry without one is incomplete and
recomputed. Writing streams chunk by chunk. Adapted encoders (``--tta-steps``) are not
cached. Details: docs/propagation.md (Feature cache)."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from corr.io import atomic_write, atomic_write_json
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

from .config import PropagationConfig
from .propagator import Matches

CACHE_DTYPES = ("float32", "float16")
#: Interpolation used to resize frames to the input size (:func:`propagate.video.resize_frame`).
RESIZE_INTERPOLATION = "cv2.INTER_LINEAR"


def encoder_identity(encoder_info: dict) -> dict:
    """What determines an encoder's weights: name, kwargs, checkpoint SHA-256 or random-init seed."""
    identity = {"encoder": encoder_info["encoder"], "kwargs": encoder_info.get("kwargs", {}),
                "format": encoder_info.get("format")}
    if encoder_info.get("sha256"):
        identity["sha256"] = encoder_info["sha256"]
    else:
        identity.update(seed=encoder_info.get("seed"), torch=torch.__version__.split("+")[0])
    return identity


def preprocessing_identity(input_size: Optional[tuple[int, int]], resolution: Optional[str] = None,
                           frames: str = "common") -> dict:
    """What turns a stored frame into the encoder's input (``frames``: the propagation setting's
    frame protocol; DINO's resizes frames and has its own statistics)."""
    identity = {"input_size": list(input_size) if input_size is not None else "native",
                "resize": RESIZE_INTERPOLATION, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "resolution": resolution}
    if frames != "common":  # the common protocol keeps its entries' names
        identity["frames"] = frames
    return identity


def video_identity(dataset_identity: dict, name: str) -> dict:
    """A video: its dataset's name and file-listing hash, and its own name."""
    return {"dataset": dataset_identity["name"], "listing_sha256": dataset_identity["listing_sha256"],
            "video": name}


def cache_key(encoder: dict, preprocessing: dict, video: dict) -> str:
    """Hex SHA-256 of the three identities (sorted-key JSON)."""
    material = {"encoder": encoder, "preprocessing": preprocessing, "video": video}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Per-video features on disk under ``root`` (see the module docstring).

    ``dtype``: storage dtype, ``"float32"`` (exact) or ``"float16"``. Features are always
    returned as float32 tensors.
    """

    def __init__(self, root: str | Path, dtype: str = "float32"):
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}")
        self.root = Path(root)
        self.dtype = dtype

    def entry(self, key: str) -> Path:
        """The folder of entry ``key`` in this storage dtype (dtypes never overwrite each other)."""
        return self.root / f"{key}-{self.dtype}"

    def lookup(self, key: str) -> Optional["CachedFeatures"]:
        """The complete entry ``key``, or None (absent, incomplete, or stored with another dtype)."""
        meta = _read_meta(self.entry(key))
        if meta is None or meta.get("dtype") != self.dtype:
            return None
        return CachedFeatures(self.entry(key), meta)

    def writer(self, key: str, num_frames: int, material: dict) -> "FeatureWriter":
        """A writer for entry ``key`` (an incomplete or stale entry is removed first)."""
        entry = self.entry(key)
        if entry.exists():
            shutil.rmtree(entry)
        return FeatureWriter(entry, num_frames, self.dtype, material)

    def round_trip(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` as they read back from the cache: rounded through the storage dtype, float32."""
        if self.dtype == "float32":
            return feats.float()
        return feats.to(torch.float16).float()


@dataclass(frozen=True)
class CacheSlot:
    """One video's place in a cache: the entry ``key`` and the identities it was made from."""

    cache: FeatureCache
    key: str
    material: dict
    match_topk: int = 0  # matches kept per query: at least this many (and the setting's topk)

    def lookup(self) -> Optional["CachedFeatures"]:
        return self.cache.lookup(self.key)

    def writer(self, num_frames: int) -> "FeatureWriter":
        return self.cache.writer(self.key, num_frames, self.material)

    def matches(self, cfg: PropagationConfig) -> "MatchSlot":
        """Where this video's matches for ``cfg``'s matching setting live (inside the features' entry)."""
        setting = matching_setting(cfg)
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]
        return MatchSlot(self.cache.entry(self.key) / f"matches-{digest}", setting,
                         max(self.match_topk, cfg.topk))


def matching_setting(cfg: PropagationConfig) -> dict:
    """The settings the chosen keys depend on (:class:`propagate.propagator.Matcher`)."""
    setting = {"context": cfg.context, "radius": cfg.radius, "pad_with_first": cfg.pad_with_first,
               "normalize_features": cfg.normalize_features}
    if cfg.neighbourhood != "disk" or cfg.restrict_first:  # the common rule keeps its entries' names
        setting.update(neighbourhood=cfg.neighbourhood, restrict_first=cfg.restrict_first)
    return setting


@dataclass(frozen=True)
class MatchSlot:
    """One matching setting's entry for one video: ``topk`` is how many matches a writer keeps."""

    entry: Path
    setting: dict
    topk: int

    def lookup(self, topk: int) -> Optional["CachedMatches"]:
        """The complete entry if it keeps at least ``topk`` matches per query, else None."""
        meta = _read_meta(self.entry)
        if meta is None or meta.get("setting") != self.setting or int(meta.get("topk", 0)) < topk:
            return None
        return CachedMatches(self.entry, meta)

    def writer(self, num_frames: int) -> "MatchWriter":
        """A writer for the matches of frames ``1 .. num_frames - 1`` (an older entry is removed first)."""
        if self.entry.exists():
            shutil.rmtree(self.entry)
        return MatchWriter(self.entry, num_frames - 1, {"setting": self.setting, "topk": self.topk})


def cache_slot(cache: FeatureCache, encoder_info: dict, preprocessing: dict, dataset_identity: dict,
               name: str, match_topk: int = 0) -> CacheSlot:
    """The slot of video ``name`` of a dataset for an encoder and a preprocessing."""
    material = {"encoder": encoder_identity(encoder_info), "preprocessing": preprocessing,
                "video": video_identity(dataset_identity, name)}
    return CacheSlot(cache, cache_key(**material), material, match_topk)


def _read_meta(entry: Path) -> Optional[dict]:
    """``entry/meta.json``, or None when it is absent or unreadable (an incomplete entry)."""
    try:
        return json.loads((entry / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


class ChunkWriter:
    """Streams named arrays of consecutive frames into ``entry``; :meth:`finish` completes it.

    Chunk files are ``<prefix>-<first frame>.npy`` per array name (prefix ``chunk``, or
    ``chunk-<first>-<name>`` with several names); ``meta.json`` lists the chunks.
    """

    def __init__(self, entry: Path, num_frames: int, material: dict, names: tuple[str, ...]):
        self.entry, self.num_frames, self.material, self.names = entry, num_frames, material, names
        self.chunks: list[list[int]] = []  # [first frame, number of frames]
        self.written = 0

    def add_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the next B frames: one (B, ...) array per name."""
        counts = {len(a) for a in arrays.values()}
        if set(arrays) != set(self.names) or len(counts) != 1:
            raise ValueError(f"{self.entry}: expected arrays {self.names} of one length, got "
                             f"{ {k: a.shape for k, a in arrays.items()} }")
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            atomic_write(self.entry / _chunk_name(self.written, name, self.names), lambda f: np.save(f, array))
        self.chunks.append([self.written, counts.pop()])
        self.written += self.chunks[-1][1]

    def finish(self, **extra) -> None:
        """Write ``meta.json`` (with ``extra`` fields), which marks the entry complete.

        Every frame must have been added.
        """
        if self.written != self.num_frames:
            raise RuntimeError(f"{self.entry}: {self.written} of {self.num_frames} frames written")
        atomic_write_json(self.entry / "meta.json", {
            **self.material, **extra, "num_frames": self.num_frames, "chunks": self.chunks})


def _chunk_name(first: int, name: str, names: tuple[str, ...]) -> str:
    return f"chunk-{first:06d}.npy" if len(names) == 1 else f"chunk-{first:06d}-{name}.npy"


class ChunkReader:
    """A complete entry written by :class:`ChunkWriter`; reads frames ``[start, stop)`` of a name.

    The last chunk read of each name is kept, so reads in order load every chunk file once.
    """

    names: tuple[str, ...] = ()  # the arrays of an entry, set by each kind of entry

    def __init__(self, entry: Path, meta: dict):
        self.entry, self.meta = entry, meta
        self.num_frames = int(meta["num_frames"])
        self._chunks: dict[str, tuple[int, np.ndarray]] = {}  # name -> (first frame, array)

    def _load_chunk(self, first: int, name: str) -> np.ndarray:
        kept = self._chunks.get(name)
        if kept is None or kept[0] != first:
            path = self.entry / _chunk_name(first, name, self.names)
            try:
                array = np.load(path)
            except (OSError, ValueError) as error:
                raise RuntimeError(f"{path}: unreadable cache chunk ({error}); delete {self.entry}") from error
            kept = self._chunks[name] = (first, array)
        return kept[1]

    def read_array(self, name: str, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` of array ``name``."""
        if not 0 <= start < stop <= self.num_frames:
            raise IndexError(f"{self.entry}: frames [{start}, {stop}) outside [0, {self.num_frames})")
        parts = []
        for first, count in self.meta["chunks"]:
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                parts.append(self._load_chunk(first, name)[lo - first:hi - first])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class FeatureWriter(ChunkWriter):
    """Streams one video's features into a cache entry; :meth:`finish` completes it."""

    def __init__(self, entry: Path, num_frames: int, dtype: str, material: dict):
        super().__init__(entry, num_frames, material, CachedFeatures.names)
        self.dtype = dtype
        self.shape: Optional[list[int]] = None

    def add(self, feats: torch.Tensor) -> None:
        """Append features (B, C, h, w) of the next B frames."""
        if feats.ndim != 4:
            raise ValueError(f"features must be (B, C, h, w), got {tuple(feats.shape)}")
        if self.shape is not None and list(feats.shape[1:]) != self.shape:
            raise ValueError(f"{self.entry}: features {tuple(feats.shape[1:])} differ from earlier {self.shape}")
        self.shape = list(feats.shape[1:])
        self.add_arrays({"features": feats.detach().to("cpu", getattr(torch, self.dtype)).numpy()})

    def finish(self, **extra) -> None:
        super().finish(**extra, shape=self.shape, dtype=self.dtype)


class CachedFeatures(ChunkReader):
    """A complete cache entry; reads frames ``[start, stop)`` as float32 on a device."""

    names = ("features",)

    def read(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Features (stop - start, C, h, w) float32 on ``device``."""
        array = self.read_array("features", start, stop)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=torch.float32)


class MatchWriter(ChunkWriter):
    """Streams one video's matches (frames 1 .. T-1, in order) into a match entry."""

    def __init__(self, entry: Path, num_frames: int, material: dict):
        super().__init__(entry, num_frames, material, CachedMatches.names)

    def add(self, matches: list[Matches]) -> None:
        """Append the matches of the next frames."""
        values = torch.stack([m.values for m in matches]).float().cpu().numpy()
        source = torch.stack([m.source for m in matches]).cpu()
        small = int(source.max()) < 2 ** 31 if source.numel() else True
        self.add_arrays({"values": values, "source": source.to(torch.int32 if small else torch.int64).numpy()})


class CachedMatches(ChunkReader):
    """A complete match entry; index 0 is frame 1."""

    names = ("values", "source")

    def read(self, start: int, stop: int, topk: int, device: torch.device | str = "cpu") -> list[Matches]:
        """The first ``topk`` matches of frames ``start + 1 .. stop`` (entries ``[start, stop)``)."""
        values = torch.from_numpy(self.read_array("values", start, stop)[..., :topk].copy()).to(device)
        source = torch.from_numpy(self.read_array("source", start, stop)[..., :topk].astype(np.int64)).to(device)
        return [Matches(v, s) for v, s in zip(values, source)]
