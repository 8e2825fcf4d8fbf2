"""Propagate a mask or points through one's own video, streaming frame by frame.

    from propagate import track
    for f in track("clip.mp4", first_mask="first.png", checkpoint="crw.pth"):
        save(f.index, f.mask)                       # uint8 (H, W): the mask's own ids
    for f in track(frames, points=[(120.5, 80.5)], encoder="pixel", max_side=320):
        f.points, f.visible                         # (Q, 2) x, y pixels; (Q,) bool

``video`` is a video file, a folder of frames (JPEG/PNG, natural order) or an array
``uint8 (T, H, W, 3)`` RGB. Frames are decoded one at a time (:class:`datasets.video_decode.FrameReader`),
resized to the input size (:class:`Framing`), encoded in batches of ``batch_size`` and
propagated step by step (:class:`propagate.Propagator`, whose memory is bounded), so a long
video never sits in memory; only the frame being yielded, a batch of features and the
propagator's context are held.

Masks (:func:`propagate.labels.masks_to_labels` / :func:`~propagate.labels.labels_to_masks`,
or DINO's frame protocol with ``--preset dino``): ids 1..255 are objects (255 is void,
background, as in DAVIS); the yielded masks hold the given ids at the video's own size.
Points (:func:`~propagate.labels.queries_to_heatmaps`, decoded by
:func:`~propagate.labels.decode_points` with the TAP-Vid task's settings and visibility rule:
a point is hidden when its heatmap fades or its feature matches back away from the query):
``(x, y)`` pixels in the convention of :mod:`corr.geometry` (``(0, 0)`` the top-left corner
of the top-left pixel, pixel centres at ``i + 0.5``) of the video's own frames.

A mask or points given on frame N > 0 are propagated forward over N, N+1, ..., T-1 and then
backward over N-1, ..., 0, each direction a fresh propagation that starts from frame N with
the given labels (the same algorithm on the reversed video, as the TAP-Vid task does for
strided queries). Frames are yielded in that order: N, ..., T-1, N-1, ..., 0 (so
0, 1, ..., T-1 when N = 0); :attr:`TrackedFrame.index` says which frame each is. The backward
pass reads the video in chunks of :data:`BACKWARD_CHUNK` frames, last chunk first.

Inputs larger than ``max_side`` (default :data:`DEFAULT_MAX_SIDE`, the long side of 480p) on
their long side are downscaled (bilinear, aspect kept, never upscaled); masks are resized to
the input with nearest neighbour and the predicted ids back to the video's size with nearest
neighbour; points are scaled. With DINO's frame protocol (``frames="dino"``, the ``dino``
preset) the protocol sizes the frames and ``max_side`` does not apply.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import cv2
import numpy as np
import torch

from corr.errors import OptionError
from corr.geometry import from_integer_centres, to_integer_centres
from corr.runtime import resolve_device, sync_device
from datasets.palette import VOID_ID, read_mask_image
from datasets.video_decode import FrameReader

from .config import PropagationConfig
from .dino_frames import DINO_STATISTICS, dino_first_labels, dino_frame, dino_frame_size, dino_masks
from .encoder_loading import load_encoder
from .eval_config import EvalConfig
from .labels import (
    MIN_PEAK_RATIO,
    OCCLUSION_THRESHOLD,
    QUERY_SIGMA,
    QUERY_WINDOW,
    decode_points,
    heatmaps_to_points,
    labels_to_masks,
    masks_to_labels,
    queries_to_heatmaps,
)
from .propagator import Propagator
from .video import Statistics, checked_grid, encoder_for_video, extract_features, resize_frame

__all__ = ["DEFAULT_MAX_SIDE", "TrackedFrame", "Framing", "ArrayFrames", "track", "track_frames", "open_frames",
           "framing_for", "mask_ids", "parse_points"]

#: The long side inputs are downscaled to by default (that of DAVIS's 480p frames).
DEFAULT_MAX_SIDE = 854
#: Frames read at once, in order, by the backward pass (then yielded last first).
BACKWARD_CHUNK = 32
#: The point tracker's settings: those of the TAP-Vid task (:func:`propagate.labels.track_points`).
POINT_SETTINGS = {"sigma": QUERY_SIGMA, "window": QUERY_WINDOW, "occlusion_threshold": OCCLUSION_THRESHOLD,
                  "min_peak_ratio": MIN_PEAK_RATIO}

Video = Union[str, Path, np.ndarray]


@dataclass
class TrackedFrame:
    """One frame's result, at the video's own size.

    index:   the frame's index in the video;
    frame:   uint8 (H, W, 3) RGB, the frame itself;
    mask:    uint8 (H, W) ids (0 background, the given mask's object ids), or None when tracking points;
    points:  float64 (Q, 2) (x, y) pixels (:mod:`corr.geometry`), or None when propagating a mask;
    visible: bool (Q,), whether each point is predicted visible, or None.
    """

    index: int
    frame: np.ndarray
    mask: Optional[np.ndarray] = None
    points: Optional[np.ndarray] = None
    visible: Optional[np.ndarray] = None


class ArrayFrames:
    """An array ``uint8 (T, H, W, 3)`` RGB with the interface of :class:`datasets.video_decode.FrameReader`."""

    fps = 0.0

    def __init__(self, frames: np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise OptionError(f"a video array must be uint8 (T, H, W, 3) RGB with T >= 1, got {frames.dtype} "
                              f"{tuple(frames.shape)}")
        self.frames = frames
        self.num_frames = len(frames)
        self.size = tuple(frames.shape[1:3])
        self.path = f"array {tuple(frames.shape)}"

    def read(self, t: int) -> np.ndarray:
        return np.ascontiguousarray(self.frames[t])

    def close(self) -> None:
        pass


def open_frames(video: Video) -> Union[FrameReader, ArrayFrames]:
    """A video file, a frame folder or an array -> an object with ``num_frames``, ``size`` (H, W),
    ``fps`` (0.0 when unknown), ``path``, ``read(t)`` and ``close()``."""
    if isinstance(video, np.ndarray):
        return ArrayFrames(video)
    return FrameReader(video)


@dataclass(frozen=True)
class Framing:
    """How the video's frames become the encoder's input, and back.

    size:       (H, W) of the video; input_size: (H', W') the encoder sees;
    protocol:   ``"common"`` (bilinear resize to ``input_size``) or ``"dino"`` (DINO's frame
                protocol, :mod:`propagate.dino_frames`); stride: the encoder's.
    """

    size: tuple[int, int]
    input_size: tuple[int, int]
    protocol: str
    stride: int

    @property
    def scale(self) -> float:
        """Input over video size, on the long side (1.0: not resized)."""
        return max(self.input_size) / max(self.size)

    @property
    def statistics(self) -> Statistics:
        return DINO_STATISTICS if self.protocol == "dino" else None

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """A video frame uint8 (H, W, 3) -> the encoder's input frame (H', W', 3)."""
        if self.protocol == "dino":
            return dino_frame(frame, self.stride)
        return resize_frame(frame, self.input_size)

    def describe(self) -> str:
        H, W = self.size
        h, w = self.input_size
        if self.protocol == "dino":
            return f"{W}x{H} frames at {w}x{h} (DINO's frame protocol)"
        return f"{W}x{H} frames at {w}x{h} (scale {self.scale:.3f})"


def framing_for(size: tuple[int, int], stride: int, protocol: str = "common",
                max_side: Optional[int] = None) -> Framing:
    """The :class:`Framing` of a video of ``size`` (H, W): the long side at most ``max_side``
    (default :data:`DEFAULT_MAX_SIDE`; never upscaled), or DINO's sizes (``max_side`` must be None)."""
    H, W = size
    if protocol == "dino":
        if max_side is not None:
            raise OptionError("--max-side does not apply to DINO's frame protocol (--frames dino, preset dino), "
                              "which sizes the frames itself")
        return Framing((H, W), dino_frame_size(H, W, stride), protocol, stride)
    limit = DEFAULT_MAX_SIDE if max_side is None else int(max_side)
    if limit < 1:
        raise OptionError(f"--max-side must be >= 1, got {max_side}")
    scale = min(1.0, limit / max(H, W))
    return Framing((H, W), (max(1, round(H * scale)), max(1, round(W * scale))), protocol, stride)


def mask_ids(mask: Union[str, Path, np.ndarray], size: tuple[int, int], what: str = "the first mask"
             ) -> tuple[np.ndarray, list[int], str]:
    """A mask (a file, read by :func:`datasets.palette.read_mask_image`, or an id array (H, W)) ->
    (ids uint8 (H, W), object ids, how it was read). A size other than the video's ``size``
    (H, W), or a mask without an object, is an :class:`~corr.errors.OptionError`."""
    if isinstance(mask, (str, Path)):
        try:
            ids, how = read_mask_image(mask)
        except ValueError as error:
            raise OptionError(str(error)) from None
    else:
        ids, how = np.asarray(mask), "id array"
        if ids.dtype == bool:
            ids = ids.astype(np.uint8)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or (ids.size and (ids.min() < 0 or
                                                                                         ids.max() > 255)):
            raise OptionError(f"{what} must be an integer id map (H, W) with ids 0..255, got {ids.dtype} "
                              f"{tuple(ids.shape)}")
        ids = ids.astype(np.uint8)
    if tuple(ids.shape) != tuple(size):
        raise OptionError(f"{what} is {ids.shape[1]}x{ids.shape[0]} (WxH) but the video's frames are "
                          f"{size[1]}x{size[0]}; give a mask of the video's size")
    objects = sorted(int(i) for i in np.unique(ids) if i not in (0, VOID_ID))
    if not objects:
        raise OptionError(f"{what} holds no object (only background 0 and void 255) ({how})")
    return ids, objects, how


def parse_points(points: Union[str, Iterable], size: tuple[int, int]) -> np.ndarray:
    """``"x,y;x,y"`` or a sequence of (x, y) -> float64 (Q, 2) pixels; each inside the ``size`` (H, W) frame."""
    if isinstance(points, str):
        parts = [p for p in re.split(r"[;\s]+", points.strip()) if p]
        try:
            array = np.array([[float(v) for v in part.split(",")] for part in parts], dtype=np.float64)
        except ValueError:
            raise OptionError(f"--points must be 'x,y;x,y;...' (pixels), got {points!r}") from None
    else:
        array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0 or not np.isfinite(array).all():
        raise OptionError(f"points must be (x, y) pairs ('x,y;x,y'), at least one, got {points!r}")
    H, W = size
    outside = [tuple(p) for p in array.tolist() if not (0 <= p[0] <= W and 0 <= p[1] <= H)]
    if outside:
        raise OptionError(f"points {outside} lie outside the {W}x{H} frame (x in [0, {W}], y in [0, {H}])")
    return array


def track(video: Video, first_mask: Union[str, Path, np.ndarray, None] = None, points=None, *,
          encoder: Union[str, torch.nn.Module, None] = None, checkpoint: Optional[str] = None,
          weights: Optional[str] = None, preset: str = "crw", device: str = "auto", max_side: Optional[int] = None,
          mask_frame: int = 0, points_frame: int = 0, batch_size: int = 8, **options) -> Iterator[TrackedFrame]:
    """Propagate ``first_mask`` (given on ``mask_frame``) or ``points`` (on ``points_frame``) through
    ``video``; returns an iterator of :class:`TrackedFrame` (order: module docstring).

    video:      a video file, a frame folder or an array uint8 (T, H, W, 3) RGB;
    first_mask: an indexed / grey / binary / colour mask file (:func:`datasets.palette.read_mask_image`)
                or an id array (H, W), at the video's size;
    points:     (Q, 2) (x, y) pixels of the video's frames, or the text ``"x,y;x,y"``;
    encoder:    an encoder name (:mod:`corr.encoders`), a module with a ``stride`` (used as it is),
                or None (the checkpoint's, else ``resnet18-crw``); ``checkpoint`` / ``weights``: as
                for ``evaluate.py`` (:func:`propagate.encoder_loading.load_encoder`);
    preset:     the propagation preset (:data:`propagate.PRESETS`); ``options``: any other option of
                :class:`propagate.eval_config.EvalConfig` (``topk``, ``radius``, ``context``, ``seed``,
                ``tta_steps``, ...; with ``tta_steps`` every frame is read into memory once more, for
                adaptation, which does not stream);
    max_side:   the input's long side (default :data:`DEFAULT_MAX_SIDE`).

    Options are checked, the encoder loaded and the video opened when this is called; frames
    are read and propagated as the iterator is consumed.
    """
    if (first_mask is None) == (points is None):
        raise OptionError("give first_mask or points (one of them)")
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise OptionError(f"unknown option(s) {unknown}; see propagate.eval_config.EvalConfig")
    module = encoder if isinstance(encoder, torch.nn.Module) else None
    cfg = EvalConfig(task="video", encoder=None if module is not None else encoder, checkpoint=checkpoint,
                     weights=weights, preset=preset, device=device, batch_size=batch_size, max_side=max_side,
                     **options).validate()
    prop_cfg = cfg.propagation()
    if points is not None and prop_cfg.frames != "common":
        raise OptionError(f"points are tracked with the common frame protocol; give frames='common' (preset "
                          f"{preset} uses {prop_cfg.frames!r})")
    dev = resolve_device(device)
    if module is None:
        module = load_encoder(cfg, dev)[0]
    source = open_frames(video)
    framing = framing_for(source.size, module.stride, prop_cfg.frames, max_side)
    start = mask_frame if first_mask is not None else points_frame
    if not 0 <= start < source.num_frames:
        raise OptionError(f"frame {start} given for the {'mask' if points is None else 'points'}, the video has "
                          f"{source.num_frames} frames")
    mask = mask_ids(first_mask, source.size)[0] if first_mask is not None else None
    queries = parse_points(points, source.size) if points is not None else None
    module, _ = encoder_for_video(module, lambda t: framing.prepare(source.read(t)), source.num_frames, cfg, dev)
    return track_frames(source, module, prop_cfg, dev, framing, mask=mask, points=queries, start=start,
                        batch_size=batch_size, close=True)


def track_frames(source, encoder: torch.nn.Module, prop_cfg: PropagationConfig, device: torch.device,
                 framing: Framing, mask: Optional[np.ndarray] = None, points: Optional[np.ndarray] = None,
                 start: int = 0, batch_size: int = 8, timings: Optional[dict] = None,
                 close: bool = False) -> Iterator[TrackedFrame]:
    """The streaming loop of :func:`track` on an opened ``source`` (:func:`open_frames`) with a loaded
    encoder: a generator of :class:`TrackedFrame`.

    mask: ids uint8 (H, W) of frame ``start`` (:func:`mask_ids`), or points float (Q, 2) (x, y)
    pixels on frame ``start`` (:func:`parse_points`). ``timings``, when given, accumulates seconds
    of ``frames`` (decoding and resizing), ``features`` (encoder) and ``propagation`` (matching,
    labels, decoding). ``close``: close ``source`` at the end.
    """
    timings = {} if timings is None else timings
    for key in ("frames", "features", "propagation"):
        timings.setdefault(key, 0.0)
    coder = (_MaskCoder(mask, framing, prop_cfg.output_norm, device) if mask is not None
             else _PointCoder(points, framing, device))
    try:
        T = source.num_frames
        directions = [range(start, T)] + ([range(start, -1, -1)] if start > 0 else [])
        for order in directions:
            propagator = Propagator(prop_cfg)
            for t, frame, feat in _features(source, order, encoder, framing, device, batch_size, timings):
                tick = time.perf_counter()
                if t == start:
                    propagator.start(feat, coder.start(feat))
                    result = None if order.step < 0 else coder.first(t, frame)
                else:
                    result = coder.decode(t, frame, propagator.step(feat), feat)
                sync_device(device)
                timings["propagation"] += time.perf_counter() - tick
                if result is not None:
                    yield result
    finally:
        if close:
            source.close()


def _frames(source, order: range) -> Iterator[tuple[int, np.ndarray]]:
    """``(t, frame)`` for t in ``order`` (step 1 or -1); a backward order is read in forward chunks."""
    if order.step > 0:
        for t in order:
            yield t, source.read(t)
        return
    for high in range(order.start, order.stop, -BACKWARD_CHUNK):
        low = max(order.stop + 1, high - BACKWARD_CHUNK + 1)
        chunk = [source.read(t) for t in range(low, high + 1)]
        for t in range(high, low - 1, -1):
            yield t, chunk[t - low]


def _features(source, order: range, encoder: torch.nn.Module, framing: Framing, device: torch.device,
              batch_size: int, timings: dict) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """``(t, frame, features (C, h, w))`` in ``order``, the encoder run on ``batch_size`` frames at a time."""
    frames = _frames(source, order)
    while True:
        tick = time.perf_counter()
        batch = [item for _, item in zip(range(batch_size), frames)]
        if not batch:
            return
        inputs = np.stack([framing.prepare(frame) for _, frame in batch])
        timings["frames"] += time.perf_counter() - tick
        tick = time.perf_counter()
        feats = extract_features(encoder, inputs, device, framing.statistics)  # (B, C, h, w)
        checked_grid(feats[0], framing.input_size, framing.stride)
        sync_device(device)
        timings["features"] += time.perf_counter() - tick
        for (t, frame), feat in zip(batch, feats):
            yield t, frame, feat


class _MaskCoder:
    """Masks <-> labels for :func:`track_frames` (the DAVIS task's codecs, or DINO's)."""

    def __init__(self, ids: np.ndarray, framing: Framing, output_norm: str, device: torch.device):
        self.ids, self.framing, self.output_norm, self.device = ids, framing, output_norm, device
        self.objects = sorted(int(i) for i in np.unique(ids) if i not in (0, VOID_ID))

    def start(self, feat: torch.Tensor) -> torch.Tensor:
        grid, f = tuple(feat.shape[-2:]), self.framing
        if f.protocol == "dino":
            return dino_first_labels(self.ids, self.objects, grid, device=self.device)
        return masks_to_labels(_resize_ids(self.ids, f.input_size), self.objects, grid, f.stride, device=self.device)

    def first(self, t: int, frame: np.ndarray) -> TrackedFrame:
        return TrackedFrame(t, frame, mask=np.where(self.ids == VOID_ID, 0, self.ids).astype(np.uint8))

    def decode(self, t: int, frame: np.ndarray, labels: torch.Tensor, feat: torch.Tensor) -> TrackedFrame:
        f = self.framing
        if f.protocol == "dino":
            ids = dino_masks(labels, self.objects, f.size, f.stride, self.output_norm)
        else:
            ids = _resize_ids(labels_to_masks(labels, self.objects, f.input_size, f.stride, self.output_norm), f.size)
        return TrackedFrame(t, frame, mask=ids)


class _PointCoder:
    """Points <-> labels for :func:`track_frames` (the TAP-Vid task's codec and visibility rule)."""

    def __init__(self, points: np.ndarray, framing: Framing, device: torch.device):
        self.points, self.framing, self.device = points, framing, device
        (H, W), (h, w) = framing.size, framing.input_size
        self.scale = np.array([w / W, h / H])  # video pixels -> input pixels (corner convention)
        self.queries = torch.as_tensor(to_integer_centres(points * self.scale), dtype=torch.float32, device=device)

    def start(self, feat: torch.Tensor) -> torch.Tensor:
        s = POINT_SETTINGS
        label0 = queries_to_heatmaps(self.queries, tuple(feat.shape[-2:]), self.framing.stride, s["sigma"],
                                     device=self.device)
        _, self.peak0 = heatmaps_to_points(label0, self.framing.stride, s["window"])
        self.query_feat, self.previous = feat, self.queries
        return label0

    def first(self, t: int, frame: np.ndarray) -> TrackedFrame:
        return TrackedFrame(t, frame, points=self.points.copy(), visible=np.ones(len(self.points), bool))

    def decode(self, t: int, frame: np.ndarray, labels: torch.Tensor, feat: torch.Tensor) -> TrackedFrame:
        s = POINT_SETTINGS
        decode = partial(heatmaps_to_points, stride=self.framing.stride, window=s["window"])
        points, hidden = decode_points(labels, self.query_feat, feat, self.queries, self.previous, self.peak0,
                                       self.framing.stride, decode, s["occlusion_threshold"], s["min_peak_ratio"])
        self.previous = points
        xy = from_integer_centres(points.cpu().double().numpy()) / self.scale
        return TrackedFrame(t, frame, points=xy, visible=~hidden.cpu().numpy())


def _resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An id map uint8 -> ``size`` (H, W), nearest neighbour (unchanged when already that size)."""
    if tuple(ids.shape) == tuple(size):
        return ids
    return cv2.resize(ids, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
