"""Task runner: read -> features -> propagate -> score -> save.

    python evaluate.py --task davis --data-root data/DAVIS --checkpoint ckpt.pt
    python evaluate.py --task jhmdb|vip|tapvid ...        (runners in :mod:`propagate.tasks`)

Every task takes the same options (:class:`EvalConfig`) and writes the same kind of outputs
under ``--out`` (default ``results/<task>``): per-video records for resuming, predictions in
the benchmark's own format, ``results.json`` and, with ``--vis``, overlay videos and contact
sheets. Per-task defaults (:data:`TASK_DEFAULTS`): input size (DAVIS native, JHMDB 320x320,
VIP 560x560, TAP-Vid 256x256; ``--input-size H,W`` overrides), split and data location. The
propagation preset is ``crw`` for every task (``--preset`` changes it).

DAVIS outputs under ``--out``:

* ``predictions/<seq>/<frame>.png``: indexed PNGs with the DAVIS palette and frame 0's
  object ids, at the annotation's size: exactly what the official scorer reads;
* ``sequences/<seq>.json``: one sequence's scores, written as soon as it is done. A rerun
  with the same settings skips sequences that have one (``--overwrite`` redoes them), so an
  interrupted evaluation loses only the sequence in progress;
* ``results.json``: ``"metrics"`` (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall,
  F-Decay as fractions), per-object and per-sequence numbers, the full configuration, the
  checkpoint's hash, the code version, the dataset's identity and timings;
* with ``--vis``: ``vis/<seq>.mp4`` (propagated masks blended on the frames) and
  ``vis/<seq>.png`` (a contact sheet).

Without ``--data-root`` the DAVIS task uses ``data/DAVIS`` when it exists and otherwise a
generated synthetic set in the DAVIS-2017 format (``data/synthetic-davis``), and says so.

Feature cache, sweeps, several processes (every task):

* ``--cache DIR`` stores each video's features, keyed by the encoder's identity (name,
  kwargs, checkpoint SHA-256 or random-init seed), the preprocessing (input size, resize,
  normalisation) and the video (dataset listing hash and name), see :mod:`propagate.cache`.
  A later run with the same encoder and input reads them instead of running the encoder.
  Next to them it keeps each matching setting's top-k matches (similarities and keys,
  :class:`propagate.propagator.Matches`; ``--cache-topk`` keeps more than the setting's
  top-k), so a later run with the same context, radius, padding and feature normalisation
  skips the similarity search too and only combines labels, for any top-k up to the kept
  one, any temperature and any label normalisation (not the TAP-Vid task, which starts a
  propagation at every query frame: it caches features only).
  ``--cache-dtype float32`` (default) is exact: results equal a run without the cache;
  ``float16`` halves the disk space and rounds the features on every run using it. With
  ``--tta-steps`` the cache is neither read nor written (adapted features are per video).
* ``--sweep "topk=5,10,20 radius=12,24"`` (or ``"preset=crw,dino"``; any of
  :data:`SWEEP_FIELDS`) evaluates the cartesian product, each setting as its own run in
  ``<out>/sweep/<setting>/`` (e.g. ``topk-5_radius-12``), sharing the features through
  ``--cache`` or, without it, ``<out>/feature-cache``, and keeping the largest top-k of
  the sweep's settings in the cache, so settings that differ only in top-k, temperature or
  label normalisation search similarities once; ``<out>/sweep/summary.json`` and a
  printed table compare them.
* With ``--task tapvid --tracker walk`` a sweep varies the walk tracker's own settings
  (``--sweep "local_radius=0,1,2 occlusion_threshold=2,4,8"``); propagation settings are
  an error there, and there are no encoder features to cache.
* ``torchrun --nproc_per_node=G evaluate.py ...``: rank r evaluates sequences r::G, rank 0
  merges the per-sequence records into ``results.json`` (:mod:`propagate.distributed`);
  the metrics equal a single process's exactly.

Every ``results.json`` has a ``"factors"`` block naming the implementation factors of the
unified formulation the run used (:func:`implementation_factors`): feature and label
normalisation (``--normalize-features/--no-normalize-features``, ``--label-norm``), how
labels go to the feature grid and outputs back to pixels (bilinear, fixed per task), input
resolution, context, top-k, radius and temperature. Timings add ``frames_s`` (reading
frames), ``cache_hits`` (videos whose features were read) and ``match_hits`` (videos whose
matches were read).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from corr.adapt import AdaptConfig, adapt_encoder
from corr.encoders import build_encoder, load_checkpoint
from corr.io import atomic_write_json
from corr.runtime import REPO_ROOT, code_version, resolve_device, sync_device
from datasets.davis import DavisDataset, DavisSequence
from datasets.palette import write_indexed_png
from datasets.transforms import normalize_frames

from .cache import CACHE_DTYPES, CacheSlot, FeatureCache, cache_slot, preprocessing_identity
from .config import PropagationConfig
from .distributed import Ranks, init_ranks, rank_device
from .labels import grid_size, labels_to_masks, masks_to_labels
from .metrics import DAVIS_SUMMARY_KEYS, davis_sequence_scores, davis_summary
from .propagator import LabelMemory, Matcher
from .visualize import contact_sheet, overlay_mask, save_png, write_video

TASKS = ("davis", "jhmdb", "vip", "tapvid")
DEFAULT_DAVIS_ROOT = REPO_ROOT / "data" / "DAVIS"
SYNTHETIC_DAVIS_ROOT = REPO_ROOT / "data" / "synthetic-davis"


@dataclass(frozen=True)
class TaskDefaults:
    """What a task uses when an option is not given.

    input_size: (H, W) every frame is resized to before feature extraction (None = native);
    split:      the split (DAVIS/VIP: a name; JHMDB: the split file, relative to the root);
    data:       the dataset looked for when ``--data-root`` is not given;
    synthetic:  where a generated stand-in is written when ``data`` does not exist either.
    """

    input_size: Optional[tuple[int, int]]
    split: Optional[str]
    data: Path
    synthetic: Path


#: Per-task defaults: the published input sizes (PROTOCOLS.md section 4: JHMDB 320x320,
#: VIP 560x560; TAP-Vid's 256x256 protocol, section 8); DAVIS keeps its native 480p frames.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "davis": TaskDefaults(None, "val", DEFAULT_DAVIS_ROOT, SYNTHETIC_DAVIS_ROOT),
    "jhmdb": TaskDefaults((320, 320), "splits/test_split1.txt", REPO_ROOT / "data" / "JHMDB",
                          REPO_ROOT / "data" / "synthetic-jhmdb"),
    "vip": TaskDefaults((560, 560), "val", REPO_ROOT / "data" / "VIP", REPO_ROOT / "data" / "synthetic-vip"),
    "tapvid": TaskDefaults((256, 256), None, REPO_ROOT / "data" / "tapvid_davis.pkl",
                           REPO_ROOT / "data" / "synthetic-tapvid"),
}


@dataclass
class EvalConfig:
    """Evaluate an encoder by label propagation on a benchmark."""

    task: str = dataclasses.field(default="davis", metadata={"help": "benchmark: " + "|".join(TASKS)})
    data_root: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "dataset: DAVIS / VIP_Fine folder, JHMDB folder or split file, TAP-Vid "
                                        ".pkl or Kinetics folder; default data/<DAVIS|JHMDB|VIP|tapvid_davis.pkl>, "
                                        "else a generated synthetic set"})
    split: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "split name or path to a split .txt (default: davis/vip val, jhmdb "
                                        "splits/test_split1.txt under the data root)"})
    resolution: str = dataclasses.field(default="480p", metadata={"help": "DAVIS: 480p or Full-Resolution"})
    input_size: Optional[tuple[int, ...]] = dataclasses.field(
        default=None, metadata={"help": "H,W frames are resized to (default: jhmdb 320,320; vip 560,560; "
                                        "tapvid 256,256; davis native only)"})
    query_mode: str = dataclasses.field(default="strided", metadata={"help": "TAP-Vid queries: first|strided"})
    tracker: str = dataclasses.field(
        default="propagation", metadata={"help": "TAP-Vid tracker: propagation (label propagation of --encoder "
                                                 "features) | walk (chained flows of a global-matching "
                                                 "--checkpoint, corr.flow_track)"})
    sequences: Optional[tuple[str, ...]] = dataclasses.field(
        default=None, metadata={"help": "comma-separated subset of the split's sequences"})
    encoder: str = dataclasses.field(default="resnet18-crw", metadata={"help": "encoder name (corr.encoders.ENCODERS)"})
    checkpoint: Optional[str] = dataclasses.field(default=None, metadata={"help": "our or the published CRW checkpoint"})
    weights: Optional[str] = dataclasses.field(default=None, metadata={"help": "local torchvision ImageNet weights"})
    preset: str = dataclasses.field(default="crw", metadata={"help": "propagation preset"})
    context: Optional[int] = dataclasses.field(default=None, metadata={"help": "override: short-memory frames"})
    topk: Optional[int] = dataclasses.field(default=None, metadata={"help": "override: top-k"})
    temperature: Optional[float] = dataclasses.field(default=None, metadata={"help": "override: softmax temperature"})
    radius: Optional[float] = dataclasses.field(default=None, metadata={"help": "override: radius in cells (inf = none)"})
    pad_with_first: Optional[bool] = dataclasses.field(default=None, metadata={"help": "override: pad with frame 0"})
    normalize_features: Optional[bool] = dataclasses.field(
        default=None, metadata={"help": "override: L2-normalise features per position (cosine affinity)"})
    label_norm: Optional[str] = dataclasses.field(default=None, metadata={"help": "override: none|minmax"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto|cpu|cuda[:i]"})
    out: Optional[str] = dataclasses.field(default=None, metadata={"help": "output folder (default results/<task>)"})
    vis: bool = dataclasses.field(default=False, metadata={"help": "write overlay videos and contact sheets"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "frames per feature-extraction batch"})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "redo sequences already scored in --out"})
    tta_steps: int = dataclasses.field(default=0, metadata={"help": "test-time adaptation: walk steps per video (0: off)"})
    tta_window: int = dataclasses.field(default=10, metadata={"help": "test-time adaptation: clip frames within W of a time"})
    tta_lr: float = dataclasses.field(default=1e-4, metadata={"help": "test-time adaptation: Adam learning rate"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of a random-init encoder and of adaptation"})
    cache: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "feature cache folder (propagate.cache); not used with --tta-steps"})
    cache_dtype: str = dataclasses.field(
        default="float32", metadata={"help": "feature cache storage: float32 (exact) | float16 (half the disk)"})
    cache_topk: int = dataclasses.field(
        default=0, metadata={"help": "matches per query kept in the cache (at least the setting's top-k); a sweep "
                                     "keeps its largest top-k"})
    local_radius: Optional[int] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: soft-argmax window radius in cells, 0 = whole frame "
                                        "(default: corr.flow_track.FlowTrackConfig)"})
    occlusion_threshold: Optional[float] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: forward-backward distance in pixels above which a point "
                                        "is occluded (default: corr.flow_track.FlowTrackConfig)"})
    sweep: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "evaluate every combination, e.g. 'topk=5,10,20 radius=12,24' or "
                                        "'preset=crw,dino'; with --tracker walk 'local_radius=0,1,2' "
                                        "(results under <out>/sweep/<setting>/)"})

    def adaptation(self) -> AdaptConfig:
        """Test-time adaptation settings (:mod:`corr.adapt`); ``steps == 0`` is off."""
        return AdaptConfig(steps=self.tta_steps, window=self.tta_window, lr=self.tta_lr, seed=self.seed)

    def propagation(self) -> PropagationConfig:
        """The preset with this run's overrides (``--radius inf`` removes the locality limit)."""
        overrides = {name: getattr(self, name) for name in ("context", "topk", "temperature", "pad_with_first",
                                                            "normalize_features", "label_norm")
                     if getattr(self, name) is not None}
        if self.radius is not None:
            overrides["radius"] = None if math.isinf(self.radius) else self.radius
        return PropagationConfig.preset(self.preset, **overrides)

    def flow_tracking(self):
        """The walk tracker's settings (:class:`corr.flow_track.FlowTrackConfig` with this run's overrides)."""
        from corr.flow_track import FlowTrackConfig

        overrides = {name: getattr(self, name) for name in WALK_SETTINGS if getattr(self, name) is not None}
        return FlowTrackConfig(**overrides)

    def with_task_defaults(self) -> "EvalConfig":
        """This configuration with the task's defaults filled in (``out``, ``split``, ``input_size``)."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; available: {', '.join(TASKS)}")
        defaults = TASK_DEFAULTS[self.task]
        size = self.input_size if self.input_size is not None else defaults.input_size
        if size is not None:
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"--input-size must be H,W (two positive integers), got {self.input_size}")
        if self.task == "davis" and self.input_size is not None:
            raise ValueError("--input-size is not supported by the DAVIS task (native resolution; see --resolution)")
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"--cache-dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        if self.query_mode not in ("first", "strided"):
            raise ValueError(f"--query-mode must be first or strided, got {self.query_mode!r}")
        if self.tracker not in ("propagation", "walk"):
            raise ValueError(f"--tracker must be propagation or walk, got {self.tracker!r}")
        if self.tracker == "walk":
            self._check_walk()
        elif any(getattr(self, name) is not None for name in WALK_SETTINGS):
            raise ValueError(f"--{'/--'.join(n.replace('_', '-') for n in WALK_SETTINGS)} are settings of "
                             f"--tracker walk (TAP-Vid), not of label propagation")
        return dataclasses.replace(self, out=self.out or f"results/{self.task}",
                                   split=self.split if self.split is not None else defaults.split,
                                   input_size=size)

    def _check_walk(self) -> None:
        """Options that have no meaning for ``--tracker walk`` are errors, not silently ignored."""
        if self.task != "tapvid":
            raise ValueError("--tracker walk is for --task tapvid only")
        unused = [name for name in PROPAGATION_OVERRIDES if getattr(self, name) is not None]
        if self.preset != EvalConfig.preset:
            unused.insert(0, "preset")
        if unused:
            raise ValueError(f"--{', --'.join(n.replace('_', '-') for n in unused)}: label-propagation settings do "
                             f"not apply to --tracker walk (its settings: --local-radius, --occlusion-threshold)")
        if self.encoder not in (EvalConfig.encoder, GLOBAL_MATCH):
            raise ValueError(f"--tracker walk tracks with a global-match network (--checkpoint of train.py --loss "
                             f"global_walk); --encoder {self.encoder} does not apply")
        for name, value in (("weights", self.weights), ("cache", self.cache)):
            if value:
                raise ValueError(f"--{name} is for encoder features of label propagation; --tracker walk has none")
        if self.tta_steps > 0:
            raise ValueError("--tta-steps adapts a propagation encoder; it is not supported with --tracker walk")
        self.flow_tracking()  # bad values fail here


#: The overrides of the propagation preset (:meth:`EvalConfig.propagation`).
PROPAGATION_OVERRIDES = ("context", "topk", "temperature", "radius", "pad_with_first", "normalize_features",
                         "label_norm")
#: The walk tracker's own options (:meth:`EvalConfig.flow_tracking`).
WALK_SETTINGS = ("local_radius", "occlusion_threshold")
#: ``--encoder`` name of the convolutional backbone of :class:`corr.global_match.GlobalMatchNet`.
GLOBAL_MATCH = "global-match"


def load_global_match_model(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A :class:`corr.global_match.GlobalMatchNet` from ``--checkpoint`` (either checkpoint format of
    :func:`corr.global_match.load_global_match`) or randomly initialised with ``--seed``, and its
    description (``encoder``, ``format``, ``path``/``sha256`` or ``seed``, ``config``)."""
    from corr.global_match import load_global_match, seeded_global_match
    from corr.io import file_sha256

    if cfg.weights:
        raise ValueError("--weights are torchvision ResNet weights; a global-match network takes --checkpoint")
    if cfg.checkpoint:
        model = load_global_match(cfg.checkpoint)
        info = {"encoder": GLOBAL_MATCH, "format": "checkpoint", "path": str(cfg.checkpoint),
                "sha256": file_sha256(cfg.checkpoint)}
    else:
        model = seeded_global_match(cfg.seed)  # the same random network for the same seed
        info = {"encoder": GLOBAL_MATCH, "format": "random-init", "seed": cfg.seed}
    info["config"] = dataclasses.asdict(model.cfg)
    return model.to(device).eval(), info


def load_encoder(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The encoder to evaluate and a description of where its weights came from.

    ``--encoder global-match``: the convolutional backbone (``features``, stride 4) of a
    global-match network (:func:`load_global_match_model`), e.g. to propagate labels with the
    features the walk tracker was trained on.
    """
    if cfg.checkpoint and cfg.weights:
        raise ValueError("give --checkpoint or --weights, not both")
    if cfg.encoder == GLOBAL_MATCH:
        model, info = load_global_match_model(cfg, device)
        return model.features, {**info, "part": "features (convolutional backbone, stride 4)"}
    if cfg.checkpoint:
        encoder, info = load_checkpoint(cfg.checkpoint, device)
        return encoder, {k: v for k, v in info.items() if k in ("encoder", "kwargs", "format", "sha256", "path", "step")}
    torch.manual_seed(cfg.seed)  # a random-init encoder is the same for the same seed
    encoder = build_encoder(cfg.encoder, weights=cfg.weights).to(device).eval()
    info = {"encoder": cfg.encoder, "format": "torchvision" if cfg.weights else "random-init"}
    if not cfg.weights:
        info["seed"] = cfg.seed
    if cfg.weights:
        from corr.io import file_sha256

        info.update(path=str(cfg.weights), sha256=file_sha256(cfg.weights))
    return encoder, info



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

def open_davis(cfg: EvalConfig) -> DavisDataset:
    """The DAVIS dataset of this run; generates the synthetic set when no data is given."""
    if cfg.data_root is not None:
        return DavisDataset(cfg.data_root, split=cfg.split or "val", resolution=cfg.resolution)
    if DEFAULT_DAVIS_ROOT.is_dir():
        print(f"using DAVIS at {DEFAULT_DAVIS_ROOT}")
        return DavisDataset(DEFAULT_DAVIS_ROOT, split=cfg.split or "val", resolution=cfg.resolution)
    from datasets.synthetic import generate_davis

    synthetic_banner("DAVIS", DEFAULT_DAVIS_ROOT, SYNTHETIC_DAVIS_ROOT, "DAVIS-2017")
    root = generate_davis(SYNTHETIC_DAVIS_ROOT, num_sequences=4, num_frames=24, size=(240, 432), seed=0, split="val")
    return DavisDataset(root, split="val", resolution="480p")


def synthetic_banner(benchmark: str, expected: Path, synthetic: Path, format_name: str) -> None:
    """Say loudly that a generated stand-in replaces a missing benchmark."""
    print("=" * 78)
    print(f"No --data-root and no {expected}: evaluating on a GENERATED synthetic set in the")
    print(f"{format_name} format ({synthetic}). Numbers are not {benchmark} numbers.")
    print("=" * 78)


def resize_frame(frame: np.ndarray, size: Optional[tuple[int, int]]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3), bilinear (``cv2.INTER_LINEAR``); None = unchanged."""
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame
    return cv2.resize(frame, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


@torch.inference_mode()
def extract_features(encoder: torch.nn.Module, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> float32 features (B, C, h, w) on ``device``."""
    return encoder(normalize_frames(frames, device=device)).float()


@torch.inference_mode()
def extract_video_features(encoder: torch.nn.Module, frames: np.ndarray, device: torch.device,
                           batch_size: int = 8) -> tuple[torch.Tensor, float]:
    """All frames uint8 (T, H, W, 3) -> (features (T, C, h, w) on ``device``, seconds spent)."""
    tick = time.perf_counter()
    feats = torch.cat([extract_features(encoder, frames[i:i + batch_size], device)
                       for i in range(0, len(frames), batch_size)])
    sync_device(device)
    return feats, time.perf_counter() - tick


@torch.inference_mode()
def propagate_frames(read_frame: Callable[[int], np.ndarray], num_frames: int, encoder: torch.nn.Module,
                     prop_cfg: PropagationConfig, device: torch.device,
                     first_label: Callable[[tuple[int, int]], torch.Tensor],
                     decode: Callable[[int, torch.Tensor], None], batch_size: int = 8,
                     desc: str = "", progress: bool = True, cache: Optional[CacheSlot] = None) -> dict:
    """The step-wise propagation loop every task shares; returns timings in seconds.

    read_frame(t):      uint8 (H, W, 3) frame t at the input size (the same for every t);
    first_label(grid):  frame 0's labels (K, h, w) for the feature grid ``(h, w)``;
    decode(t, labels):  receives the soft labels (K, h, w) of every frame t >= 1, in order;
    cache:              this video's feature-cache slot (:mod:`propagate.cache`), or None.

    Features are computed ``batch_size`` frames at a time and consumed at once by a
    :class:`Matcher` and a :class:`LabelMemory`, so memory does not grow with the video's
    length. With a cache slot: if it holds the video's matches for this matching setting
    (with at least ``topk`` per query), only labels are combined (no frames, encoder or
    similarity search); else if it holds the features, they are read instead of computed;
    whatever was computed is stored. Timings: ``frames`` (reading frames), ``features``
    (encoder or cache read, cache writes), ``propagation`` (matching or reading matches, and
    labels), ``cache`` (features) and ``matches``: ``"hit"``, ``"miss"`` or ``"off"``.
    """
    timings = {"frames": 0.0, "features": 0.0, "propagation": 0.0, "cache": "off", "matches": "off"}
    cached = cached_matches = match_slot = None
    if cache is not None:
        cached = cache.lookup()
        if cached is not None and cached.num_frames != num_frames:
            raise RuntimeError(f"{cached.entry}: {cached.num_frames} frames cached, the video has {num_frames}; "
                               f"delete the entry")
        timings["cache"] = timings["matches"] = "miss"
        match_slot = cache.matches(prop_cfg)
        if cached is not None:
            timings["cache"] = "hit"
            cached_matches = match_slot.lookup(prop_cfg.topk)
    memory = LabelMemory(prop_cfg)
    bar = tqdm(total=num_frames, desc=desc, unit="frame", leave=False, disable=not progress)
    if cached_matches is not None:
        timings["matches"] = "hit"
        tick = time.perf_counter()
        memory.start(first_label(tuple(cached.meta["shape"][-2:])))
        for start in range(1, num_frames, batch_size):
            stop = min(start + batch_size, num_frames)
            for t, matches in enumerate(cached_matches.read(start - 1, stop - 1, prop_cfg.topk, device), start):
                decode(t, memory.step(matches))
            bar.update(stop - start + (start == 1))
        sync_device(device)
        timings["propagation"] = time.perf_counter() - tick
        bar.close()
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
            feats = extract_features(encoder, frames, device)  # (B, C, h, w)
            if writer is not None:
                feats = cache.cache.round_trip(feats)
                writer.add(feats)
        sync_device(device)
        timings["features"] += time.perf_counter() - tick
        tick = time.perf_counter()
        batch_matches = []
        for t, feat in enumerate(feats, start):
            if t == 0:
                H, W = frame_size
                grid = grid_size(H, W, encoder.stride)
                if tuple(feat.shape[-2:]) != grid:
                    raise RuntimeError(f"encoder grid {tuple(feat.shape[-2:])} != expected {grid} for {H}x{W} "
                                       f"at stride {encoder.stride}")
                matcher.start(feat)
                memory.start(first_label(grid))
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


def feature_cache(cfg: EvalConfig, encoder_info: dict, identity: dict, name: str) -> Optional[CacheSlot]:
    """Video ``name``'s feature-cache slot, or None without ``--cache`` or with test-time adaptation
    (adapted features depend on the video, so they are never cached)."""
    if not cfg.cache or cfg.tta_steps > 0:
        return None
    preprocessing = preprocessing_identity(cfg.input_size, cfg.resolution if cfg.task == "davis" else None)
    return cache_slot(FeatureCache(cfg.cache, cfg.cache_dtype), encoder_info, preprocessing, identity, name,
                      match_topk=cfg.cache_topk)


@torch.inference_mode()
def propagate_sequence(seq: DavisSequence, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                       device: torch.device, batch_size: int = 8, progress: bool = True,
                       cache: Optional[CacheSlot] = None) -> tuple[np.ndarray, dict]:
    """Propagate frame 0's masks through a sequence.

    Returns (predicted ids uint8 (T, H, W), timings in seconds). Features are computed
    ``batch_size`` frames at a time and consumed at once by the step-wise propagator, so
    memory does not grow with the video's length.
    """
    H, W = seq.size
    first = seq.read_annotation(0)
    object_ids = seq.object_ids()
    predictions = np.zeros((seq.num_frames, H, W), np.uint8)
    predictions[0] = np.where(first == 255, 0, first)

    def decode(t: int, labels: torch.Tensor) -> None:
        predictions[t] = labels_to_masks(labels, object_ids, (H, W), encoder.stride)

    timings = propagate_frames(
        seq.read_frame, seq.num_frames, encoder, prop_cfg, device,
        first_label=lambda grid: masks_to_labels(first, object_ids, grid, encoder.stride, device=device),
        decode=decode, batch_size=batch_size, desc=seq.name, progress=progress, cache=cache)
    return predictions, timings


def save_predictions(out_dir: Path, seq: DavisSequence, predictions: np.ndarray) -> None:
    """``out_dir/<seq>/<frame>.png`` indexed PNGs named like the sequence's frames."""
    for path, ids in zip(seq.frame_paths, predictions):
        write_indexed_png(out_dir / seq.name / f"{Path(path).stem}.png", ids)


def save_visualisation(out_dir: Path, seq: DavisSequence, predictions: np.ndarray, fps: float = 10.0) -> None:
    """``<seq>.mp4`` with masks blended on the frames and ``<seq>.png``, a contact sheet."""
    overlays = [overlay_mask(seq.read_frame(t), predictions[t]) for t in range(seq.num_frames)]
    write_overlays(out_dir, seq.name, overlays, fps=fps)


def write_overlays(out_dir: Path, name: str, overlays: list[np.ndarray], fps: float = 10.0) -> None:
    """``<name>.mp4`` of the overlay frames and ``<name>.png``, a contact sheet of up to 12 of them."""
    picks = np.unique(np.linspace(0, len(overlays) - 1, min(12, len(overlays))).round().astype(int))
    write_video(out_dir / f"{name}.mp4", overlays, fps=fps)
    sheet = contact_sheet([overlays[t] for t in picks], columns=4, captions=[f"{name} t={t}" for t in picks])
    save_png(out_dir / f"{name}.png", sheet)


def run_key(cfg: EvalConfig, encoder_info: dict, dataset_identity: dict, extra: Optional[dict] = None,
            propagation: bool = True) -> str:
    """Hash of everything that determines a sequence's result (resume only reuses equal keys).

    ``extra``: task settings that also change the result (input size, decoding parameters,
    tracker settings). ``propagation=False`` (the walk tracker) leaves the propagation
    preset out, since it does not change that tracker's result.
    """
    settings = {"propagation": cfg.propagation().to_dict() if propagation else None, "encoder": encoder_info,
                "adaptation": dataclasses.asdict(cfg.adaptation()) if cfg.tta_steps > 0 else None,
                "dataset": dataset_identity, "resolution": cfg.resolution}
    if extra:
        settings["task"] = extra
    if cfg.cache and cfg.tta_steps <= 0 and cfg.cache_dtype != "float32":
        settings["feature_storage"] = cfg.cache_dtype  # rounded features change the result
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TaskRun:
    """What every task runner sets up before its per-video loop (:func:`start_task`).

    cfg:          the configuration with the task's defaults filled in;
    ranks/device: this process among the evaluation processes and its device;
    encoder:      the module that makes the predictions (an encoder, or the walk tracker's
                  network) and ``encoder_info``, where its weights came from (results.json's
                  ``"checkpoint"``);
    prop_cfg:     the propagation settings (None for the walk tracker);
    dataset:      the opened dataset and ``identity``, its description (``dataset.identity()``);
    settings:     the task's settings that change a video's result (input size, decoding,
                  tracking), hashed into ``key``, the run key of every per-video record.
    """

    cfg: EvalConfig
    ranks: Ranks
    device: torch.device
    encoder: torch.nn.Module
    encoder_info: dict
    prop_cfg: Optional[PropagationConfig]
    dataset: object
    identity: dict
    settings: dict
    key: str

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def describe(self) -> str:
        """``encoder ...; propagation ...; device ...[; G processes]`` for the opening line."""
        info = self.encoder_info
        method = f"propagation {self.prop_cfg}" if self.prop_cfg is not None else f"walk tracker {self.settings}"
        return (f"encoder {info['encoder']} ({info['format']}); {method}; device {self.device}"
                + (f"; {self.ranks.world_size} processes" if self.ranks.distributed else ""))


def start_task(cfg: EvalConfig, open_dataset: Callable[[EvalConfig], object],
               settings: Optional[Callable[[EvalConfig, object], dict]] = None,
               load: Callable[[EvalConfig, torch.device], tuple[torch.nn.Module, dict]] = load_encoder,
               propagation: bool = True) -> TaskRun:
    """The setup every task shares: task defaults, ranks (:mod:`propagate.distributed`), device,
    the model (``load``: :func:`load_encoder` or :func:`load_global_match_model`), propagation
    settings (when ``propagation``), the dataset (``open_dataset(cfg)``) and the run key over
    ``settings(cfg, dataset)`` (:func:`run_key`)."""
    cfg = cfg.with_task_defaults()
    ranks = init_ranks()
    device = rank_device(resolve_device(cfg.device), ranks)
    encoder, encoder_info = load(cfg, device)
    prop_cfg = cfg.propagation() if propagation else None
    dataset = open_dataset(cfg)
    identity = dataset.identity()
    task_settings = settings(cfg, dataset) if settings is not None else {}
    key = run_key(cfg, encoder_info, identity, task_settings or None, propagation=propagation)
    return TaskRun(cfg, ranks, device, encoder, encoder_info, prop_cfg, dataset, identity, task_settings, key)


def evaluate_davis(cfg: EvalConfig) -> Optional[dict]:
    """Run the DAVIS task end to end; returns the content written to ``results.json``.

    With several processes (:mod:`propagate.distributed`) each rank evaluates its shard of
    the sequences; rank 0 merges the records and returns the results, the others None.
    """
    run = start_task(cfg, open_davis)
    cfg, ranks, device, encoder, encoder_info = run.cfg, run.ranks, run.device, run.encoder, run.encoder_info
    dataset, identity, prop_cfg, out, key = run.dataset, run.identity, run.prop_cfg, run.out, run.key
    names = list(cfg.sequences) if cfg.sequences else dataset.sequences
    if ranks.is_main:
        print(f"{len(names)} sequences from {identity['root']} ({identity['split']}); {run.describe()}")

    for name in tqdm(ranks.shard(names), desc="sequences", unit="seq", disable=not ranks.is_main):
        path = record_path(out, name)
        if not cfg.overwrite and load_record(path, key) is not None:
            continue
        seq = dataset[name]
        video_encoder, adapt_seconds = encoder_for_video(encoder, seq.read_frame, seq.num_frames, cfg, device)
        predictions, seq_timings = propagate_sequence(seq, video_encoder, prop_cfg, device, cfg.batch_size,
                                                      cache=feature_cache(cfg, encoder_info, identity, name))
        seq_timings["adaptation"] = adapt_seconds
        save_predictions(out / "predictions", seq, predictions)
        record = {"run_key": key, "sequence": name, "num_frames": seq.num_frames, "rank": ranks.rank,
                  "timings": seq_timings, "scores": None}
        if seq.fully_annotated:
            scores = davis_sequence_scores(seq.annotations(), predictions, sequence=name)
            record["scores"] = {str(k): {s: (v.tolist() if isinstance(v, np.ndarray) else v) for s, v in obj.items()}
                                for k, obj in scores["objects"].items()}
        if cfg.vis:
            save_visualisation(out / "vis", seq, predictions)
        atomic_write_json(path, record)
    ranks.barrier()
    if not ranks.is_main:
        return None

    sequence_scores, timings, unscored = {}, {}, []
    for name in names:  # the merge reads every record back, whoever wrote it
        record = require_record(out, name, key)
        timings[name] = {**record["timings"], "num_frames": record["num_frames"]}
        if record["scores"] is None:
            unscored.append(name)
        else:
            sequence_scores[name] = {"objects": record["scores"]}

    results = results_header("davis", cfg, encoder_info, identity, timings)
    results["unscored_sequences"] = unscored
    if sequence_scores:
        summary = davis_summary(sequence_scores)
        results["metrics"] = {k: summary[k] for k in DAVIS_SUMMARY_KEYS}
        results["metrics"]["num_objects"] = summary["num_objects"]
        results["per_sequence"] = summary["per_sequence"]
        results["per_object"] = summary["per_object"]
    atomic_write_json(out / "results.json", results)
    print_davis_table(results)
    if unscored:
        print(f"{len(unscored)} sequence(s) have only a first-frame annotation (test-dev layout): "
              f"predictions written, not scored.")
    print(f"predictions: {out / 'predictions'}   results: {out / 'results.json'}")
    return results


def record_path(out: Path, name: str) -> Path:
    """Where one video's record lives: ``<out>/sequences/<name>.json`` (``name`` may hold a ``/``)."""
    return out / "sequences" / f"{name}.json"


def load_record(path: Path, key: str) -> Optional[dict]:
    """The record at ``path`` if it exists, parses and was made with run key ``key``; else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("run_key") == key else None


def require_record(out: Path, name: str, key: str) -> dict:
    """The record of ``name`` made with ``key``; a clear error when a process did not write it."""
    path = record_path(out, name)
    record = load_record(path, key)
    if record is None:
        raise RuntimeError(f"{path}: missing or made with other settings after every process finished; "
                           f"rerun to complete it")
    return record


def results_header(task: str, cfg: EvalConfig, encoder_info: dict, identity: dict,
                   per_video_timings: dict[str, dict], **extra) -> dict:
    """The part of ``results.json`` every task shares; ``"metrics"`` is filled in by the task.

    ``config.propagation`` is None for the walk tracker (its settings are in ``extra``).
    """
    propagation = cfg.propagation().to_dict() if cfg.tracker != "walk" else None
    return {"task": task, "metrics": None,
            "config": {"eval": dataclasses.asdict(cfg), "propagation": propagation, **extra},
            "factors": implementation_factors(task, cfg),
            "checkpoint": encoder_info, "code_version": code_version(), "dataset": identity,
            "timings": _timing_summary(per_video_timings)}


#: How each task moves labels onto the feature grid and predictions back to pixels
#: (:mod:`propagate.labels`). Fixed, recorded with every result.
LABEL_RESAMPLING: dict[str, dict[str, str]] = {
    "davis": {"labels_to_grid": "one-hot masks, replicate-pad to the stride multiple, bilinear "
                                "(align_corners=False)",
              "outputs_to_pixels": "bilinear upsampling x stride (align_corners=False), crop, argmax"},
    "vip": {"labels_to_grid": "one-hot parts at the input size, replicate-pad, bilinear (align_corners=False)",
            "outputs_to_pixels": "bilinear upsampling x stride (align_corners=False), crop, argmax, nearest "
                                 "resize to the annotation"},
    "jhmdb": {"labels_to_grid": "Gaussian heatmap per joint on the grid",
              "outputs_to_pixels": "top-k weighted mean of grid positions, no upsampling"},
    "tapvid": {"labels_to_grid": "Gaussian heatmap per query on the grid",
               "outputs_to_pixels": "windowed soft-argmax on the grid, no upsampling"},
}


def implementation_factors(task: str, cfg: EvalConfig) -> dict:
    """The factors of the unified propagation formulation this run used, in one place
    (for ``--tracker walk``: the walk tracker's, :mod:`corr.flow_track`)."""
    if cfg.tracker == "walk":
        track = cfg.flow_tracking()
        return {"tracker": "walk: chained soft-argmax flows of a global-matching network",
                "affinity": "cosine of unit features / the network's temperature, all cell pairs of two frames",
                "flow": "soft-argmax over the (2r+1)^2 cells around the argmax" if track.local_radius
                        else "soft-argmax over the whole frame",
                "local_radius": track.local_radius, "occlusion_threshold": track.occlusion_threshold,
                "occlusion": "forward-backward check of each step, or outside the frame",
                "input_resolution": list(cfg.input_size) if cfg.input_size else "native",
                "frame_resize": "bilinear (cv2.INTER_LINEAR)"}
    prop = cfg.propagation()
    return {"feature_normalisation": "l2 per position" if prop.normalize_features else "none",
            "label_normalisation": prop.label_norm, **LABEL_RESAMPLING[task],
            "input_resolution": list(cfg.input_size) if cfg.input_size else f"native ({cfg.resolution})",
            "frame_resize": "bilinear (cv2.INTER_LINEAR)", "context": prop.context, "topk": prop.topk,
            "radius": prop.radius, "temperature": prop.temperature, "pad_with_first": prop.pad_with_first,
            "feature_cache": ({"dtype": cfg.cache_dtype} if cfg.cache and cfg.tta_steps <= 0 else None),
            "test_time_adaptation": cfg.tta_steps > 0}


def _timing_summary(per_sequence: dict[str, dict]) -> dict:
    frames = sum(t["num_frames"] for t in per_sequence.values())
    features = sum(t["features"] for t in per_sequence.values())
    propagation = sum(t["propagation"] for t in per_sequence.values())
    adaptation = sum(t.get("adaptation", 0.0) for t in per_sequence.values())
    reading = sum(t.get("frames", 0.0) for t in per_sequence.values())
    hits = sum(t.get("cache") == "hit" for t in per_sequence.values())
    match_hits = sum(t.get("matches") == "hit" for t in per_sequence.values())
    return {"frames": frames, "frames_s": reading, "features_s": features, "propagation_s": propagation,
            "cache_hits": hits, "match_hits": match_hits,
            "adaptation_s": adaptation, "adaptation_s_per_video": adaptation / max(len(per_sequence), 1),
            "features_s_per_frame": features / max(frames, 1),
            "propagation_s_per_frame": propagation / max(frames - len(per_sequence), 1),
            "per_sequence": per_sequence}


def print_davis_table(results: dict) -> None:
    if results.get("metrics") is None:
        return
    print(f"\n{'sequence':<24}{'objects':>8}{'J&F':>8}{'J':>8}{'F':>8}")
    for name, row in results["per_sequence"].items():
        print(f"{name:<24}{row['num_objects']:>8}{row['J&F-Mean']:>8.3f}{row['J-Mean']:>8.3f}{row['F-Mean']:>8.3f}")
    m = results["metrics"]
    print("-" * 56)
    print(f"{'all (mean over objects)':<24}{m['num_objects']:>8}{m['J&F-Mean']:>8.3f}{m['J-Mean']:>8.3f}{m['F-Mean']:>8.3f}")
    print("  ".join(f"{k} {m[k]:.3f}" for k in DAVIS_SUMMARY_KEYS))


def evaluate(cfg: EvalConfig) -> Optional[dict]:
    """Run ``cfg.task`` (with its defaults filled in), or every setting of ``cfg.sweep``.

    Returns the content of ``results.json`` (of ``sweep/summary.json`` for a sweep); None on
    ranks other than 0 of a multi-process run.
    """
    cfg = cfg.with_task_defaults()
    if cfg.sweep:
        return evaluate_sweep(cfg)
    if cfg.task == "davis":
        return evaluate_davis(cfg)
    from . import tasks

    return {"jhmdb": tasks.evaluate_jhmdb, "vip": tasks.evaluate_vip, "tapvid": tasks.evaluate_tapvid}[cfg.task](cfg)


# ----------------------------------------------------------------------------- sweeps

#: What ``--sweep`` may vary: settings of propagation only, so every setting reuses the
#: cached features (input size, encoder and checkpoint are one run each).
SWEEP_FIELDS: dict[str, type] = {"preset": str, "context": int, "topk": int, "temperature": float,
                                 "radius": float, "pad_with_first": bool, "normalize_features": bool,
                                 "label_norm": str}
#: What ``--sweep`` may vary with ``--tracker walk``: the tracker's own settings (the network
#: and the input size are one run each).
WALK_SWEEP_FIELDS: dict[str, type] = {"local_radius": int, "occlusion_threshold": float}
#: The metrics a sweep's summary table shows per task.
HEADLINE_METRICS: dict[str, list[str]] = {
    "davis": ["J&F-Mean", "J-Mean", "F-Mean"], "jhmdb": ["PCK@0.1", "PCK@0.2"], "vip": ["mIoU"],
    "tapvid": ["average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"]}


def parse_sweep(text: str, tracker: str = "propagation") -> list[dict]:
    """``"topk=5,10 radius=12,24"`` -> the cartesian product as override dicts, in order
    (the last name varies fastest): ``[{"topk": 5, "radius": 12.0}, {"topk": 5, "radius": 24.0}, ...]``.

    Names are :data:`SWEEP_FIELDS` (``-`` or ``_``), or with ``tracker="walk"``
    :data:`WALK_SWEEP_FIELDS`; ``radius=inf`` removes the locality limit.
    """
    fields = WALK_SWEEP_FIELDS if tracker == "walk" else SWEEP_FIELDS
    axes: dict[str, list] = {}
    for part in text.split():
        name, sep, values = part.partition("=")
        name = name.replace("-", "_")
        if not sep or not values:
            raise ValueError(f"--sweep: expected name=v1,v2,... separated by spaces, got {part!r}")
        if tracker == "walk" and name in SWEEP_FIELDS:
            raise ValueError(f"--sweep: {name!r} is a label-propagation setting; sweeps over propagation settings "
                             f"need --tracker propagation; --tracker walk sweeps {', '.join(fields)}")
        if tracker != "walk" and name in WALK_SWEEP_FIELDS:
            raise ValueError(f"--sweep: {name!r} is a setting of --tracker walk; label propagation sweeps "
                             f"{', '.join(fields)}")
        if name not in fields:
            raise ValueError(f"--sweep: {name!r} cannot be swept; choose from {', '.join(fields)}")
        if name in axes:
            raise ValueError(f"--sweep: {name!r} given twice")
        axes[name] = [_sweep_value(name, v, fields[name]) for v in values.split(",") if v]
    if not axes:
        raise ValueError("--sweep: no setting given")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _sweep_value(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--sweep: {name} takes true/false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--sweep: {name} takes {kind.__name__} values, got {text!r}") from None


def setting_name(overrides: dict) -> str:
    """A folder name for one setting: ``topk-5_radius-12``."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return "inf" if math.isinf(value) else f"{value:g}"
        return str(value)

    return "_".join(f"{name}-{text(value)}" for name, value in overrides.items())


def evaluate_sweep(cfg: EvalConfig) -> Optional[dict]:
    """Evaluate every setting of ``cfg.sweep`` into ``<out>/sweep/<setting>/``, reusing features.

    Features go to ``--cache`` or, without it, to ``<out>/feature-cache``. Writes
    ``<out>/sweep/summary.json`` (one row per setting: overrides, propagation config,
    implementation factors, headline metrics, results path) and prints it as a table.
    With ``--tracker walk`` the settings are the tracker's (:data:`WALK_SWEEP_FIELDS`, the
    row's ``tracking`` block); the network runs again for each (there are no encoder
    features to cache).
    """
    cfg = cfg.with_task_defaults()
    walk = cfg.tracker == "walk"
    settings = parse_sweep(cfg.sweep, cfg.tracker)
    out = Path(cfg.out)
    cache = None if walk else (cfg.cache or str(out / "feature-cache"))
    runs = [(setting_name(o), o, dataclasses.replace(cfg, sweep=None, out=str(out / "sweep" / setting_name(o)),
                                                     cache=cache, **o)) for o in settings]
    checked = [run.flow_tracking() if walk else run.propagation() for _, _, run in runs]  # fail before any work
    # The cache keeps the largest top-k of the sweep, so that every setting can read it.
    cache_topk = max([cfg.cache_topk] + ([] if walk else [propagation.topk for propagation in checked]))
    rows = []
    for name, overrides, run in runs:
        results = evaluate(dataclasses.replace(run, cache_topk=cache_topk))
        if results is None:  # not rank 0
            continue
        metrics = results.get("metrics") or {}
        rows.append({"name": name, "overrides": overrides, "propagation": results["config"]["propagation"],
                     "tracking": results["config"].get("tracking"), "factors": results["factors"],
                     "metrics": {k: metrics.get(k) for k in HEADLINE_METRICS[cfg.task]},
                     "timings": {k: results["timings"].get(k) for k in ("features_s", "propagation_s", "cache_hits",
                                                                          "match_hits")},
                     "results": str(out / "sweep" / name / "results.json")})
    if not init_ranks().is_main:
        return None
    summary = {"task": cfg.task, "tracker": cfg.tracker, "sweep": cfg.sweep, "feature_cache": cache,
               "settings": rows}
    atomic_write_json(out / "sweep" / "summary.json", summary)
    print_sweep_table(summary)
    print(f"sweep summary: {out / 'sweep' / 'summary.json'}")
    return summary


def print_sweep_table(summary: dict) -> None:
    """One row per setting: its name and headline metrics (percent)."""
    keys = HEADLINE_METRICS[summary["task"]]
    width = max([24, *(len(row["name"]) + 2 for row in summary["settings"])])
    print(f"\n{'setting':<{width}}" + "".join(f"{k[:12]:>14}" for k in keys))
    for row in summary["settings"]:
        cells = [row["metrics"][k] for k in keys]
        print(f"{row['name']:<{width}}" + "".join(
            f"{'n/a':>14}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:>14.2f}"
            for v in cells))
