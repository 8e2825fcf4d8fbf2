"""JHMDB keypoint propagation scored by PCK (docs/benchmarks.md, JHMDB).

Frames are resized (bilinear) to the input size (default 320x320); frame 0's 15 joints
become Gaussian heatmaps on the feature grid, each later frame is decoded by the top-k
weighted mean of grid positions and mapped back to the original frame's pixels.
``--keypoint-encoding`` picks the heatmaps: ``sub-cell`` (default, centred on the joint's
sub-cell position) or ``reference`` (CRW's 4x4 integer-cell window, its point scaling and its
decoding without the cell-centre offset; :mod:`propagate.labels`).
Outputs under ``--out``: ``predictions/<action>/<video>.npy``, float64 ``[T, 15, 2]``
predicted (x, y) per frame in the original frame's pixels, 0-based (pixel centres at
integers, the ground truth's ``pos_img - 1``), joints in JHMDB order, ``-1`` = not
predicted; frame 0 is the given annotation. ``"metrics"``: ``PCK@0.1`` ... ``PCK@0.5``
(fractions, pooled over videos) and ``PCK-per-joint``. With ``--vis``: predicted skeletons
over the ground truth, ``vis/<video>.mp4`` and ``.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from corr.io import atomic_write
from corr.runtime import REPO_ROOT
from datasets.frames import DatasetError
from datasets.jhmdb import JHMDB_PARENTS, NUM_JOINTS, JhmdbDataset, JhmdbVideo
from datasets.synthetic_tasks import generate_jhmdb

from ..cache import CacheSlot
from ..config import PropagationConfig
from ..eval_config import EvalConfig
from ..labels import (
    KEYPOINT_SIGMA,
    KEYPOINT_TOPK,
    heatmaps_to_keypoints,
    keypoints_to_heatmaps,
    reference_heatmaps_to_keypoints,
    reference_keypoints_to_heatmaps,
    reference_rescale_points,
    rescale_points,
)
from ..metrics import JHMDB_PCK_THRESHOLDS, jhmdb_pck, jhmdb_pck_per_joint
from ..task import Task, TaskDefaults, TaskRun, print_video_table, select_names, synthetic_banner, write_overlays
from ..video import encoder_for_video, feature_cache, propagate_frames, resize_frame
from ..visualize import draw_skeleton


@torch.inference_mode()
def predict_jhmdb_video(video: JhmdbVideo, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                        device: torch.device, input_size: tuple[int, int], batch_size: int = 8,
                        progress: bool = True, cache: Optional[CacheSlot] = None,
                        encoding: str = "sub-cell") -> tuple[np.ndarray, dict]:
    """Propagate frame 0's joints -> (keypoints float64 [T, 15, 2] (x, y) original pixels, timings).

    Frame 0's joints become Gaussian heatmaps at ``input_size`` (:func:`keypoints_to_heatmaps`),
    each later frame is decoded by the top-3 weighted mean (:func:`heatmaps_to_keypoints`) and
    mapped back with :func:`rescale_points`; ``encoding="reference"`` uses CRW's encoding,
    decoding and scaling instead (:func:`reference_keypoints_to_heatmaps`). Row 0 is the ground
    truth of frame 0.
    """
    size = video.size
    stride = encoder.stride
    preds = np.empty((video.num_frames, NUM_JOINTS, 2))
    preds[0] = video.keypoints[0]
    reference = encoding == "reference"
    rescale = reference_rescale_points if reference else rescale_points
    first = rescale(video.keypoints[0], size, input_size)

    def encode(grid: tuple[int, int]) -> torch.Tensor:
        if reference:
            return reference_keypoints_to_heatmaps(first, grid, stride, device=device)
        return keypoints_to_heatmaps(first, input_size, grid, stride, device=device)

    def decode(t: int, labels: torch.Tensor) -> None:
        points = (reference_heatmaps_to_keypoints if reference else heatmaps_to_keypoints)(labels, stride)
        preds[t] = rescale(points, input_size, size)

    timings = propagate_frames(
        lambda t: resize_frame(video.read_frame(t), input_size), video.num_frames, encoder, prop_cfg, device,
        first_label=encode, decode=decode, batch_size=batch_size, desc=video.name, progress=progress, cache=cache)
    return preds, timings


def jhmdb_visualisation(out_dir: Path, video: JhmdbVideo, preds: np.ndarray) -> None:
    """Predicted skeletons (coloured) over the ground truth (thin white) on the original frames."""
    overlays = []
    for t in range(video.num_frames):
        frame = draw_skeleton(video.read_frame(t), video.keypoints[t], JHMDB_PARENTS, colour=(255, 255, 255),
                              radius=1, thickness=1)
        overlays.append(draw_skeleton(frame, preds[t], JHMDB_PARENTS))
    write_overlays(out_dir, video.name, overlays)


def prediction_file(name: str) -> Path:
    """Where a video's keypoints go, relative to ``--out``."""
    return Path("predictions") / f"{name}.npy"


class JhmdbTask(Task):
    name = "jhmdb"
    title = "JHMDB"
    defaults = TaskDefaults((320, 320), "splits/test_split1.txt", REPO_ROOT / "data" / "JHMDB",
                            REPO_ROOT / "data" / "synthetic-jhmdb")
    label_resampling = {"labels_to_grid": "Gaussian heatmap per joint on the grid",
                        "outputs_to_pixels": "top-k weighted mean of grid positions, no upsampling"}
    headline_metrics = ("PCK@0.1", "PCK@0.2")
    settings_block = "decoding"

    def open(self, cfg: EvalConfig) -> JhmdbDataset:
        """JHMDB from ``--data-root`` (a split file, or a folder holding ``--split``), ``data/JHMDB``, or generated."""
        root = Path(cfg.data_root) if cfg.data_root is not None else self.defaults.data
        if cfg.data_root is None and not root.exists():
            synthetic_banner("JHMDB", self.defaults.data, self.defaults.synthetic, "JHMDB")
            root = generate_jhmdb(self.defaults.synthetic, num_videos=4, num_frames=20, seed=0)
        elif cfg.data_root is None:
            print(f"using JHMDB at {root}")
        if root.is_file():
            return JhmdbDataset(root)
        return JhmdbDataset(root / (cfg.split or self.defaults.split), root=root)

    def settings(self, cfg: EvalConfig, dataset: JhmdbDataset) -> dict:
        return {"input_size": list(cfg.input_size), "sigma": KEYPOINT_SIGMA, "topk": KEYPOINT_TOPK,
                **({"keypoint_encoding": cfg.keypoint_encoding} if cfg.keypoint_encoding != "sub-cell" else {})}

    def factors(self, cfg: EvalConfig) -> dict:
        return {**super().factors(cfg), "keypoint_encoding": cfg.keypoint_encoding}

    def names(self, run: TaskRun) -> list[str]:
        return select_names([video.name for video in run.dataset], run.cfg)

    def describe(self, run: TaskRun) -> str:
        size = run.cfg.input_size
        return (f"JHMDB: {len(self.names(run))} videos from {run.identity['split_file']}; input {size[0]}x"
                f"{size[1]}; {run.describe()}")

    def predict(self, run: TaskRun, video: JhmdbVideo) -> dict:
        cfg, device, file = run.cfg, run.device, prediction_file(video.name)
        encoder, adapt_seconds = encoder_for_video(
            run.encoder, lambda t: resize_frame(video.read_frame(t), cfg.input_size), video.num_frames, cfg, device)
        pred, timings = predict_jhmdb_video(video, encoder, run.prop_cfg, device, cfg.input_size, cfg.batch_size,
                                            cache=feature_cache(cfg, run.encoder_info, run.identity, video.name),
                                            encoding=cfg.keypoint_encoding)
        timings["adaptation"] = adapt_seconds
        atomic_write(run.out / file, lambda f: np.save(f, pred))
        try:
            single = jhmdb_pck([pred], [video.keypoints])
        except ValueError:  # no joint predicted after frame 0: nothing to score in this video alone
            single = {a: float("nan") for a in JHMDB_PCK_THRESHOLDS}
        if cfg.vis:
            jhmdb_visualisation(run.out / "vis", video, pred)
        return {"num_frames": video.num_frames, "timings": timings, "predictions": str(file),
                "scores": {f"PCK@{a}": v for a, v in single.items()}}

    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        """PCK pooled over every video's predictions, read back from the files whoever wrote them."""
        preds, gts = [], []
        for name in records:
            video, file = run.dataset[name], run.out / prediction_file(name)
            pred = np.load(file)
            if pred.shape != video.keypoints.shape:
                raise DatasetError(f"{file}: predictions have shape {pred.shape}, expected {video.keypoints.shape}")
            preds.append(pred)
            gts.append(video.keypoints)
        pck = jhmdb_pck(preds, gts, JHMDB_PCK_THRESHOLDS)
        per_joint = jhmdb_pck_per_joint(preds, gts, JHMDB_PCK_THRESHOLDS)
        metrics = {f"PCK@{a}": v for a, v in pck.items()}
        metrics["PCK-per-joint"] = {f"PCK@{a}": [float(x) for x in v] for a, v in per_joint.items()}
        return {"metrics": metrics, "per_sequence": {name: r["scores"] for name, r in records.items()},
                "predictions_format": "predictions/<action>/<video>.npy: float64 [T, 15, 2] (x, y) 0-based "
                                      "original pixels, -1 = not predicted"}

    def print_table(self, results: dict) -> None:
        print_video_table(results["per_sequence"], results["metrics"],
                          [f"PCK@{a}" for a in JHMDB_PCK_THRESHOLDS], "all (pooled)")
