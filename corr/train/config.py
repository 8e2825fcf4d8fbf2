"""Training configuration: :class:`TrainConfig` and the named presets it starts from.

A preset is a complete configuration. ``crw`` is the CRW reference (docs/objectives.md, CRW):
Adam, lr 1e-4 multiplied by 0.3 at epochs 20, 30 and 40 (stepped per iteration), 4-frame clips
sampled at 8 fps, up to 5 clips per video per epoch, tau 0.05, edge dropout 0.1 with the
backward walk keeping the forward walk's dropped edges, no feature dropout, a linear head, a
7x7 grid of 64x64 patches from 256x256 crops, no colour jitter or flip, batch 20 (per process:
``torchrun`` with G processes trains G x batch_size clips per step), 25 epochs (``steps`` none).
``crw-demo`` is the run without ``--data``: 150 steps of batch 2, dense nodes on 64x64 crops.
Every objective ``name`` of :data:`corr.train.objectives.OBJECTIVES` has the preset ``name``
(``crw`` with its published settings, dense nodes for a frame loss) and ``name-demo`` (that
with the demo's changes).

:func:`resolve_config` picks the preset: ``--preset NAME``, else the single ``--loss``
objective's (a mix keeps the walk's, so adding a term to a walk run changes only the loss),
``-demo`` without ``--data``. Options given (not ``None``) override the preset; options left
out (or given as ``none``) never do. Given ``clip_offsets`` set ``clip_len``; a given ``fps``
drops the preset's ``frame_skip``; a frame loss makes the nodes dense unless ``mode`` is given.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from corr.errors import OptionError
from corr.graph import GRAPH_MODES
from corr.train.objectives import OBJECTIVES, parse_loss_spec
from datasets.augment import CROP_STYLES

#: Convolution paddings of the trained encoder (``--padding``).
PADDINGS = ("reflect", "zeros")
#: Epochs of a preset run whose ``steps`` are none (known once the dataset is indexed).
EPOCHS = 25
#: The smallest ``crop_size``: two feature cells at stride 8.
MIN_CROP_SIZE = 16


@dataclass
class TrainConfig:
    """Contrastive random walk training (Jabri et al. 2020) and the other objectives. Options at
    ``None`` take the preset's value (:func:`resolve_config`)."""

    preset: Optional[str] = field(default=None, metadata={
        "help": "named configuration, listed above (none: the --loss objective's; NAME-demo without --data)"})
    data: Optional[str] = field(default=None, metadata={
        "help": "folder of videos, list file or frame folders; none: the demo's generated clips"})
    flow_data: Optional[str] = field(default=None, metadata={
        "help": "FlyingThings3D root (frames_cleanpass/, optical_flow/): the pixel loss's supervised and domain "
                "terms take its pairs and flows instead of warps of the clip's first frame"})
    out: str = field(default="runs/crw", metadata={"help": "run folder (checkpoint.pt, TensorBoard logs)"})
    steps: Optional[int] = field(default=None, metadata={
        "help": f"optimisation steps (none in a preset: {EPOCHS} epochs)"})
    batch_size: Optional[int] = field(default=None, metadata={"help": "clips per step per process"})
    clip_len: Optional[int] = field(default=None, metadata={
        "help": "frames per clip (given --clip-offsets: their number)"})
    fps: Optional[float] = field(default=None, metadata={"help": "clip frame rate, sets the frame skip"})
    frame_skip: Optional[int] = field(default=None, metadata={
        "help": "source frames between clip frames (overrides fps)"})
    clip_offsets: Optional[tuple[int, ...]] = field(default=None, metadata={
        "help": "clip frames as offsets in frame skips, e.g. 0,2,4,6,15,17 (none in a preset: evenly spaced)"})
    same_crop: Optional[bool] = field(default=None, metadata={
        "help": "one random crop for the whole clip (off: each frame its own)"})
    flip: Optional[bool] = field(default=None, metadata={"help": "mirror the whole clip with probability 1/2"})
    frame_flip: Optional[bool] = field(default=None, metadata={
        "help": "mirror each frame on its own with probability 1/2 (CRW's flip frame transform)"})
    color_jitter: Optional[float] = field(default=None, metadata={
        "help": "per-frame brightness, contrast and saturation jitter of this strength (CRW's cj: 0.1; 0: off)"})
    crop_area: Optional[tuple[float, ...]] = field(default=None, metadata={
        "help": "random resized crops: range of the crop's area fraction, e.g. 0.8,0.95 (CRW) or 0.6,1 (FGVC)"})
    crop_aspect: Optional[tuple[float, ...]] = field(default=None, metadata={
        "help": "random resized crops: range of the crop's width / height, e.g. 0.7,1.3 (CRW) or 1.5,2 (FGVC)"})
    crop_style: Optional[str] = field(default=None, metadata={
        "help": "random resized crops: torchvision (10 tries, clamped centre crop; CRW) or mmaction (20 tries, "
                "centred square; FGVC)"})
    blur: Optional[float] = field(default=None, metadata={
        "help": "probability of a Gaussian blur of radius U(0.1, 0.2) px for the whole clip (FGVC: 0.8; 0: off)"})
    short_side: Optional[int] = field(default=None, metadata={
        "help": "0: random resized crops; N: resize the short side to N px and cut one crop-size crop per clip "
                "(TimeCycle)"})
    clips_per_video: Optional[int] = field(default=None, metadata={"help": "clips per video per epoch"})
    mode: Optional[str] = field(default=None, metadata={
        "help": "nodes: grid (7x7 patches) or dense (feature cells)"})
    crop_size: Optional[int] = field(default=None, metadata={"help": "per-frame RandomResizedCrop size"})
    loss: Optional[str] = field(default=None, metadata={
        "help": f"loss name or name=weight,... over one encoder (known: {', '.join(OBJECTIVES)})"})
    optimizer: Optional[str] = field(default=None, metadata={"help": "adam or adamw (decoupled weight decay)"})
    weight_decay: Optional[float] = field(default=None, metadata={"help": "AdamW weight decay (adam: none)"})
    lr: Optional[float] = field(default=None, metadata={"help": "learning rate"})
    lr_schedule: Optional[str] = field(default=None, metadata={
        "help": "step (the --lr-milestones; none: constant), or cosine: per step from lr down to lr/1000 at "
                "the last step"})
    lr_milestones: Optional[tuple[int, ...]] = field(default=None, metadata={
        "help": "step schedule: epochs after which the rate is multiplied by --lr-gamma, stepped per iteration "
                "(empty: constant)"})
    lr_gamma: Optional[float] = field(default=None, metadata={"help": "learning-rate factor at each milestone"})
    betas: Optional[tuple[float, ...]] = field(default=None, metadata={"help": "Adam betas"})
    grad_clip: Optional[float] = field(default=None, metadata={"help": "clip the gradient norm to this (0: off)"})
    temperature: Optional[float] = field(default=None, metadata={"help": "walk temperature tau"})
    edge_dropout: Optional[float] = field(default=None, metadata={"help": "edge dropout probability"})
    shared_edge_mask: Optional[bool] = field(default=None, metadata={
        "help": "the backward walk keeps the edges the forward walk dropped (CRW's code) and drops its own too"})
    featdrop: Optional[float] = field(default=None, metadata={
        "help": "dropout probability on the encoder's feature maps before pooling (CRW's --featdrop)"})
    include_one_step: Optional[bool] = field(default=None, metadata={"help": "also train the one-step cycle k=1"})
    pixel_radius: Optional[int] = field(default=None, metadata={
        "help": "pixel loss: half-size R of the local window, in feature cells ((2R+1)^2 displacements)"})
    pixel_rec_weight: Optional[float] = field(default=None, metadata={
        "help": "pixel loss: weight of the LAB colour reconstruction term (0: off)"})
    pixel_sup_weight: Optional[float] = field(default=None, metadata={
        "help": "pixel loss: weight of the teacher-supervised term on warped pairs (0: off)"})
    pixel_domain_weight: Optional[float] = field(default=None, metadata={
        "help": "pixel loss: weight of the gradient-reversal domain term, warped vs real pairs (0: off)"})
    teacher: Optional[str] = field(default=None, metadata={
        "help": "pixel loss: checkpoint of the frozen teacher of the supervised term (none: the trained "
                "encoder itself, detached)"})
    match_net: Optional[str] = field(default=None, metadata={
        "help": "global_walk: size of its network, gmflow (the authors') or small (corr.global_match.MATCH_NETS)"})
    walk_crop_size: Optional[int] = field(default=None, metadata={
        "help": "global_walk: side of its two random resized crops of each clip (0: the clip's short side)"})
    smoothness_weight: Optional[float] = field(default=None, metadata={
        "help": "global_walk: weight of the edge-aware flow smoothness (0: off)"})
    smoothness_ramp: Optional[tuple[int, ...]] = field(default=None, metadata={
        "help": "global_walk: START,END steps over which the smoothness weight ramps from 0 (empty: constant)"})
    flow_window: Optional[float] = field(default=None, metadata={
        "help": "global_walk: keep transitions within this many cells of each row's argmax (weighted argmax; "
                "0: off)"})
    encoder: Optional[str] = field(default=None, metadata={"help": "encoder name, corr.encoders.ENCODERS"})
    head_dim: Optional[int] = field(default=None, metadata={"help": "node embedding size"})
    head_depth: Optional[int] = field(default=None, metadata={
        "help": "hidden layers of the walk head's MLP (0: linear; -1: no head, the encoder's channels)"})
    padding: Optional[str] = field(default=None, metadata={
        "help": "the encoder's convolution padding: reflect (CRW) or zeros (TimeCycle, torchvision)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: Optional[bool] = field(default=None, metadata={"help": "mixed precision (none: on with CUDA; CUDA only)"})
    sync_bn: bool = field(default=False, metadata={"help": "SyncBatchNorm under DDP"})
    channels_last: bool = field(default=False, metadata={
        "help": "keep the encoder's weights and activations channels-last (NHWC); the same losses"})
    compile: bool = field(default=False, metadata={
        "help": "compile the encoder with torch.compile (needs a C++ compiler on the CPU); the same losses"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_workers: Optional[int] = field(default=None, metadata={"help": "DataLoader worker processes per process"})
    checkpoint_every: Optional[int] = field(default=None, metadata={"help": "steps between checkpoints"})
    log_every: Optional[int] = field(default=None, metadata={"help": "steps between TensorBoard scalars"})
    image_every: Optional[int] = field(default=None, metadata={"help": "steps between loss images (0: never)"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/checkpoint.pt"})
    overwrite: bool = field(default=False, metadata={
        "help": "start over in an --out that holds a run (its checkpoint, config and logs are replaced)"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "folder for the video index cache"})
    backend: str = field(default="auto", metadata={"help": "video decoder: auto, decord or opencv"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    debug: bool = field(default=False, metadata={"help": "show the traceback of an error"})


#: Options that say where and how a run executes, not what it trains: no preset sets them.
RUN_OPTIONS = ("preset", "data", "flow_data", "out", "device", "amp", "sync_bn", "channels_last", "compile", "seed",
               "resume", "overwrite", "cache_dir", "backend", "progress", "debug")
#: The options a preset sets (``None`` in ``TrainConfig()``).
SETUP_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_OPTIONS)

CRW = TrainConfig(
    preset="crw", loss="crw", encoder="resnet18-crw", head_dim=128, mode="grid", crop_size=256,
    clip_len=4, fps=8.0, frame_skip=None, clip_offsets=None, clips_per_video=5, same_crop=False, flip=False,
    frame_flip=False, color_jitter=0.0, crop_area=(0.8, 0.95), crop_aspect=(0.7, 1.3), crop_style="torchvision",
    blur=0.0, short_side=0, head_depth=0, padding="reflect",
    temperature=0.05, edge_dropout=0.1, shared_edge_mask=True, featdrop=0.0, include_one_step=False,
    pixel_radius=24, pixel_rec_weight=1.0, pixel_sup_weight=1.0, pixel_domain_weight=1.0, teacher=None,
    steps=None, batch_size=20, lr=1e-4, lr_schedule="step", lr_milestones=(20, 30, 40), lr_gamma=0.3,
    betas=(0.9, 0.999), grad_clip=0.0, optimizer="adam", weight_decay=0.0,
    match_net="gmflow", walk_crop_size=0, smoothness_weight=0.0, smoothness_ramp=(), flow_window=0.0,
    num_workers=4, checkpoint_every=500, log_every=20, image_every=500)

#: The demo's changes to a preset: finishes in minutes on a 2-core CPU (a 9x9-cell pixel window).
DEMO = {"steps": 150, "batch_size": 2, "mode": "dense", "crop_size": 64, "checkpoint_every": 50,
        "log_every": 10, "image_every": 50, "num_workers": 1, "pixel_radius": 4}
#: Learning-rate schedules (``lr_schedule``).
LR_SCHEDULES = ("step", "cosine")
#: Optimisers (``optimizer``).
OPTIMIZERS = ("adam", "adamw")


def presets() -> dict[str, TrainConfig]:
    """Every named preset: ``name`` and ``name-demo`` per objective (``crw`` and ``crw-demo`` first),
    and an objective's ``name-VARIANT`` (its ``variants``; the demo builds on its ``demo_base``)."""
    table = {}
    for objective in OBJECTIVES.values():
        nodes = {"mode": "dense"} if objective.needs_frames else {}
        name = objective.preset
        table[name] = dataclasses.replace(CRW, **{"preset": name, "loss": objective.name, **nodes,
                                                 **objective.settings})
        for variant, settings in objective.variants.items():
            table[f"{name}-{variant}"] = dataclasses.replace(table[name], **{"preset": f"{name}-{variant}",
                                                                          **settings})
        base = table[f"{name}-{objective.demo_base}"] if objective.demo_base else table[name]
        table[f"{name}-demo"] = dataclasses.replace(base, **{"preset": f"{name}-demo", **DEMO,
                                                              **objective.demo_settings})
    return table


def given_options(cfg: TrainConfig) -> dict[str, Any]:
    """The options of ``cfg`` that are set (not ``None``)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None}


def preset_name(cfg: TrainConfig) -> str:
    """``--preset``, else the single ``--loss`` objective's preset (``crw`` for a mix), ``-demo`` without data."""
    if cfg.preset is not None:
        return cfg.preset
    names = list(parse_loss_spec(cfg.loss if cfg.loss is not None else "crw"))
    name = OBJECTIVES[names[0]].preset if len(names) == 1 else "crw"
    return name if cfg.data is not None else f"{name}-demo"


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """The preset of ``cfg`` (:func:`preset_name`) with the options ``cfg`` sets, completed and checked.

    ``steps`` stays ``None`` in a preset with data (``EPOCHS`` epochs, known once the dataset is
    indexed). ``clip_len`` is the number of ``clip_offsets`` when those are given.
    """
    given = given_options(cfg)
    name = preset_name(cfg)
    table = presets()
    if name not in table:
        raise OptionError(f"--preset: unknown preset {name!r}; known presets: {', '.join(table)}")
    losses = parse_loss_spec(given.get("loss", table[name].loss))
    cfg = dataclasses.replace(table[name], **{**given, "preset": name})
    if "fps" in given and "frame_skip" not in given:
        cfg = dataclasses.replace(cfg, frame_skip=None)                      # an explicit rate wins
    if "mode" not in given and any(OBJECTIVES[loss].needs_frames for loss in losses):
        cfg = dataclasses.replace(cfg, mode="dense")                         # frame losses read whole frames
    cfg = _resolve_clip_frames(cfg, given, table[name].loss)
    check_config(cfg, losses)
    return dataclasses.replace(cfg, betas=tuple(float(b) for b in cfg.betas),
                               lr_milestones=tuple(int(m) for m in cfg.lr_milestones))


def _resolve_clip_frames(cfg: TrainConfig, given: dict[str, Any], preset_loss: str) -> TrainConfig:
    """``clip_len`` from ``clip_offsets`` (which must be >= 0 and strictly increasing)."""
    if cfg.clip_offsets is None:
        return cfg
    offsets = tuple(int(o) for o in cfg.clip_offsets)
    if "clip_len" in given and cfg.clip_len != len(offsets):
        hint = "" if "clip_offsets" in given else (
            f" (--loss {preset_loss} samples the frames {','.join(map(str, offsets))}; "
            "give --clip-offsets instead, e.g. 0,1,2 for evenly spaced frames)")
        raise OptionError(f"--clip-len {cfg.clip_len} does not match --clip-offsets {offsets}{hint}")
    if not offsets or offsets[0] < 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise OptionError(f"--clip-offsets must be >= 0 and strictly increasing, got {offsets}")
    return dataclasses.replace(cfg, clip_offsets=offsets, clip_len=len(offsets))


def check_config(cfg: TrainConfig, losses: dict[str, float]) -> None:
    """Raise ``ValueError`` naming the first option out of range (then the objectives' own checks)."""
    if cfg.mode not in GRAPH_MODES:
        raise OptionError(f"--mode must be one of {GRAPH_MODES}, got {cfg.mode!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise OptionError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    at_least = {"batch_size": 1, "clip_len": 1, "checkpoint_every": 1, "log_every": 1, "clips_per_video": 1,
                "head_dim": 1, "image_every": 0, "num_workers": 0, "crop_size": MIN_CROP_SIZE}
    if cfg.steps is not None:
        at_least["steps"] = 1
    if cfg.frame_skip is not None:
        at_least["frame_skip"] = 1
    for name, least in at_least.items():
        if getattr(cfg, name) < least:
            raise OptionError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(cfg, name)}")
    if cfg.fps is not None and not cfg.fps > 0:
        raise OptionError(f"--fps must be > 0, got {cfg.fps}")
    if not cfg.temperature > 0 or not 0 <= cfg.edge_dropout < 1:
        raise OptionError(f"--temperature must be > 0 and --edge-dropout in [0, 1), got {cfg.temperature} and "
                          f"{cfg.edge_dropout}")
    if cfg.pixel_radius < 1 or min(cfg.pixel_rec_weight, cfg.pixel_sup_weight, cfg.pixel_domain_weight) < 0:
        raise OptionError(f"--pixel-radius must be >= 1 and the --pixel-*-weight options >= 0, got "
                          f"{cfg.pixel_radius}, {cfg.pixel_rec_weight}, {cfg.pixel_sup_weight} and "
                          f"{cfg.pixel_domain_weight}")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise OptionError(f"--lr-schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")
    if cfg.lr_schedule == "cosine" and cfg.lr_milestones:
        raise OptionError(f"--lr-milestones belong to --lr-schedule step, not cosine; got {cfg.lr_milestones}")
    if cfg.optimizer not in OPTIMIZERS or cfg.weight_decay < 0:
        raise OptionError(f"--optimizer must be one of {OPTIMIZERS} and --weight-decay >= 0, got {cfg.optimizer!r} "
                          f"and {cfg.weight_decay}")
    if cfg.weight_decay and cfg.optimizer != "adamw":
        raise OptionError(f"--weight-decay {cfg.weight_decay} is AdamW's; give --optimizer adamw")
    if not cfg.lr > 0 or cfg.grad_clip < 0:
        raise OptionError(f"--lr must be > 0 and --grad-clip >= 0, got {cfg.lr} and {cfg.grad_clip}")
    if any(m < 0 for m in cfg.lr_milestones) or not cfg.lr_gamma > 0:
        raise OptionError(f"--lr-milestones must be >= 0 and --lr-gamma > 0, got {cfg.lr_milestones} and "
                          f"{cfg.lr_gamma}")
    if not 0 <= cfg.featdrop < 1 or cfg.head_depth < -1 or cfg.color_jitter < 0 or cfg.short_side < 0:
        raise OptionError(f"need 0 <= --featdrop < 1, --head-depth >= -1, --color-jitter >= 0 and --short-side >= 0; "
                         f"got {cfg.featdrop}, {cfg.head_depth}, {cfg.color_jitter}, {cfg.short_side}")
    for name in ("crop_area", "crop_aspect"):
        low_high = getattr(cfg, name)
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1] or (name == "crop_area" and low_high[1] > 1):
            raise OptionError(f"--{name.replace('_', '-')} must be two numbers 0 < low <= high"
                              f"{' <= 1' if name == 'crop_area' else ''}, got {low_high}")
    if cfg.crop_style not in CROP_STYLES:
        raise OptionError(f"--crop-style must be one of {', '.join(CROP_STYLES)}, got {cfg.crop_style!r}")
    if not 0 <= cfg.blur <= 1:
        raise OptionError(f"--blur is a probability in [0, 1], got {cfg.blur}")
    if cfg.padding not in PADDINGS:
        raise OptionError(f"--padding must be one of {PADDINGS}, got {cfg.padding!r}")
    if 0 < cfg.short_side < cfg.crop_size:
        raise OptionError(f"--short-side {cfg.short_side} is smaller than --crop-size {cfg.crop_size}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise OptionError(f"--betas must be two numbers in [0, 1), got {cfg.betas}")
    for loss in losses:
        if OBJECTIVES[loss].check is not None:
            OBJECTIVES[loss].check(cfg)
    if cfg.flow_data is not None and not any(OBJECTIVES[loss].takes_flow_pairs for loss in losses):
        users = ", ".join(o.name for o in OBJECTIVES.values() if o.takes_flow_pairs)
        raise OptionError(f"--flow-data feeds flow pairs to --loss {users}; --loss {cfg.loss} does not use them")
    frame_losses = sorted(loss for loss in losses if OBJECTIVES[loss].needs_frames)
    if frame_losses and cfg.mode != "dense":
        raise OptionError(f"--loss {','.join(frame_losses)} needs whole frames: use --mode dense, not {cfg.mode!r}")
