"""VIP (Video Instance-level Parsing) human-part propagation scored by mIoU (docs/benchmarks.md, VIP).

Frames are resized (bilinear) and annotation 0 (nearest) to the input size (default
560x560); frame 0's 20-class part map is propagated, each later frame's labels are
upsampled and argmaxed at the input size, then resized (nearest) to the annotation's size.
Outputs under ``--out``: ``predictions/<video>/<frame>.png``, indexed PNGs of class ids
0..19 at the size of the frame's annotation (at the frame's size when it has none); frame
0 is the given annotation. ``"metrics"``: ``mIoU`` and ``IoU`` (20 per-class values, NaN =
class in neither) from one confusion matrix over every scored frame (frames >= 1 with an
annotation), kept as ``"confusion"``. With ``--vis``: part maps, ``vis/<video>.mp4`` and ``.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from corr.runtime import REPO_ROOT
from datasets.palette import write_indexed_png
from datasets.synthetic_tasks import generate_vip
from datasets.vip import NUM_CLASSES, VipDataset, VipVideo

from ..cache import CacheSlot
from ..config import PropagationConfig
from ..eval_config import EvalConfig
from ..labels import labels_to_parts, parts_to_labels
from ..metrics import resize_nearest, vip_confusion, vip_iou_from_confusion
from ..task import Task, TaskDefaults, TaskRun, print_video_table, select_names, synthetic_banner, write_overlays
from ..video import encoder_for_video, feature_cache, propagate_frames, resize_frame
from ..visualize import overlay_parts


@torch.inference_mode()
def predict_vip_video(video: VipVideo, encoder: torch.nn.Module, prop_cfg: PropagationConfig,
                      device: torch.device, input_size: tuple[int, int], out: Path, batch_size: int = 8,
                      keep_maps: bool = False, progress: bool = True, cache: Optional[CacheSlot] = None
                      ) -> tuple[np.ndarray, dict, list]:
    """Propagate frame 0's part map; write each frame's PNG -> (confusion [20, 20], timings, maps).

    Frames are resized (bilinear) and annotation 0 (nearest) to ``input_size``; each later
    frame's labels are upsampled and argmaxed there (:func:`labels_to_parts`), then resized
    with nearest neighbour to its annotation's size (to the frame's size when not annotated)
    and written to ``out/<video>/<frame>.png``. The confusion matrix sums every annotated
    frame t >= 1 (:func:`~propagate.metrics.vip_confusion`). ``maps`` (with ``keep_maps``)
    are the predictions at the frame's size, for visualisation.
    """
    stride = encoder.stride
    first = video.read_annotation(0)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    maps = [resize_nearest(first, video.size)] if keep_maps else []
    write_indexed_png(out / video.name / f"{video.frame_paths[0].stem}.png", first)

    def decode(t: int, labels: torch.Tensor) -> None:
        nonlocal confusion
        parts = labels_to_parts(labels, input_size, stride)
        gt = video.read_annotation(t)
        pred = resize_nearest(parts, gt.shape if gt is not None else video.size)
        write_indexed_png(out / video.name / f"{video.frame_paths[t].stem}.png", pred)
        if gt is not None:
            confusion = confusion + vip_confusion(pred, gt)
        if keep_maps:
            maps.append(resize_nearest(parts, video.size))

    timings = propagate_frames(
        lambda t: resize_frame(video.read_frame(t), input_size), video.num_frames, encoder, prop_cfg, device,
        first_label=lambda grid: parts_to_labels(resize_nearest(first, input_size), grid, stride, device=device),
        decode=decode, batch_size=batch_size, desc=video.name, progress=progress, cache=cache)
    return confusion, timings, maps


class VipTask(Task):
    name = "vip"
    title = "VIP"
    defaults = TaskDefaults((560, 560), "val", REPO_ROOT / "data" / "VIP", REPO_ROOT / "data" / "synthetic-vip")
    label_resampling = {"labels_to_grid": "one-hot parts at the input size, replicate-pad, bilinear "
                                          "(align_corners=False)",
                        "outputs_to_pixels": "bilinear upsampling x stride (align_corners=False), crop, argmax, "
                                             "nearest resize to the annotation"}
    headline_metrics = ("mIoU",)
    settings_block = "decoding"

    def open(self, cfg: EvalConfig) -> VipDataset:
        """VIP_Fine from ``--data-root``, ``data/VIP``, or a generated set."""
        if cfg.data_root is not None:
            return VipDataset(cfg.data_root, split=cfg.split or self.defaults.split)
        if self.defaults.data.is_dir():
            print(f"using VIP at {self.defaults.data}")
            return VipDataset(self.defaults.data, split=cfg.split or self.defaults.split)
        synthetic_banner("VIP", self.defaults.data, self.defaults.synthetic, "VIP_Fine")
        return VipDataset(generate_vip(self.defaults.synthetic, num_videos=4, num_frames=12, seed=0), split="val")

    def settings(self, cfg: EvalConfig, dataset: VipDataset) -> dict:
        return {"input_size": list(cfg.input_size)}

    def names(self, run: TaskRun) -> list[str]:
        return select_names(list(run.dataset.names), run.cfg)

    def describe(self, run: TaskRun) -> str:
        size = run.cfg.input_size
        return (f"VIP: {len(self.names(run))} videos from {run.identity['root']} ({run.identity['split']}); input "
                f"{size[0]}x{size[1]}; {run.describe()}")

    def predict(self, run: TaskRun, video: VipVideo) -> dict:
        cfg, device = run.cfg, run.device
        encoder, adapt_seconds = encoder_for_video(
            run.encoder, lambda t: resize_frame(video.read_frame(t), cfg.input_size), video.num_frames, cfg, device)
        confusion, timings, maps = predict_vip_video(
            video, encoder, run.prop_cfg, device, cfg.input_size, run.out / "predictions", cfg.batch_size,
            keep_maps=cfg.vis, cache=feature_cache(cfg, run.encoder_info, run.identity, video.name))
        timings["adaptation"] = adapt_seconds
        if cfg.vis:
            write_overlays(run.out / "vis", video.name, [overlay_parts(video.read_frame(t), maps[t])
                                                         for t in range(video.num_frames)])
        return {"num_frames": video.num_frames, "timings": timings,
                "scored_frames": len([t for t in video.annotated_frames if t > 0]),
                "confusion": confusion.tolist(), "scores": {"mIoU": vip_iou_from_confusion(confusion)["mIoU"]}}

    def merge(self, run: TaskRun, records: dict[str, dict]) -> dict:
        """IoU of one confusion matrix summed over every video."""
        confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        for record in records.values():
            confusion += np.asarray(record["confusion"], dtype=np.int64)
        scores = vip_iou_from_confusion(confusion)
        return {"metrics": {"mIoU": scores["mIoU"], "IoU": scores["IoU"]}, "confusion": confusion.tolist(),
                "per_sequence": {name: r["scores"] for name, r in records.items()},
                "predictions_format": "predictions/<video>/<frame>.png: indexed PNG class ids 0..19 at the "
                                      "annotation's size"}

    def print_table(self, results: dict) -> None:
        print_video_table(results["per_sequence"], results["metrics"], ["mIoU"], "all (one confusion)")
