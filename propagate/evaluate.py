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
"""
from __future__ import annotations

import dataclasses
import hashlib
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
from corr.runtime import REPO_ROOT, code_version, resolve_device
from datasets.davis import DavisDataset, DavisSequence
from datasets.palette import write_indexed_png
from datasets.transforms import normalize_frames

from .config import PropagationConfig
from .labels import grid_size, labels_to_masks, masks_to_labels
from .metrics import DAVIS_SUMMARY_KEYS, davis_sequence_scores, davis_summary
from .propagator import Propagator
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
    device: str = dataclasses.field(default="auto", metadata={"help": "auto|cpu|cuda[:i]"})
    out: Optional[str] = dataclasses.field(default=None, metadata={"help": "output folder (default results/<task>)"})
    vis: bool = dataclasses.field(default=False, metadata={"help": "write overlay videos and contact sheets"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "frames per feature-extraction batch"})
    overwrite: bool = dataclasses.field(default=False, metadata={"help": "redo sequences already scored in --out"})
    tta_steps: int = dataclasses.field(default=0, metadata={"help": "test-time adaptation: walk steps per video (0: off)"})
    tta_window: int = dataclasses.field(default=10, metadata={"help": "test-time adaptation: clip frames within W of a time"})
    tta_lr: float = dataclasses.field(default=1e-4, metadata={"help": "test-time adaptation: Adam learning rate"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of a random-init encoder and of adaptation"})

    def adaptation(self) -> AdaptConfig:
        """Test-time adaptation settings (:mod:`corr.adapt`); ``steps == 0`` is off."""
        return AdaptConfig(steps=self.tta_steps, window=self.tta_window, lr=self.tta_lr, seed=self.seed)

    def propagation(self) -> PropagationConfig:
        """The preset with this run's overrides (``--radius inf`` removes the locality limit)."""
        overrides = {name: getattr(self, name) for name in ("context", "topk", "temperature", "pad_with_first")
                     if getattr(self, name) is not None}
        if self.radius is not None:
            overrides["radius"] = None if math.isinf(self.radius) else self.radius
        return PropagationConfig.preset(self.preset, **overrides)

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
        if self.query_mode not in ("first", "strided"):
            raise ValueError(f"--query-mode must be first or strided, got {self.query_mode!r}")
        return dataclasses.replace(self, out=self.out or f"results/{self.task}",
                                   split=self.split if self.split is not None else defaults.split,
                                   input_size=size)


def load_encoder(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The encoder to evaluate and a description of where its weights came from."""
    if cfg.checkpoint and cfg.weights:
        raise ValueError("give --checkpoint or --weights, not both")
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
    _sync(device)
    return feats, time.perf_counter() - tick


@torch.inference_mode()
def propagate_frames(read_frame: Callable[[int], np.ndarray], num_frames: int, encoder: torch.nn.Module,
                     prop_cfg: PropagationConfig, device: torch.device,
                     first_label: Callable[[tuple[int, int]], torch.Tensor],
                     decode: Callable[[int, torch.Tensor], None], batch_size: int = 8,
                     desc: str = "", progress: bool = True) -> dict:
    """The step-wise propagation loop every task shares; returns timings in seconds.

    read_frame(t):      uint8 (H, W, 3) frame t at the input size (the same for every t);
    first_label(grid):  frame 0's labels (K, h, w) for the feature grid ``(h, w)``;
    decode(t, labels):  receives the soft labels (K, h, w) of every frame t >= 1, in order.

    Features are computed ``batch_size`` frames at a time and consumed at once by one
    :class:`Propagator`, so memory does not grow with the video's length.
    """
    stride = encoder.stride
    propagator = Propagator(prop_cfg)
    timings = {"features": 0.0, "propagation": 0.0}
    bar = tqdm(total=num_frames, desc=desc, unit="frame", leave=False, disable=not progress)
    for start in range(0, num_frames, batch_size):
        stop = min(start + batch_size, num_frames)
        frames = np.stack([read_frame(i) for i in range(start, stop)])
        tick = time.perf_counter()
        feats = extract_features(encoder, frames, device)  # (B, C, h, w)
        _sync(device)
        timings["features"] += time.perf_counter() - tick
        tick = time.perf_counter()
        for offset, feat in enumerate(feats):
            t = start + offset
            if t == 0:
                H, W = frames.shape[1:3]
                grid = grid_size(H, W, stride)
                if tuple(feat.shape[-2:]) != grid:
                    raise RuntimeError(f"encoder grid {tuple(feat.shape[-2:])} != expected {grid} for {H}x{W} "
                                       f"at stride {stride}")
                propagator.start(feat, first_label(grid))
            else:
                decode(t, propagator.step(feat))
        _sync(device)
        timings["propagation"] += time.perf_counter() - tick
        bar.update(stop - start)
    bar.close()
    return timings


@torch.inference_mode()
def propagate_sequence(seq: DavisSequence, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                       device: torch.device, batch_size: int = 8, progress: bool = True
                       ) -> tuple[np.ndarray, dict]:
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
        decode=decode, batch_size=batch_size, desc=seq.name, progress=progress)
    return predictions, timings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def run_key(cfg: EvalConfig, encoder_info: dict, dataset_identity: dict, extra: Optional[dict] = None) -> str:
    """Hash of everything that determines a sequence's result (resume only reuses equal keys).

    ``extra``: task settings that also change the result (input size, decoding parameters).
    """
    settings = {"propagation": cfg.propagation().to_dict(), "encoder": encoder_info,
                "adaptation": dataclasses.asdict(cfg.adaptation()) if cfg.tta_steps > 0 else None,
                "dataset": dataset_identity, "resolution": cfg.resolution}
    if extra:
        settings["task"] = extra
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate_davis(cfg: EvalConfig) -> dict:
    """Run the DAVIS task end to end; returns the content written to ``results.json``."""
    cfg = cfg.with_task_defaults()
    device = resolve_device(cfg.device)
    encoder, encoder_info = load_encoder(cfg, device)
    prop_cfg = cfg.propagation()
    dataset = open_davis(cfg)
    identity = dataset.identity()
    names = list(cfg.sequences) if cfg.sequences else dataset.sequences
    out = Path(cfg.out)
    key = run_key(cfg, encoder_info, identity)
    print(f"{len(names)} sequences from {identity['root']} ({identity['split']}); encoder {encoder_info['encoder']} "
          f"({encoder_info['format']}); propagation {prop_cfg}; device {device}")

    sequence_scores, timings, unscored = {}, {}, []
    for name in tqdm(names, desc="sequences", unit="seq"):
        path = record_path(out, name)
        record = load_record(path, key) if not cfg.overwrite else None
        if record is None:
            seq = dataset[name]
            video_encoder, adapt_seconds = encoder_for_video(encoder, seq.read_frame, seq.num_frames, cfg, device)
            predictions, seq_timings = propagate_sequence(seq, video_encoder, prop_cfg, device, cfg.batch_size)
            seq_timings["adaptation"] = adapt_seconds
            save_predictions(out / "predictions", seq, predictions)
            record = {"run_key": key, "sequence": name, "num_frames": seq.num_frames,
                      "timings": seq_timings, "scores": None}
            if seq.fully_annotated:
                scores = davis_sequence_scores(seq.annotations(), predictions, sequence=name)
                record["scores"] = {str(k): {s: (v.tolist() if isinstance(v, np.ndarray) else v) for s, v in obj.items()}
                                    for k, obj in scores["objects"].items()}
            if cfg.vis:
                save_visualisation(out / "vis", seq, predictions)
            atomic_write_json(path, record)
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


def results_header(task: str, cfg: EvalConfig, encoder_info: dict, identity: dict,
                   per_video_timings: dict[str, dict], **extra) -> dict:
    """The part of ``results.json`` every task shares; ``"metrics"`` is filled in by the task."""
    return {"task": task, "metrics": None,
            "config": {"eval": dataclasses.asdict(cfg), "propagation": cfg.propagation().to_dict(), **extra},
            "checkpoint": encoder_info, "code_version": code_version(), "dataset": identity,
            "timings": _timing_summary(per_video_timings)}


def _timing_summary(per_sequence: dict[str, dict]) -> dict:
    frames = sum(t["num_frames"] for t in per_sequence.values())
    features = sum(t["features"] for t in per_sequence.values())
    propagation = sum(t["propagation"] for t in per_sequence.values())
    adaptation = sum(t.get("adaptation", 0.0) for t in per_sequence.values())
    return {"frames": frames, "features_s": features, "propagation_s": propagation,
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


def evaluate(cfg: EvalConfig) -> dict:
    """Run ``cfg.task`` (with its defaults filled in); returns the content of ``results.json``."""
    cfg = cfg.with_task_defaults()
    if cfg.task == "davis":
        return evaluate_davis(cfg)
    from . import tasks

    return {"jhmdb": tasks.evaluate_jhmdb, "vip": tasks.evaluate_vip, "tapvid": tasks.evaluate_tapvid}[cfg.task](cfg)
