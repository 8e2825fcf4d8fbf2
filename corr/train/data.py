"""Training data: the clip dataset, the demo's generated clips, the step-indexed data order
and the record of unusable videos.

Data order is a function of the step: step ``s`` (1-based) reads batch ``(s-1) % B`` of epoch
``(s-1) // B`` (``B`` full batches per epoch per process) of a ``DistributedSampler``
permutation seeded by (seed, epoch); every clip's randomness is a function of (seed, epoch,
item) (``datasets.video``). One DataLoader serves the whole run: its keys are ``(epoch,
item)`` pairs, so workers are never restarted at an epoch end. A dataset item is ``{"clip":
tensor, "video": str, "skipped": [(path, reason)]}``; clips are ``(T, N, 3, h, w)`` patches in
grid mode and ``(T, 3, H, W)`` frames in dense mode.

The demo (no ``--data``) trains on a DAVIS-format set of 8 procedural sequences
(``datasets.synthetic.generate_davis``, seed 1000, unlike the seed-0 sets used for
evaluation), written once to ``$XDG_CACHE_HOME/corr/synthetic-davis-train`` (default
``~/.cache/corr/...``) and reused afterwards.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from corr.errors import OptionError
from corr.io import atomic_write_bytes
from corr.runtime import Runtime
from corr.train.config import TrainConfig
from datasets.augment import ClipTransform
from datasets.flow_files import FlowPairCrops
from datasets.synthetic import generate_davis
from datasets.video import VideoClipDataset, collate_clips

logger = logging.getLogger("corr.train")

DEMO_DATA = {"num_sequences": 8, "num_frames": 24, "size": (240, 320), "seed": 1000, "split": "train"}
SKIPPED_FILE = "skipped_videos.txt"


def demo_data_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "corr" / "synthetic-davis-train"


def prepare_demo_data(runtime: Runtime) -> Path:
    """Generate (once; rank 0) the demo's synthetic DAVIS set; return its frame-folder root."""
    root = demo_data_root()
    if runtime.is_main:
        logger.info("no --data given: training the demo on generated synthetic clips in %s", root)
        generate_davis(root, **DEMO_DATA)
    runtime.barrier()
    return root / "JPEGImages" / "480p"


def build_dataset(cfg: TrainConfig, source: str | Path) -> Dataset:
    """The clips of ``source``; with ``--flow-data`` each item also carries a FlyingThings3D pair."""
    clips = VideoClipDataset(source, clip_len=cfg.clip_len, fps=cfg.fps, frame_skip=cfg.frame_skip,
                             clips_per_video=cfg.clips_per_video, transform=make_transform(ClipTransform, cfg),
                             cache_dir=cfg.cache_dir, backend=cfg.backend, seed=cfg.seed,
                             frame_offsets=cfg.clip_offsets)
    if cfg.flow_data is None:
        return clips
    return WithFlowPairs(clips, FlowPairCrops(cfg.flow_data, cfg.crop_size, blur=cfg.blur), cfg.seed)


class WithFlowPairs(Dataset):
    """``dataset``'s items with ``"flow_pair"``: a random crop of a random pair of ``pairs``
    (:meth:`datasets.flow_files.FlowPairCrops.sample`), drawn from a generator seeded by
    ``(seed, epoch, index)``, so a resumed or distributed run draws the same pairs."""

    def __init__(self, dataset: Dataset, pairs: FlowPairCrops, seed: int):
        self.dataset, self.pairs, self.seed, self.epoch = dataset, pairs, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def bad_videos(self) -> list:
        return getattr(self.dataset, "bad_videos", [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["flow_pair"] = self.pairs.sample(np.random.default_rng((self.seed, 7, self.epoch, index)))
        return item


def make_transform(transform_cls: type, cfg: TrainConfig) -> Callable:
    """``ClipTransform`` for the configured node mode, crop size and crop boxes, shared crop, flips,
    colour jitter, blur and short-side resize.

    Grid patches keep the reference proportions: side ``crop/4`` at stride ``crop/8``
    (256 -> 7x7 windows of 64x64 at stride 32).
    """
    return transform_cls(mode=cfg.mode, size=cfg.crop_size, patch_size=cfg.crop_size // 4,
                         patch_stride=cfg.crop_size // 8, same_crop=bool(cfg.same_crop), flip=bool(cfg.flip),
                         color_jitter=cfg.color_jitter, frame_flip=bool(cfg.frame_flip), short_side=cfg.short_side,
                         crop_scale=cfg.crop_area, crop_ratio=cfg.crop_aspect, crop_style=cfg.crop_style, blur=cfg.blur)


def batches_per_epoch(dataset_len: int, batch_size: int, world_size: int) -> int:
    """Full batches per epoch for each process (the tail of a rank's share is dropped); at least one."""
    per_rank = math.ceil(dataset_len / world_size)
    if per_rank < batch_size:
        raise OptionError(f"the dataset has {dataset_len} clips per epoch, fewer than batch size {batch_size} "
                         f"x {world_size} processes; lower --batch-size or raise --clips-per-video")
    return per_rank // batch_size


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(epoch, index)`` keys for one process, from step ``first_step`` on.

    Epoch ``e`` is this rank's share of ``DistributedSampler(shuffle=True, seed)`` after
    ``set_epoch(e)``, cut into ``batches_per_epoch`` full batches; step ``s`` (1-based) gets
    batch ``(s - 1) % B`` of epoch ``(s - 1) // B``.
    """

    def __init__(self, dataset_len: int, batch_size: int, first_step: int, runtime: Runtime, seed: int):
        self.dataset_len, self.batch_size, self.first_step, self.seed = dataset_len, batch_size, first_step, seed
        self.rank, self.world_size = runtime.rank, runtime.world_size
        self.per_epoch = batches_per_epoch(dataset_len, batch_size, runtime.world_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        sampler = DistributedSampler(range(self.dataset_len), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=self.seed, drop_last=False)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        return [indices[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.per_epoch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = divmod(self.first_step, self.per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[start:]:
                yield [(epoch, i) for i in batch]
            epoch, start = epoch + 1, 0


class EpochIndexed(Dataset):
    """``dataset`` addressed by ``(epoch, index)``: DataLoader workers follow the epoch
    (``dataset.set_epoch``) without being restarted, and prefetch across epoch ends."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def batch_stream(dataset: Dataset, cfg: TrainConfig, runtime: Runtime, first_step: int) -> Iterator[dict]:
    """Batches for steps ``first_step + 1, first_step + 2, ...`` (endless, epoch after epoch)."""
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, first_step, runtime, cfg.seed)
    loader = DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_clips, pin_memory=runtime.device.type == "cuda",
                        prefetch_factor=4 if cfg.num_workers > 0 else None)
    yield from loader


def write_skipped(path: Path, skipped: dict[str, str]) -> None:
    """One ``<video path>\t<reason>`` line per unusable video."""
    atomic_write_bytes(path, "".join(f"{p}\t{' '.join(r.split())}\n" for p, r in skipped.items()).encode())


class SkippedVideos:
    """Unusable videos met so far (``videos``: path -> reason), each logged once; the main
    process (``write``) lists them all in ``path``. Under DDP each process reports its own."""

    def __init__(self, path: Path, write: bool):
        self.path, self.write = path, write
        self.videos: dict[str, str] = {}

    def left_out(self, videos: Iterable[tuple[str, str]]) -> None:
        """Videos the dataset's index left out: the first five and their count are logged."""
        self.videos.update(videos)
        if self.videos and self.write:
            for path, reason in list(self.videos.items())[:5]:
                logger.warning("unusable video left out: %s: %s", path, reason)
            logger.warning("%d unusable videos are left out; all are listed in %s", len(self.videos), self.path)
            write_skipped(self.path, self.videos)

    def skipped(self, videos: Iterable[tuple[str, str]]) -> None:
        """Videos a batch skipped while loading: each new one is logged."""
        new = 0
        for path, reason in videos:
            if path not in self.videos:
                self.videos[path] = reason
                new += 1
                logger.warning("skipped an unreadable video (reported once): %s", reason)
        if new and self.write:
            write_skipped(self.path, self.videos)
