"""Training by the contrastive random walk and the other objectives (``--loss``):
config -> seed -> data -> model -> loss -> step.

    python train.py --data /data/kinetics400/train --out runs/crw          # one GPU or the CPU
    torchrun --nproc_per_node=4 train.py --data /data/kinetics400/train    # DDP, one GPU each
    python train.py --out runs/crw --resume                                 # continue a run
    python train.py                                                         # the demo

Run folder ``--out``: ``checkpoint.pt`` (always the latest, written atomically),
``config.json``, the TensorBoard event files (``tensorboard --logdir OUT``) and, when
videos could not be used, ``skipped_videos.txt`` (path and reason, one per line; each is
also logged once). Under DDP each process reports the videos it met itself.

Defaults follow the reference README (PROTOCOLS.md section 1): Adam, lr 1e-4 (constant),
clip length 4 sampled at 8 fps, up to 5 clips per video per epoch, tau 0.05, edge dropout
0.1, 7x7 grid of 64x64 patches from 256x256 crops, batch 20, 25 epochs. ``batch_size`` is
per process (``torchrun`` with G processes trains with G x batch_size clips per step).

Objectives. ``--loss`` names one loss or a weighted mix over one encoder (``crw=1,cycle=0.5``).
A single objective takes its published setup for every option left unset
(``OBJECTIVE_DEFAULTS``): ``--loss cycle`` TimeCycle's (PROTOCOLS.md 2: Adam lr 2e-4, betas
(0.5, 0.999), gradient norm clipped at 10, clips of 12 fps frames at offsets 0, 2, 4, 6
(base), 15 (target), 17 (motion reference), one crop and flip per clip, 240 px frames with
``--data``) and ``--loss pixel`` a stride-4 encoder (PROTOCOLS.md 3). A mix keeps the walk's
setup (so adding a term to a walk run changes only the loss); give the options to change it.
The resolved values are written to ``OUT/config.json``.

Several processes. Under ``torchrun`` one ``DistributedDataParallel`` wraps
:class:`TrainModule`, the walk model and the losses together, so every loss runs the encoder
inside the wrapper and the gradients of every parameter (the encoder, the walk head and the
heads the losses own, such as the TimeCycle tracker) are averaged over the processes
(``find_unused_parameters`` when a frame loss leaves some of them out of the graph).

Images (every ``--image-every`` steps, of the batch's first clip): ``walk/...`` where the
walk sends frame 0's nodes, ``cycle/tracked_patch`` the TimeCycle patch and where it was
tracked, ``pixel/warped_pair`` the pixel loss's warped pair with correspondences and the
out-of-view region. The losses return the data for them; only this loop draws.

The demo. Without ``--data`` the run trains on generated synthetic clips: a DAVIS-format
set of 8 procedural sequences (``datasets.synthetic.generate_davis``, seed 1000, so it
differs from the seed-0 sets used for evaluation) written once to
``$XDG_CACHE_HOME/corr/synthetic-davis-train`` (default ``~/.cache/corr/...``) and
reused afterwards. Options left unset then get small values that finish in minutes on a
2-core CPU (``DEMO`` below: 150 steps of batch 2, dense nodes on 64x64 crops); any of them
given on the command line wins.

Exact resumption. Data order is a function of the step: step ``s`` (1-based) reads batch
``(s-1) % B`` of epoch ``(s-1) // B`` (``B`` batches per epoch per process) of a
``DistributedSampler`` permutation seeded by (seed, epoch), and every clip's randomness is
a function of (seed, epoch, item) (``datasets.video``). One DataLoader serves the whole
run: its keys are ``(epoch, item)`` pairs, so workers are never restarted at an epoch end.
Each step's remaining randomness (edge dropout) comes from the global torch generator
reseeded with (seed, step, rank) at the start of the step. A run resumed from the
checkpoint of step s therefore computes the same losses from step s+1 on as a run that
was never stopped (bit-identical on the CPU; the checkpoint also keeps the RNG states).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from corr.encoders import CHECKPOINT_FORMAT, build_encoder
from corr.graph import GRAPH_MODES, WalkModel
from corr.io import atomic_torch_save, atomic_write_json
from corr.losses.walk import ContrastiveRandomWalk

logger = logging.getLogger("corr.train")



def encoder_kwargs(name: str) -> dict[str, Any]:
    """Constructor options of the trained encoder: layer4 where it has one (PROTOCOLS.md 1)."""
    from corr.encoders import ENCODERS

    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}")
    return {"out_layer": "layer4"} if "out_layer" in inspect.signature(ENCODERS[name]).parameters else {}


@dataclass
class TrainConfig:
    """Contrastive random walk training (Jabri et al. 2020) and the other objectives. Options
    left at ``None`` get the objective's value (``OBJECTIVE_DEFAULTS``), then the reference
    value with ``--data`` and the demo value without it."""

    data: Optional[str] = field(default=None, metadata={
        "help": "folder of videos, list file or frame folders; none: demo on synthetic clips"})
    out: str = field(default="runs/crw", metadata={"help": "run folder (checkpoint.pt, TensorBoard logs)"})
    steps: Optional[int] = field(default=None, metadata={"help": "optimisation steps (none: 25 epochs; demo 150)"})
    batch_size: Optional[int] = field(default=None, metadata={"help": "clips per step per process (none: 20; demo 2)"})
    clip_len: Optional[int] = field(default=None, metadata={
        "help": "frames per clip (none: 4, or the number of --clip-offsets)"})
    fps: Optional[float] = field(default=None, metadata={
        "help": "clip frame rate, sets the frame skip (none: 8; cycle 12)"})
    frame_skip: Optional[int] = field(default=None, metadata={
        "help": "source frames between clip frames (overrides fps)"})
    clip_offsets: Optional[tuple[int, ...]] = field(default=None, metadata={
        "help": "clip frames as offsets in frame skips, e.g. 0,2,4,6,15,17 (none: evenly spaced; cycle: that one)"})
    same_crop: Optional[bool] = field(default=None, metadata={
        "help": "one random crop for the whole clip (none: off, each frame its own; cycle: on)"})
    flip: Optional[bool] = field(default=None, metadata={
        "help": "mirror the whole clip with probability 1/2 (none: off; cycle: on)"})
    clips_per_video: int = field(default=5, metadata={"help": "clips per video per epoch"})
    mode: Optional[str] = field(default=None, metadata={
        "help": "nodes: grid (7x7 patches) or dense (feature cells) (none: grid; demo dense)"})
    crop_size: Optional[int] = field(default=None, metadata={
        "help": "per-frame RandomResizedCrop size (none: 256; demo 64)"})
    loss: str = field(default="crw", metadata={
        "help": "loss name or name=weight,... over one encoder (known: crw, cycle, pixel, global_walk)"})
    lr: Optional[float] = field(default=None, metadata={"help": "Adam learning rate (none: 1e-4; cycle 2e-4)"})
    betas: Optional[tuple[float, ...]] = field(default=None, metadata={
        "help": "Adam betas (none: 0.9,0.999; cycle 0.5,0.999)"})
    grad_clip: Optional[float] = field(default=None, metadata={
        "help": "clip the gradient norm to this (0: off; none: off; cycle 10)"})
    temperature: float = field(default=0.05, metadata={"help": "walk temperature tau"})
    edge_dropout: float = field(default=0.1, metadata={"help": "edge dropout probability"})
    include_one_step: bool = field(default=False, metadata={"help": "also train the one-step cycle k=1"})
    pixel_radius: int = field(default=6, metadata={
        "help": "pixel loss: half-size R of the local window, in feature cells ((2R+1)^2 displacements)"})
    pixel_domain_weight: float = field(default=0.0, metadata={
        "help": "pixel loss: weight of the gradient-reversal domain term, warped vs real pairs (0: off)"})
    encoder: Optional[str] = field(default=None, metadata={
        "help": "encoder name, corr.encoders.ENCODERS (none: resnet18-crw; cycle resnet50; pixel resnet18-s4)"})
    head_dim: int = field(default=128, metadata={"help": "node embedding size"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: Optional[bool] = field(default=None, metadata={"help": "mixed precision (none: on with CUDA; CUDA only)"})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm under DDP"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader worker processes per process"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    log_every: int = field(default=20, metadata={"help": "steps between TensorBoard scalars"})
    image_every: int = field(default=500, metadata={"help": "steps between loss images (0: never)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint.pt"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "folder for the video index cache"})
    backend: str = field(default="auto", metadata={"help": "video decoder: auto, decord or opencv"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


# Values of the None options: reference training (with --data) and the demo (without).
REFERENCE = {"steps": None, "batch_size": 20, "mode": "grid", "crop_size": 256}
REFERENCE_EPOCHS = 25
DEMO = {"steps": 150, "batch_size": 2, "mode": "dense", "crop_size": 64, "checkpoint_every": 50,
        "log_every": 10, "image_every": 50, "num_workers": 1}
DEMO_DATA = {"num_sequences": 8, "num_frames": 24, "size": (240, 320), "seed": 1000, "split": "train"}

# Per-objective values of the None options. A run with a single loss named here takes its
# published setup; every other run (the walk, and every mix) takes WALK_DEFAULTS, the CRW
# reference (PROTOCOLS.md 1). Options given on the command line always win.
WALK_DEFAULTS = {"encoder": "resnet18-crw", "lr": 1e-4, "betas": (0.9, 0.999), "grad_clip": 0.0, "fps": 8.0,
                 "clip_offsets": None, "same_crop": False, "flip": False}
OBJECTIVE_DEFAULTS = {
    # TimeCycle (PROTOCOLS.md 2; the authors' training script and VLOG loader): ResNet-50 at
    # stride 8 (layer3, 1024-d, under the loss's 1x1 conv to 512); Adam lr 2e-4, betas
    # (0.5, 0.999), gradient norm clipped at 10; frames of a 12 fps source, base frames
    # s, s+2, s+4, s+6, the target s+15 and s+17 for the motion that places the patch; one
    # crop and one horizontal flip for the whole clip.
    "cycle": {"encoder": "resnet50", "lr": 2e-4, "betas": (0.5, 0.999), "grad_clip": 10.0, "fps": 12.0,
              "clip_offsets": (0, 2, 4, 6, 15, 17), "same_crop": True, "flip": True},
    # Li et al. 2023 (PROTOCOLS.md 3): features at stride 4.
    "pixel": {"encoder": "resnet18-s4"},
}
# The demo's generated sequences (24 frames) are too short for 12 fps steps of a 24 fps
# frame folder (35 frames); there each generated frame is one step. 240 px frames as published.
DEMO_OBJECTIVE = {"cycle": {"frame_skip": 1}}
REFERENCE_OBJECTIVE = {"cycle": {"crop_size": 240}}


def single_objective(spec: str) -> Optional[str]:
    """The loss whose published setup a run takes: the only loss of ``spec`` when it has one."""
    names = list(parse_loss_spec(spec))
    return names[0] if len(names) == 1 and names[0] in OBJECTIVE_DEFAULTS else None


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None`` options: per-objective values, then reference values with ``--data``
    and demo values without.

    ``--loss cycle`` alone takes TimeCycle's setup and ``--loss pixel`` alone a stride-4
    encoder (``OBJECTIVE_DEFAULTS``); the walk and every mix of losses keep the walk's
    setup (``WALK_DEFAULTS``), so adding a loss to a walk run changes nothing else. The demo
    also shortens ``checkpoint_every``, ``log_every``, ``image_every`` and ``num_workers``
    when they are at their defaults. ``steps`` stays ``None`` with data (25 epochs, known
    once the dataset is indexed). ``clip_len`` is the number of ``clip_offsets`` when
    those are set.
    """
    defaults = TrainConfig()
    losses = parse_loss_spec(cfg.loss)
    objective = single_objective(cfg.loss)
    setup = {**WALK_DEFAULTS, **OBJECTIVE_DEFAULTS.get(objective, {})}
    given_offsets = cfg.clip_offsets is not None
    extra = (DEMO_OBJECTIVE if cfg.data is None else REFERENCE_OBJECTIVE).get(objective, {})
    if cfg.fps is not None:
        extra = {k: v for k, v in extra.items() if k != "frame_skip"}          # an explicit rate wins
    cfg = dataclasses.replace(cfg, **{k: v for k, v in {**setup, **extra}.items() if getattr(cfg, k) is None})
    if cfg.mode is None and FRAME_LOSSES & set(losses):
        cfg = dataclasses.replace(cfg, mode="dense")       # frame losses read whole frames
    if cfg.data is None:
        values = {k: v for k, v in DEMO.items()
                  if getattr(cfg, k) is None or (k not in REFERENCE and getattr(cfg, k) == getattr(defaults, k))}
    else:
        values = {k: v for k, v in REFERENCE.items() if getattr(cfg, k) is None}
    cfg = dataclasses.replace(cfg, **values)
    if cfg.clip_offsets is not None:
        offsets = tuple(int(o) for o in cfg.clip_offsets)
        if cfg.clip_len is not None and cfg.clip_len != len(offsets):
            hint = "" if given_offsets else (f" (--loss {objective} samples the frames {','.join(map(str, offsets))}; "
                                             "give --clip-offsets instead, e.g. 0,1,2 for evenly spaced frames)")
            raise ValueError(f"--clip-len {cfg.clip_len} does not match --clip-offsets {offsets}{hint}")
        if not offsets or offsets[0] < 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
            raise ValueError(f"--clip-offsets must be >= 0 and strictly increasing, got {offsets}")
        cfg = dataclasses.replace(cfg, clip_offsets=offsets, clip_len=len(offsets))
    elif cfg.clip_len is None:
        cfg = dataclasses.replace(cfg, clip_len=4)
    if cfg.mode not in GRAPH_MODES:
        raise ValueError(f"--mode must be one of {GRAPH_MODES}, got {cfg.mode!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    for name in ("batch_size", "clip_len", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.pixel_radius < 1 or cfg.pixel_domain_weight < 0:
        raise ValueError(f"--pixel-radius must be >= 1 and --pixel-domain-weight >= 0, got {cfg.pixel_radius} "
                         f"and {cfg.pixel_domain_weight}")
    if not cfg.lr > 0 or cfg.grad_clip < 0:
        raise ValueError(f"--lr must be > 0 and --grad-clip >= 0, got {cfg.lr} and {cfg.grad_clip}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ValueError(f"--betas must be two numbers in [0, 1), got {cfg.betas}")
    cfg = dataclasses.replace(cfg, betas=tuple(float(b) for b in cfg.betas))
    if "cycle" in losses and cfg.clip_len < (3 if cfg.clip_offsets is not None else 2):
        raise ValueError(f"--loss cycle needs base frames and a target: at least "
                         f"{3 if cfg.clip_offsets is not None else 2} frames, got {cfg.clip_len}")
    frame_losses = sorted(FRAME_LOSSES & set(losses))
    if frame_losses and cfg.mode != "dense":
        raise ValueError(f"--loss {','.join(frame_losses)} needs whole frames: use --mode dense, not {cfg.mode!r}")
    return cfg


# ------------------------------------------------------------------------------ losses

# A loss builder takes the config and returns a module mapping nodes (B, T, N, C) to
# (loss, diagnostics), or, for the names in FRAME_LOSSES (modules with ``needs_frames``),
# the dense clip (B, T, 3, H, W) and the shared encoder to (loss, diagnostics).
# New losses register here and mix in with --loss "crw=1,name=w".


def build_cycle_loss(cfg: TrainConfig) -> nn.Module:
    """TimeCycle (PROTOCOLS.md 2) on the encoder's layer3, sized for ``crop_size`` frames. With
    ``clip_offsets`` (the published layout) the clip's last frame only places the patch."""
    from corr.losses.cycle import CycleConsistencyLoss

    probe = build_encoder(cfg.encoder, **({"out_layer": "layer3"} if encoder_kwargs(cfg.encoder) else {}))
    cells = math.ceil(cfg.crop_size / probe.stride)
    layer = "layer3" if encoder_kwargs(cfg.encoder) else None
    return CycleConsistencyLoss(probe.out_channels, (cells, cells), layer=layer, motion_frame=cfg.clip_offsets is not None)


def build_pixel_loss(cfg: TrainConfig) -> nn.Module:
    """Fine-grained pixel loss (PROTOCOLS.md 3) on layer3; use a stride-4 encoder (resnet18-s4)."""
    from corr.losses.pixel import FinePixelLoss

    return FinePixelLoss(radius=cfg.pixel_radius, domain_weight=cfg.pixel_domain_weight,
                         layer="layer3" if encoder_kwargs(cfg.encoder) else None)


def build_global_walk_loss(cfg: TrainConfig) -> nn.Module:
    """Two-frame global-matching walk with label warping (corr.losses.global_walk). The loss owns
    its network (corr.global_match.GlobalMatchNet, saved under heads/losses); the encoder is unused.

    The network is drawn from its own random stream seeded with ``cfg.seed`` alone
    (:func:`corr.global_match.seeded_global_match`), so its initial weights are those of
    ``evaluate.py --encoder global-match --seed <seed>`` (label propagation with the untrained
    backbone) whatever else the run builds first.
    """
    from corr.global_match import seeded_global_match
    from corr.losses.global_walk import GlobalWalkFrameLoss

    return GlobalWalkFrameLoss(seeded_global_match(cfg.seed))


LOSSES: dict[str, Callable[[TrainConfig], nn.Module]] = {
    "crw": lambda cfg: ContrastiveRandomWalk(cfg.temperature, cfg.edge_dropout, cfg.include_one_step),
    "cycle": build_cycle_loss,
    "pixel": build_pixel_loss,
    "global_walk": build_global_walk_loss,
}
FRAME_LOSSES = {"cycle", "pixel", "global_walk"}


def trained_network_name(cfg: TrainConfig) -> str:
    """What the run trains, for the log: the encoder, or the network a loss owns when only it is trained."""
    if set(parse_loss_spec(cfg.loss)) == {"global_walk"}:
        return "the global-match network (corr.global_match; --encoder unused)"
    return cfg.encoder


def parse_loss_spec(spec: str) -> dict[str, float]:
    """``"crw"`` -> ``{"crw": 1.0}``; ``"crw=1,other=0.5"`` -> ``{"crw": 1.0, "other": 0.5}``."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in LOSSES:
            raise ValueError(f"--loss: unknown loss {name!r} in {spec!r}; known losses: {', '.join(LOSSES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--loss: weight of {name!r} must be a number, got {weight!r}") from None
    if not weights:
        raise ValueError(f"--loss: no loss named in {spec!r}; known losses: {', '.join(LOSSES)}")
    return weights


class WeightedLosses(nn.Module):
    """Weighted sum of named losses; diagnostics prefixed ``name/`` plus ``name/loss``.

    ``forward(nodes, clip, encoder) -> (loss, diagnostics)``; with ``visuals=True`` also a
    third item ``{name: visuals}``: the walk's detached ``{"nodes": (B, T, N, C)}`` and what
    each frame loss returns for figures (those whose forward takes ``visuals``).
    """

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)

    @property
    def needs_nodes(self) -> bool:
        return any(not getattr(loss_fn, "needs_frames", False) for loss_fn in self.losses.values())

    def forward(self, nodes: Optional[torch.Tensor], clip: Optional[torch.Tensor] = None,
                encoder: Optional[nn.Module] = None, visuals: bool = False):
        total, diagnostics, figures = 0.0, {}, {}
        for name, loss_fn in self.losses.items():
            if getattr(loss_fn, "needs_frames", False):
                if visuals and "visuals" in inspect.signature(loss_fn.forward).parameters:
                    value, diag, figures[name] = loss_fn(clip, encoder, visuals=True)
                else:
                    value, diag = loss_fn(clip, encoder)
            else:
                value, diag = loss_fn(nodes)
                if visuals:
                    figures[name] = {"nodes": nodes.detach()}
            total = total + self.weights[name] * value
            diagnostics[f"{name}/loss"] = float(value.detach())
            diagnostics.update({f"{name}/{key}": v for key, v in diag.items()})
        return (total, diagnostics, figures) if visuals else (total, diagnostics)


def build_losses(cfg: TrainConfig) -> WeightedLosses:
    weights = parse_loss_spec(cfg.loss)
    return WeightedLosses({name: LOSSES[name](cfg) for name in weights}, weights)


class TrainModule(nn.Module):
    """Everything trained, as one module: the walk model (encoder + head) and the losses
    (with the heads and networks they own, e.g. the TimeCycle tracker).

    ``forward(clip) -> (loss, diagnostics)`` (``visuals=True``: plus the losses' figure
    data, :class:`WeightedLosses`). Under DDP this module is what is wrapped, so the encoder
    runs inside the wrapper for every loss and the gradients of all parameters, the
    loss-owned ones included, are averaged over the processes. ``clip`` is ``(B, T, N, 3,
    h, w)`` patches in grid mode and ``(B, T, 3, H, W)`` frames in dense mode.
    """

    def __init__(self, model: WalkModel, losses: WeightedLosses):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, clip: torch.Tensor, visuals: bool = False):
        nodes = self.model(clip) if self.losses.needs_nodes else None          # B, T, N, C
        return self.losses(nodes, clip, self.model.encoder, visuals=visuals)

    def unused_parameters_possible(self) -> bool:
        """Whether some parameters can miss the graph: the frame losses use parts of the
        encoder (layer3) and not the walk head, or their own networks only."""
        return bool(FRAME_LOSSES & set(self.losses.losses))


# ------------------------------------------------------------------------ distribution


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, DDP rank and world size, mixed precision."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Pick the device; join the process group when launched by ``torchrun`` (WORLD_SIZE > 1).

    Backend nccl on CUDA, gloo on the CPU; each process uses GPU ``LOCAL_RANK``.
    """
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if want_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world_size)
    if cfg.amp and not want_cuda:
        logger.warning("--amp needs CUDA; training in float32 on the CPU")
    amp = bool(want_cuda and (cfg.amp is None or cfg.amp))
    return Runtime(device, rank, world_size, amp)


def _all_reduce_mean(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    value = value.detach().clone()
    if runtime.distributed:
        dist.all_reduce(value)
        value /= runtime.world_size
    return value


# ---------------------------------------------------------------------------------- data


def demo_data_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "corr" / "synthetic-davis-train"


def prepare_demo_data(runtime: Runtime) -> Path:
    """Generate (once; rank 0) the demo's synthetic DAVIS set; return its frame-folder root."""
    from datasets.synthetic import generate_davis

    root = demo_data_root()
    if runtime.is_main:
        logger.info("no --data given: training the demo on generated synthetic clips in %s", root)
        generate_davis(root, **DEMO_DATA)
    if runtime.distributed:
        dist.barrier()
    return root / "JPEGImages" / "480p"


def build_dataset(cfg: TrainConfig, source: str | Path) -> Dataset:
    from datasets.augment import ClipTransform
    from datasets.video import VideoClipDataset

    return VideoClipDataset(source, clip_len=cfg.clip_len, fps=cfg.fps, frame_skip=cfg.frame_skip,
                            clips_per_video=cfg.clips_per_video, transform=make_transform(ClipTransform, cfg),
                            cache_dir=cfg.cache_dir, backend=cfg.backend, seed=cfg.seed,
                            frame_offsets=cfg.clip_offsets)


def make_transform(transform_cls: type, cfg: TrainConfig) -> Callable:
    """``ClipTransform`` for the configured node mode, crop size, shared crop and flip.

    Grid patches keep the reference proportions: side ``crop/4`` at stride ``crop/8``
    (256 -> 7x7 windows of 64x64 at stride 32).
    """
    return transform_cls(mode=cfg.mode, size=cfg.crop_size, patch_size=cfg.crop_size // 4,
                         patch_stride=cfg.crop_size // 8, same_crop=bool(cfg.same_crop), flip=bool(cfg.flip))


def batches_per_epoch(dataset_len: int, batch_size: int, world_size: int) -> int:
    """Full batches per epoch for each process (the tail of a rank's share is dropped); at least one."""
    per_rank = math.ceil(dataset_len / world_size)
    if per_rank < batch_size:
        raise ValueError(f"the dataset has {dataset_len} clips per epoch, fewer than batch size {batch_size} "
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
    from datasets.video import collate_clips

    sampler = StepBatchSampler(len(dataset), cfg.batch_size, first_step, runtime, cfg.seed)
    loader = DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate_clips, pin_memory=runtime.device.type == "cuda",
                        prefetch_factor=4 if cfg.num_workers > 0 else None)
    yield from loader


# ------------------------------------------------------------------------ checkpoints


def _rng_state() -> dict[str, Any]:
    """RNG states in a form a weights-only ``torch.load`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_dict(cfg: TrainConfig, model: WalkModel, optimizer, scaler, scheduler, step: int,
                    loss_fn: Optional[nn.Module] = None) -> dict[str, Any]:
    """The ``corr-checkpoint-v1`` layout that ``corr.encoders.load_checkpoint`` reads."""
    return {
        "format": CHECKPOINT_FORMAT,
        "encoder": {"name": cfg.encoder, "kwargs": encoder_kwargs(cfg.encoder),
                    "state_dict": model.encoder.state_dict()},
        "heads": {"walk": model.head.state_dict(),
                  **({"losses": loss_fn.state_dict()} if loss_fn is not None and loss_fn.state_dict() else {})},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": int(step),
        "rng": _rng_state(),
        "config": asdict(cfg),
        "losses": parse_loss_spec(cfg.loss),
    }


# Settings a resumed run must share with its checkpoint (the crop size and the pixel loss's
# window fix the shapes of loss-owned heads); keys older checkpoints lack count as defaults.
_RESUME_MUST_MATCH = ("encoder", "head_dim", "mode", "clip_len", "clip_offsets", "batch_size", "seed", "loss",
                      "crop_size", "pixel_radius", "pixel_domain_weight")


def load_training_state(path: Path, cfg: TrainConfig, model: WalkModel, optimizer, scaler, scheduler,
                        loss_fn: Optional[nn.Module] = None) -> int:
    """Restore everything from ``path``; return the step it was saved at."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {state.get('format')!r})")
    saved = {**asdict(TrainConfig()), **state.get("config", {})}
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}"
               for k in _RESUME_MUST_MATCH if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ValueError(f"{path} was trained with other settings; resuming would not continue it "
                         f"({'; '.join(changed)})")
    model.encoder.load_state_dict(state["encoder"]["state_dict"])
    model.head.load_state_dict(state["heads"]["walk"])
    if loss_fn is not None and "losses" in state["heads"]:
        loss_fn.load_state_dict(state["heads"]["losses"])       # heads that live in losses (cycle tracker, ...)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return int(state["step"])


# ------------------------------------------------------------------------------ images


def node_positions(clip: torch.Tensor, mode: str, stride: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frame images ``uint8 (H, W, 3)`` of one clip and node centres ``(N, 2)`` as (x, y) pixels.

    Grid mode shows a frame as the mosaic of its (jittered) patches in grid order; dense
    mode shows the crop, with node (i, j) at the centre of feature cell (i, j).
    """
    from datasets.transforms import denormalize_frames

    if mode == "grid":                                                  # clip: T, N, 3, h, w
        t, n, _, h, w = clip.shape
        side = int(round(math.sqrt(n)))
        if side * side != n:
            raise ValueError(f"grid mode with {n} patches per frame is not a square grid")
        patches = denormalize_frames(clip.reshape(t * n, *clip.shape[2:]).float()).reshape(t, side, side, h, w, 3)
        frames = [p.transpose(0, 2, 1, 3, 4).reshape(side * h, side * w, 3) for p in patches]
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * w, (ys.ravel() + 0.5) * h], axis=1)
    else:                                                               # clip: T, 3, H, W
        frames = list(denormalize_frames(clip.float()))
        height, width = frames[0].shape[:2]
        ys, xs = np.meshgrid(np.arange(math.ceil(height / stride)), np.arange(math.ceil(width / stride)), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
    return frames, centres


def walk_figure(frame_a: np.ndarray, frame_b: np.ndarray, centres: np.ndarray, targets: np.ndarray,
                max_arrows: int = 16, min_height: int = 256) -> np.ndarray:
    """Frames a | b side by side; arrows from some nodes of a to their walk targets in b.

    ``centres (N, 2)`` node (x, y) in either frame, ``targets (N,)`` node index in b.
    Frames lower than ``min_height`` are enlarged by an integer factor ``s``.
    Returns ``uint8 (s H, 2 s W, 3)``.
    """
    import cv2

    scale = max(1, min_height // frame_a.shape[0])     # small crops are enlarged to be readable
    if scale > 1:
        frame_a, frame_b = (cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                            for f in (frame_a, frame_b))
        centres = centres * scale
    height, width = frame_a.shape[:2]
    canvas = np.ascontiguousarray(np.concatenate([frame_a, frame_b], axis=1))
    chosen = np.linspace(0, len(centres) - 1, min(max_arrows, len(centres))).round().astype(int)
    for rank, i in enumerate(chosen):
        hue = int(180 * rank / max(1, len(chosen)))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        start = tuple(int(v) for v in centres[i])
        end = (int(centres[targets[i]][0]) + width, int(centres[targets[i]][1]))
        cv2.circle(canvas, start, 3, colour, -1)
        cv2.arrowedLine(canvas, start, end, colour, 1, tipLength=0.02)
        cv2.circle(canvas, end, 3, colour, -1)
    return canvas


def walk_image(clip: torch.Tensor, nodes: torch.Tensor, mode: str, stride: int) -> np.ndarray:
    """Where the forward walk sends frame 0's nodes in the last frame, for one clip.

    ``nodes (T, N, C)``: the target of node i is ``argmax_j (A_0 ... A_{T-2})_{ij}`` (no
    dropout; the temperature does not change an argmax of a single step but does for
    products, so tau = 0.05 is used).
    """
    frames, centres = node_positions(clip.detach().cpu(), mode, stride)
    q = nodes.detach().float().cpu()
    walk = torch.eye(q.shape[1])
    for t in range(q.shape[0] - 1):
        walk = walk @ torch.softmax(q[t] @ q[t + 1].T / 0.05, dim=-1)
    return walk_figure(frames[0], frames[-1], centres, walk.argmax(dim=-1).numpy())


def _enlarge(frames: list[np.ndarray], min_height: int) -> tuple[list[np.ndarray], int]:
    """Frames lower than ``min_height`` enlarged by an integer factor ``s`` (nearest); ``(frames, s)``."""
    import cv2

    scale = max(1, min_height // frames[0].shape[0])
    if scale > 1:
        frames = [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for f in frames]
    return [np.ascontiguousarray(f) for f in frames], scale


def _theta_quad(theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel corners ``(4, 2)`` (x, y) of the region that ``theta (2, 3)`` crops (``affine_grid``
    convention, ``align_corners=False``): patch corners ``(+-1, +-1)`` mapped to the frame's
    normalised coordinates, then ``x = (u + 1) W / 2 - 1/2``."""
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
    uv = corners @ np.asarray(theta, dtype=np.float64).T                                 # 4, 2
    return np.stack([(uv[:, 0] + 1) * width / 2 - 0.5, (uv[:, 1] + 1) * height / 2 - 0.5], axis=1)


def _draw_quad(image: np.ndarray, quad: np.ndarray, colour: tuple[int, int, int], scale: int) -> None:
    """Outline ``quad (4, 2)`` (unscaled pixels) and a tick from its centre to its top edge (its angle)."""
    import cv2

    points = ((quad + 0.5) * scale - 0.5).round().astype(np.int32)
    cv2.polylines(image, [points], isClosed=True, color=colour, thickness=2)
    centre, top = points.mean(0), (points[0] + points[1]) / 2
    cv2.line(image, tuple(int(v) for v in centre), tuple(int(v) for v in top), colour, 1)


def cycle_image(clip: torch.Tensor, visuals: dict[str, torch.Tensor], min_height: int = 256) -> np.ndarray:
    """The tracked TimeCycle patch of one clip: base frames 0 .. N-1 | target frame.

    ``clip (T, 3, H, W)`` normalised (``T = N + 1``, or ``N + 2`` when the last frame is the
    motion reference); ``visuals`` as :class:`corr.losses.cycle.CycleConsistencyLoss` returns
    them for this clip (``theta0 (2, 3)``, ``skip (N, 2, 3)``, ``long (C, 2, 3)``). Base frame t
    shows (yellow) where the patch was tracked directly; the target shows the cut patch
    (green) and where the longest cycle returned it (red). A tick marks each box's top edge.
    Returns ``uint8 (s H, (N + 1) s W, 3)``.
    """
    from datasets.transforms import denormalize_frames

    skip = visuals["skip"].float().cpu().numpy()
    n = len(skip)
    frames = list(denormalize_frames(clip[:n + 1].detach().float().cpu()))
    height, width = frames[0].shape[:2]
    frames, scale = _enlarge(frames, min_height)
    for t in range(n):
        _draw_quad(frames[t], _theta_quad(skip[t], height, width), (255, 220, 0), scale)
    _draw_quad(frames[n], _theta_quad(visuals["theta0"].float().cpu().numpy(), height, width), (0, 220, 0), scale)
    _draw_quad(frames[n], _theta_quad(visuals["long"][-1].float().cpu().numpy(), height, width), (255, 0, 0), scale)
    return np.concatenate(frames, axis=1)


def pixel_image(clip: torch.Tensor, visuals: dict[str, torch.Tensor], max_lines: int = 12,
                min_height: int = 256) -> np.ndarray:
    """The warped pair of the pixel loss for one clip: frame 0 | its warp.

    ``clip (T, 3, H, W)`` normalised; ``visuals`` as :class:`corr.losses.pixel.FinePixelLoss`
    returns them for this clip (``warped (3, H, W)``, ``in_view (H, W)``, ``matches`` and
    ``predicted (h, w, 2)`` in cells, ``used (h, w)``). Out-of-view pixels of the warp are
    darkened and tinted red. For up to ``max_lines`` used cells, a line joins the cell centre
    to its true match (dot) and a cross marks the features' most likely match. Cell ``(i, j)``
    has the pixel centre ``(s j + (s-1)/2, s i + (s-1)/2)``, ``s = H / h``.
    Returns ``uint8 (k H, 2 k W, 3)``.
    """
    import cv2
    from datasets.transforms import denormalize_frames

    source, warped = denormalize_frames(torch.stack([clip[0], visuals["warped"]]).detach().float().cpu())
    out_view = ~visuals["in_view"].cpu().numpy()
    warped = warped.copy()
    warped[out_view] = (0.35 * warped[out_view] + np.array([90, 0, 0])).astype(np.uint8)
    height, width = source.shape[:2]
    used = visuals["used"].cpu().numpy()
    stride = height / used.shape[0]
    (source, warped), scale = _enlarge([source, warped], min_height)
    canvas = np.ascontiguousarray(np.concatenate([source, warped], axis=1))

    def pixel(cell_xy: np.ndarray, offset: int = 0) -> tuple[int, int]:
        xy = (cell_xy * stride + (stride - 1) / 2 + 0.5) * scale - 0.5
        return int(round(xy[0])) + offset, int(round(xy[1]))

    cells = np.argwhere(used)                                                            # (i, j) rows
    chosen = cells[np.linspace(0, len(cells) - 1, min(max_lines, len(cells))).round().astype(int)] if len(cells) else []
    matches, predicted = visuals["matches"].float().cpu().numpy(), visuals["predicted"].float().cpu().numpy()
    for rank, (i, j) in enumerate(chosen):
        hue = int(180 * rank / max(1, len(chosen)))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        start, end = pixel(np.array([j, i], dtype=np.float64)), pixel(matches[i, j], width * scale)
        cv2.circle(canvas, start, 3, colour, -1)
        cv2.line(canvas, start, end, colour, 1)
        cv2.circle(canvas, end, 3, colour, -1)
        cv2.drawMarker(canvas, pixel(predicted[i, j], width * scale), colour, cv2.MARKER_CROSS, 9, 2)
    return canvas


def loss_images(clip: torch.Tensor, visuals: dict[str, dict], cfg: TrainConfig, stride: int
                ) -> list[tuple[str, np.ndarray]]:
    """``(TensorBoard tag, uint8 HWC image)`` per loss that returned figure data for clip 0 of
    the batch (``clip`` is that clip; ``visuals`` holds the batch's data, :class:`WeightedLosses`)."""
    images = []
    for name, data in visuals.items():
        first = {k: v[0] for k, v in data.items()}
        if name == "crw":
            image = walk_image(clip, first["nodes"], cfg.mode, stride)
            images.append((f"walk/frame0_to_frame{cfg.clip_len - 1}", image))
        elif name == "cycle":
            images.append(("cycle/tracked_patch", cycle_image(clip, first)))
        elif name == "pixel":
            images.append(("pixel/warped_pair", pixel_image(clip, first)))
    return images


# ------------------------------------------------------------------------------- loop


SKIPPED_FILE = "skipped_videos.txt"


def write_skipped(path: Path, skipped: dict[str, str]) -> None:
    """One ``<video path>\t<reason>`` line per unusable video."""
    from corr.io import atomic_write_bytes

    atomic_write_bytes(path, "".join(f"{p}\t{' '.join(r.split())}\n" for p, r in skipped.items()).encode())


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving that step."""


@dataclass
class TrainResult:
    cfg: TrainConfig
    model: WalkModel               # unwrapped (no DDP), on the training device
    first_step: int                # the step the run started after (0, or the resumed step)
    last_step: int
    losses: dict[int, float]       # step -> loss (averaged over processes)
    checkpoint: Optional[Path]
    skipped_videos: dict[str, str]  # path -> reason, as seen by this process
    loss_fn: Optional[WeightedLosses] = None  # the losses with the heads they own (no DDP)


def train(cfg: TrainConfig, dataset: Optional[Dataset] = None) -> TrainResult:
    """Run (or resume) training as configured; ``dataset`` replaces the one ``cfg.data`` names.

    A ``dataset`` item is ``{"clip": tensor, "video": str, "skipped": [(path, reason)]}``
    (``datasets.video.VideoClipDataset``); clips are ``(T, N, 3, h, w)`` in grid mode and
    ``(T, 3, H, W)`` in dense mode.
    """
    cfg = resolve_config(cfg)
    runtime = setup_runtime(cfg)
    out = Path(cfg.out)
    checkpoint_path = out / "checkpoint.pt"
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    if dataset is None:
        dataset = build_dataset(cfg, cfg.data if cfg.data is not None else prepare_demo_data(runtime))
    skipped: dict[str, str] = {}
    for path, reason in getattr(dataset, "bad_videos", []):
        skipped[path] = reason
    if skipped and runtime.is_main:
        for path, reason in list(skipped.items())[:5]:
            logger.warning("unusable video left out: %s: %s", path, reason)
        logger.warning("%d unusable videos are left out; all are listed in %s", len(skipped), out / SKIPPED_FILE)
        write_skipped(out / SKIPPED_FILE, skipped)
    per_epoch = batches_per_epoch(len(dataset), cfg.batch_size, runtime.world_size)
    if cfg.steps is None:
        cfg = dataclasses.replace(cfg, steps=max(1, REFERENCE_EPOCHS * per_epoch))

    encoder = build_encoder(cfg.encoder, **encoder_kwargs(cfg.encoder))
    module = TrainModule(WalkModel(encoder, head_dim=cfg.head_dim, mode=cfg.mode), build_losses(cfg))
    if runtime.distributed and cfg.sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module.to(runtime.device)
    model, loss_fn = module.model, module.losses
    parameters = list(module.parameters())          # the walk model's, then the losses' (checkpoint order)
    optimizer = torch.optim.Adam(parameters, lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # constant, as the reference
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp)

    step = 0
    if cfg.resume:
        if checkpoint_path.is_file():
            step = load_training_state(checkpoint_path, cfg, model, optimizer, scaler, scheduler, loss_fn)
            if runtime.is_main:
                logger.info("resumed from %s at step %d", checkpoint_path, step)
        elif runtime.is_main:
            logger.warning("--resume: %s does not exist; starting from step 0", checkpoint_path)
    first_step = step
    if runtime.is_main:
        atomic_write_json(out / "config.json", asdict(cfg))
        logger.info("training %s (%s nodes, %d-frame clips) for %d steps: batch %d x %d process(es) on %s%s; "
                    "%d clips per epoch (%d steps)", trained_network_name(cfg), cfg.mode, cfg.clip_len, cfg.steps,
                    cfg.batch_size, runtime.world_size, runtime.device, " with AMP" if runtime.amp else "",
                    len(dataset), per_epoch)

    train_module = module
    if runtime.distributed:   # one wrapper around everything trained: all gradients are all-reduced
        train_module = nn.parallel.DistributedDataParallel(
            module, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
            find_unused_parameters=module.unused_parameters_possible())
    train_module.train()

    writer = None
    if runtime.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out))
    progress = None
    if runtime.is_main and cfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    losses: dict[int, float] = {}
    last_saved = step if checkpoint_path.is_file() and cfg.resume else None
    window = {"clips": 0, "wait": 0.0, "time": 0.0, "loss": 0.0, "diag": {}, "count": 0}
    stream = batch_stream(dataset, cfg, runtime, step)
    try:
        while step < cfg.steps:
            tick = time.perf_counter()
            batch = next(stream)
            clip = batch["clip"].to(runtime.device, non_blocking=True)
            waited = time.perf_counter() - tick
            new_skips = 0
            for path, reason in batch.get("skipped", []):
                if path not in skipped:
                    skipped[path] = reason
                    new_skips += 1
                    logger.warning("skipped an unreadable video (reported once): %s", reason)
            if new_skips and runtime.is_main:
                write_skipped(out / SKIPPED_FILE, skipped)

            step += 1
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + runtime.rank)  # edge dropout of this step
            images_now = (writer is not None and cfg.image_every > 0
                          and (step % cfg.image_every == 0 or step == first_step + 1))
            with torch.autocast(device_type=runtime.device.type, dtype=torch.float16, enabled=runtime.amp):
                loss, diagnostics, *visuals = train_module(clip, visuals=images_now)
            mean_loss = float(_all_reduce_mean(loss, runtime))
            if not math.isfinite(mean_loss):
                where = (f"the last good checkpoint is {checkpoint_path} (step {last_saved})" if last_saved is not None
                         else "no checkpoint was written")
                raise NonFiniteLossError(f"the loss is {mean_loss} at step {step}; stopping the run ({where}). "
                                         "Try a lower --lr, a higher --temperature, or --no-amp.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)    # norm before clipping
                diagnostics = {**diagnostics, "train/grad_norm": float(norm)}
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses[step] = mean_loss

            elapsed = time.perf_counter() - tick
            window["clips"] += clip.shape[0] * runtime.world_size
            window["wait"] += waited
            window["time"] += elapsed
            window["count"] += 1
            window["loss"] += mean_loss
            for key, value in diagnostics.items():
                window["diag"][key] = window["diag"].get(key, 0.0) + value
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.3f}")
            if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                count = window["count"]
                writer.add_scalar("train/loss", window["loss"] / count, step)  # mean over the window
                for key, value in window["diag"].items():
                    writer.add_scalar(key, value / count, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("speed/clips_per_s", window["clips"] / max(window["time"], 1e-9), step)
                writer.add_scalar("speed/data_wait_share", window["wait"] / max(window["time"], 1e-9), step)
                writer.add_scalar("data/skipped_videos", len(skipped), step)
                window = {"clips": 0, "wait": 0.0, "time": 0.0, "loss": 0.0, "diag": {}, "count": 0}
            if images_now:
                for tag, image in loss_images(clip[0], visuals[0], cfg, getattr(model.encoder, "stride", 8)):
                    writer.add_image(tag, image, step, dataformats="HWC")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if runtime.is_main:
                    atomic_torch_save(checkpoint_dict(cfg, model, optimizer, scaler, scheduler, step, loss_fn),
                                      checkpoint_path)
                last_saved = step
    finally:
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
        stream.close()

    if runtime.is_main:
        first = losses[min(losses)] if losses else float("nan")
        logger.info("done: step %d, loss %.4f -> %.4f; checkpoint: %s (evaluate with: python evaluate.py "
                    "--checkpoint %s)", step, first, losses[max(losses)] if losses else float("nan"),
                    checkpoint_path.resolve(), checkpoint_path)
    return TrainResult(cfg, model, first_step, step, losses, checkpoint_path if last_saved is not None else None,
                       skipped, loss_fn)


def main(argv: Optional[list[str]] = None) -> TrainResult:
    from corr.cli import parse_config

    cfg = parse_config(TrainConfig, argv, description=__doc__)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
