"""DAVIS-2017 semi-supervised video object segmentation (docs/benchmarks.md, DAVIS).

Frame 0's object masks are propagated through each sequence at its native resolution
(``--resolution 480p`` or ``Full-Resolution``) and scored by region similarity J and
contour accuracy F (:mod:`propagate.metrics`, the official scorer's numbers). Outputs under
``--out``: ``predictions/<seq>/<frame>.png``, indexed PNGs with the DAVIS palette and frame
0's object ids at the annotation's size (what the official scorer reads); ``"metrics"``:
J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay (fractions) and
``num_objects``, with ``per_sequence`` and ``per_object``; sequences with only a first-frame
annotation (test-dev layout) are predicted and listed in ``unscored_sequences`` (name ->
reason), which the table prints. A frame-0 annotation without an object is an error naming
the file when the dataset opens (``--binary-masks`` reads 0/255 masks' 255 as object 1). With
``--vis``: ``vis/<seq>.mp4`` and ``vis/<seq>.png`` (masks blended on the frames).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from corr.runtime import REPO_ROOT
from datasets.davis import DavisDataset, DavisSequence
from datasets.palette import VOID_ID, write_indexed_png
from datasets.synthetic import generate_davis

from ..cache import CacheSlot
from ..config import PropagationConfig
from ..dino_frames import DINO_STATISTICS, dino_first_labels, dino_frame, dino_masks
from ..eval_config import EvalConfig
from ..labels import labels_to_masks, masks_to_labels
from ..metrics import DAVIS_SUMMARY_KEYS, davis_sequence_scores, davis_summary
from ..task import Task, TaskDefaults, TaskRun, select_names, synthetic_banner, write_overlays
from ..video import encoder_for_video, feature_cache, propagate_frames
from ..visualize import overlay_mask

#: Why a sequence of the test-dev layout is predicted but not scored.
FIRST_FRAME_ONLY = "only the first frame is annotated (test-dev layout)"
TOO_SHORT = "fewer than 3 frames (DAVIS scores frames 1 .. T-2)"


@torch.inference_mode()
def propagate_sequence(seq: DavisSequence, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                       device: torch.device, batch_size: int = 8, progress: bool = True,
                       cache: Optional[CacheSlot] = None) -> tuple[np.ndarray, dict]:
    """Propagate frame 0's masks through a sequence -> (predicted ids uint8 (T, H, W), timings in seconds).

    ``prop_cfg.frames``: ``"common"`` (native frames, bilinear labels in and out) or ``"dino"``
    (DINO's script, :mod:`propagate.dino_frames`); ``prop_cfg.output_norm`` precedes the argmax.
    """
    H, W = seq.size
    first = seq.read_annotation(0)
    object_ids = seq.object_ids()
    predictions = np.zeros((seq.num_frames, H, W), np.uint8)
    predictions[0] = np.where(first == VOID_ID, 0, first)
    stride = encoder.stride

    if prop_cfg.frames == "dino":
        def read_frame(t: int) -> np.ndarray:
            return dino_frame(seq.read_frame(t), stride)

        def first_label(grid: tuple[int, int]) -> torch.Tensor:
            return dino_first_labels(first, object_ids, grid, device=device)

        def decode(t: int, labels: torch.Tensor) -> None:
            predictions[t] = dino_masks(labels, object_ids, (H, W), stride, prop_cfg.output_norm)
        statistics = DINO_STATISTICS
    else:
        read_frame = seq.read_frame

        def first_label(grid: tuple[int, int]) -> torch.Tensor:
            return masks_to_labels(first, object_ids, grid, stride, device=device)

        def decode(t: int, labels: torch.Tensor) -> None:
            predictions[t] = labels_to_masks(labels, object_ids, (H, W), stride, prop_cfg.output_norm)
        statistics = None

    timings = propagate_frames(read_frame, seq.num_frames, encoder, prop_cfg, device, first_label=first_label,
                               decode=decode, batch_size=batch_size, desc=seq.name, progress=progress, cache=cache,
                               statistics=statistics)
    return predictions, timings


def save_predictions(out_dir: Path, seq: DavisSequence, predictions: np.ndarray) -> None:
    """``out_dir/<seq>/<frame>.png`` indexed PNGs named like the sequence's frames."""
    for path, ids in zip(seq.frame_paths, predictions):
        write_indexed_png(out_dir / seq.name / f"{Path(path).stem}.png", ids)


def save_visualisation(out_dir: Path, seq: DavisSequence, predictions: np.ndarray, fps: float = 10.0) -> None:
    """``<seq>.mp4`` with masks blended on the frames and ``<seq>.png``, a contact sheet."""
    overlays = [overlay_mask(seq.read_frame(t), predictions[t]) for t in range(seq.num_frames)]
    write_overlays(out_dir, seq.name, overlays, fps=fps)


class DavisTask(Task):
    name = "davis"
    title = "DAVIS"
    defaults = TaskDefaults(None, "val", REPO_ROOT / "data" / "DAVIS", REPO_ROOT / "data" / "synthetic-davis")
    label_resampling = {"labels_to_grid": "one-hot masks, replicate-pad to the stride multiple, bilinear "
                                          "(align_corners=False)",
                        "outputs_to_pixels": "bilinear upsampling x stride (align_corners=False), crop, argmax"}
    headline_metrics = ("J&F-Mean", "J-Mean", "F-Mean")
    frame_protocols = ("common", "dino")
    output_norms = ("none", "minmax")
    dino_resampling = {"labels_to_grid": "one-hot of the annotation resized to the grid with nearest neighbour (PIL)",
                       "outputs_to_pixels": "bilinear upsampling x stride (align_corners=False), argmax, nearest "
                                            "neighbour (PIL) to the annotation's size"}

    def factors(self, cfg: EvalConfig) -> dict:
        factors = super().factors(cfg)
        if cfg.propagation().frames == "dino":
            factors.update(self.dino_resampling, frame_resize="short side 480, long side floored to a multiple of "
                           "64, bilinear (cv2.INTER_LINEAR), cropped to a multiple of the stride",
                           input_statistics={"mean": list(DINO_STATISTICS[0]), "std": list(DINO_STATISTICS[1])})
        return factors

    def open(self, cfg: EvalConfig) -> DavisDataset:
        """DAVIS from ``--data-root``, ``data/DAVIS``, or a generated set in the DAVIS-2017 format."""
        if cfg.data_root is not None:
            return DavisDataset(cfg.data_root, split=cfg.split or "val", resolution=cfg.resolution,
                                binary_masks=cfg.binary_masks)
        if self.defaults.data.is_dir():
            print(f"using DAVIS at {self.defaults.data}")
            return DavisDataset(self.defaults.data, split=cfg.split or "val", resolution=cfg.resolution,
                                binary_masks=cfg.binary_masks)
        synthetic_banner("DAVIS", self.defaults.data, self.defaults.synthetic, "DAVIS-2017")
        root = generate_davis(self.defaults.synthetic, num_sequences=4, num_frames=24, size=(240, 432), seed=0,
                              split="val")
        return DavisDataset(root, split="val", resolution="480p")

    def names(self, run: TaskRun) -> list[str]:
        return select_names(run.dataset.sequences, run.cfg)

    def describe(self, run: TaskRun) -> str:
        return (f"{len(self.names(run))} sequences from {run.identity['root']} ({run.identity['split']}); "
                f"{run.describe()}")

    def predict(self, run: TaskRun, seq: DavisSequence) -> dict:
        cfg, device = run.cfg, run.device
        encoder, adapt_seconds = encoder_for_video(run.encoder, seq.read_frame, seq.num_frames, cfg, device)
        predictions, timings = propagate_sequence(seq, encoder, run.prop_cfg, device, cfg.batch_size,
                                                  cache=feature_cache(cfg, run.encoder_info, run.identity, seq.name))
        timings["adaptation"] = adapt_seconds
        save_predictions(run.out / "predictions", seq, predictions)
        record = {"num_frames": seq.num_frames, "timings": timings, "scores": None}
        if not seq.fully_annotated:
            record["unscored"] = FIRST_FRAME_ONLY
        elif seq.num_frames < 3:
            record["unscored"] = TOO_SHORT
        else:
            scores = davis_sequence_scores(seq.annotations(), predictions, sequence=seq.name)
            record["scores"] = {str(k): {s: (v.tolist() if isinstance(v, np.ndarray) else v) for s, v in obj.items()}
                                for k, obj in scores["objects"].items()}
        if cfg.vis:
            save_visualisation(run.out / "vis", seq, predictions)
        return record

    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        scored = {name: {"objects": r["scores"]} for name, r in records.items() if r["scores"] is not None}
        fields = {"unscored_sequences": {name: r.get("unscored", FIRST_FRAME_ONLY)
                                         for name, r in records.items() if r["scores"] is None}}
        if scored:
            summary = davis_summary(scored)
            fields["metrics"] = {**{k: summary[k] for k in DAVIS_SUMMARY_KEYS}, "num_objects": summary["num_objects"]}
            fields["per_sequence"] = summary["per_sequence"]
            fields["per_object"] = summary["per_object"]
        return fields

    def print_table(self, results: dict) -> None:
        if results.get("metrics") is not None:
            print(f"\n{'sequence':<24}{'objects':>8}{'J&F':>8}{'J':>8}{'F':>8}")
            for name, row in results["per_sequence"].items():
                print(f"{name:<24}{row['num_objects']:>8}{row['J&F-Mean']:>8.3f}{row['J-Mean']:>8.3f}"
                      f"{row['F-Mean']:>8.3f}")
            m = results["metrics"]
            print("-" * 56)
            print(f"{'all (mean over objects)':<24}{m['num_objects']:>8}{m['J&F-Mean']:>8.3f}{m['J-Mean']:>8.3f}"
                  f"{m['F-Mean']:>8.3f}")
            print("  ".join(f"{k} {m[k]:.3f}" for k in DAVIS_SUMMARY_KEYS))
        unscored = results["unscored_sequences"]
        for reason in sorted(set(unscored.values())):
            names = [name for name, why in unscored.items() if why == reason]
            print(f"not scored ({reason}; predictions written): {len(names)} sequence(s): {', '.join(names)}")
