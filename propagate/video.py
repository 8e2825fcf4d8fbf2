"""One video through an encoder and the propagator: frames -> features -> labels, with the cache.

Frames are uint8 ``(H, W, 3)`` RGB, resized to the task's input size with
:func:`resize_frame` (bilinear, ``cv2.INTER_LINEAR``). Features are float32
``(T, C, h, w)`` with ``(h, w) = ceil((H, W) / stride)`` (:func:`propagate.labels.grid_size`).
:func:`propagate_frames` runs the step-wise label propagation (docs/propagation.md) batch by
batch, so memory does not grow with the video's length; :func:`video_features` gives all of
a video's features at once (the TAP-Vid task restarts a propagation at every query frame).
Both read and fill the per-video feature and match cache (:mod:`propagate.cache`) of
:func:`feature_cache`, and report timings in seconds. :func:`encoder_for_video` adapts a
copy of the encoder to a video with ``--tta-steps`` (:mod:`corr.adapt`).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from corr.adapt import adapt_encoder
from corr.runtime import sync_device
from datasets.transforms import normalize_frames

from .cache import CacheSlot, FeatureCache, cache_slot, preprocessing_identity
from .config import PropagationConfig
from .eval_config import EvalConfig
from .labels import grid_size
from .propagator import LabelMemory, Matcher

#: ``decode(t, labels)`` receives the soft labels (K, h, w) of frame t >= 1.
Decode = Callable[[int, torch.Tensor], None]
#: ``first_label(grid)`` gives frame 0's labels (K, h, w) for the feature grid ``(h, w)``.
FirstLabel = Callable[[tuple[int, int]], torch.Tensor]


def resize_frame(frame: np.ndarray, size: Optional[tuple[int, int]]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3), bilinear (``cv2.INTER_LINEAR``); None = unchanged."""
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame
    return cv2.resize(frame, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


#: ``(mean, std)`` of the encoder's input, per RGB channel (None: ImageNet's, the encoder contract).
Statistics = Optional[tuple[tuple[float, ...], tuple[float, ...]]]


@torch.inference_mode()
def extract_features(encoder: torch.nn.Module, frames: np.ndarray, device: torch.device,
                     statistics: Statistics = None) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> float32 features (B, C, h, w) on ``device``."""
    stats = {} if statistics is None else {"mean": statistics[0], "std": statistics[1]}
    return encoder(normalize_frames(frames, device=device, **stats)).float()


@torch.inference_mode()
def extract_video_features(encoder: torch.nn.Module, frames: np.ndarray, device: torch.device,
                           batch_size: int = 8) -> tuple[torch.Tensor, float]:
    """All frames uint8 (T, H, W, 3) -> (features (T, C, h, w) on ``device``, seconds spent)."""
    tick = time.perf_counter()
    feats = torch.cat([extract_features(encoder, frames[i:i + batch_size], device)
                       for i in range(0, len(frames), batch_size)])
    sync_device(device)
    return feats, time.perf_counter() - tick


def encoder_for_video(encoder: torch.nn.Module, read_frame: Callable[[int], np.ndarray], num_frames: int,
                      cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, float]:
    """The encoder for one video and the seconds spent making it: ``encoder`` itself, or
    with ``--tta-steps`` a copy adapted to the video's frames (``encoder`` is untouched)."""
    adapt = cfg.adaptation()
    if adapt.steps <= 0:
        return encoder, 0.0
    tick = time.perf_counter()
    frames = np.stack([read_frame(t) for t in range(num_frames)])
    adapted, _ = adapt_encoder(encoder, frames, adapt, device)
    return adapted, time.perf_counter() - tick


def feature_cache(cfg: EvalConfig, encoder_info: dict, identity: dict, name: str) -> Optional[CacheSlot]:
    """Video ``name``'s feature-cache slot, or None without ``--cache`` or with test-time adaptation
    (adapted features depend on the video, so they are never cached). Native-size frames
    (no input size) are identified by ``--resolution`` too."""
    if not cfg.cache or cfg.tta_steps > 0:
        return None
    preprocessing = preprocessing_identity(cfg.input_size, cfg.resolution if cfg.input_size is None else None,
                                           frames=cfg.propagation().frames)
    return cache_slot(FeatureCache(cfg.cache, cfg.cache_dtype), encoder_info, preprocessing, identity, name,
                      match_topk=cfg.cache_topk)


@torch.inference_mode()
def propagate_frames(read_frame: Callable[[int], np.ndarray], num_frames: int, encoder: torch.nn.Module,
                     prop_cfg: PropagationConfig, device: torch.device, first_label: FirstLabel, decode: Decode,
                     batch_size: int = 8, desc: str = "", progress: bool = True,
                     cache: Optional[CacheSlot] = None, statistics: Statistics = None) -> dict:
    """The step-wise propagation loop every task shares; returns timings in seconds.

    read_frame(t):      uint8 (H, W, 3) frame t at the input size (the same for every t);
    first_label(grid):  frame 0's labels (K, h, w) for the feature grid ``(h, w)``;
    decode(t, labels):  receives the soft labels (K, h, w) of every frame t >= 1, in order;
    cache:              this video's feature-cache slot (:mod:`propagate.cache`), or None;
    statistics:         the input's (mean, std) when not ImageNet's (:func:`extract_features`).

    With a cache slot: if it holds the video's matches for this matching setting (with at
    least ``topk`` per query), only labels are combined (no frames, encoder or similarity
    search); else if it holds the features, they are read instead of computed; whatever was
    computed is stored. Timings: ``frames`` (reading frames), ``features`` (encoder or cache
    read, cache writes), ``propagation`` (matching or reading matches, and labels), ``cache``
    (features) and ``matches``: ``"hit"``, ``"miss"`` or ``"off"``.
    """
    timings = {"frames": 0.0, "features": 0.0, "propagation": 0.0, "cache": "off", "matches": "off"}
    cached, match_slot, cached_matches = _look_up(cache, prop_cfg, num_frames, timings)
    memory = LabelMemory(prop_cfg)
    bar = tqdm(total=num_frames, desc=desc, unit="frame", leave=False, disable=not progress)
    if cached_matches is not None:
        _combine_cached_matches(cached_matches, tuple(cached.meta["shape"][-2:]), memory, first_label, decode,
                                num_frames, batch_size, prop_cfg.topk, device, bar, timings)
        return timings
    matcher = Matcher(prop_cfg, topk=match_slot.topk if match_slot is not None else None)
    writer = cache.writer(num_frames) if cache is not None and cached is None else None
    match_writer = match_slot.writer(num_frames) if match_slot is not None else None
    frame_size = tuple(cached.meta["frame_size"]) if cached is not None else None
    for start in range(0, num_frames, batch_size):
        stop = min(start + batch_size, num_frames)
        tick = time.perf_counter()
        if cached is not None:
            feats = cached.read(start, stop, device)  # (B, C, h, w)
        else:
            frames = np.stack([read_frame(i) for i in range(start, stop)])
            frame_size = frame_size or tuple(frames.shape[1:3])
            timings["frames"] += time.perf_counter() - tick
            tick = time.perf_counter()
            feats = extract_features(encoder, frames, device, statistics)  # (B, C, h, w)
            if writer is not None:
                feats = cache.cache.round_trip(feats)
                writer.add(feats)
        sync_device(device)
        timings["features"] += time.perf_counter() - tick
        tick = time.perf_counter()
        batch_matches = []
        for t, feat in enumerate(feats, start):
            if t == 0:
                matcher.start(feat)
                memory.start(first_label(checked_grid(feat, frame_size, encoder.stride)))
            else:
                batch_matches.append(matcher.match(feat))
                decode(t, memory.step(batch_matches[-1]))
        if match_writer is not None and batch_matches:
            match_writer.add(batch_matches)
        sync_device(device)
        timings["propagation"] += time.perf_counter() - tick
        bar.update(stop - start)
    bar.close()
    if writer is not None:
        writer.finish(frame_size=list(frame_size), device=str(device))
    if match_writer is not None:
        match_writer.finish(device=str(device))
    return timings


def _look_up(cache: Optional[CacheSlot], prop_cfg: PropagationConfig, num_frames: int, timings: dict) -> tuple:
    """(cached features or None, the match slot or None, cached matches or None) of a video's slot;
    sets ``timings["cache"]`` and ``timings["matches"]`` to ``"miss"`` or ``"hit"``."""
    if cache is None:
        return None, None, None
    cached = cache.lookup()
    if cached is not None and cached.num_frames != num_frames:
        raise RuntimeError(f"{cached.entry}: {cached.num_frames} frames cached, the video has {num_frames}; "
                           f"delete the entry")
    timings["cache"] = timings["matches"] = "miss"
    match_slot = cache.matches(prop_cfg)
    if cached is None:
        return None, match_slot, None
    timings["cache"] = "hit"
    cached_matches = match_slot.lookup(prop_cfg.topk)
    if cached_matches is not None:
        timings["matches"] = "hit"
    return cached, match_slot, cached_matches


def _combine_cached_matches(cached_matches, grid: tuple[int, int], memory: LabelMemory, first_label: FirstLabel,
                            decode: Decode, num_frames: int, batch_size: int, topk: int, device: torch.device,
                            bar: tqdm, timings: dict) -> None:
    """Labels from stored matches (no frames, encoder or similarity search); times ``propagation``."""
    tick = time.perf_counter()
    memory.start(first_label(grid))
    for start in range(1, num_frames, batch_size):
        stop = min(start + batch_size, num_frames)
        for t, matches in enumerate(cached_matches.read(start - 1, stop - 1, topk, device), start):
            decode(t, memory.step(matches))
        bar.update(stop - start + (start == 1))
    sync_device(device)
    timings["propagation"] = time.perf_counter() - tick
    bar.close()


def checked_grid(feat: torch.Tensor, frame_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The feature grid ``(h, w)`` of frames of ``frame_size``; an error when ``feat`` (C, h, w) differs."""
    H, W = frame_size
    grid = grid_size(H, W, stride)
    if tuple(feat.shape[-2:]) != grid:
        raise RuntimeError(f"encoder grid {tuple(feat.shape[-2:])} != expected {grid} for {H}x{W} "
                           f"at stride {stride}")
    return grid


def video_features(encoder: torch.nn.Module, frames: np.ndarray, device: torch.device, batch_size: int = 8,
                   cache: Optional[CacheSlot] = None) -> tuple[torch.Tensor, dict]:
    """All of a video's features (T, C, h, w) on ``device``, from ``cache`` when it holds them.

    Returns (features, timings ``{"features": seconds, "cache": "hit"|"miss"|"off"}``); a
    miss computes them with :func:`extract_video_features` and stores them.
    """
    cached = cache.lookup() if cache is not None else None
    if cached is not None:
        tick = time.perf_counter()
        feats = cached.read(0, cached.num_frames, device)
        sync_device(device)
        return feats, {"features": time.perf_counter() - tick, "cache": "hit"}
    feats, seconds = extract_video_features(encoder, frames, device, batch_size)
    if cache is None:
        return feats, {"features": seconds, "cache": "off"}
    tick = time.perf_counter()
    feats = cache.cache.round_trip(feats)
    writer = cache.writer(len(frames))
    for i in range(0, len(frames), batch_size):
        writer.add(feats[i:i + batch_size])
    writer.finish(frame_size=list(frames.shape[1:3]), device=str(device))
    return feats, {"features": seconds + time.perf_counter() - tick, "cache": "miss"}
