"""The training objectives: one :class:`Objective` per loss name of ``--loss``, in :data:`OBJECTIVES`.

An objective's loss is built from the resolved :class:`corr.train.config.TrainConfig` and
returns ``(loss, {name: float})``. A node loss takes the walk nodes ``(B, T, N, C)``; a frame
loss (``needs_frames``) takes the dense clip ``(B, T, 3, H, W)`` and the shared encoder, so
its runs use ``--mode dense``. A loss with a ``figure`` also accepts ``visuals=True`` and then
returns a third item, the figure data of the batch (node losses: the loop keeps the nodes).

``settings`` are the objective's published options over the CRW reference (its preset
``name``, with ``--data``), ``variants`` further presets ``name-VARIANT`` as changes to that one,
``demo_settings`` its changes to the demo (preset ``name-demo``, built on ``name`` or on the
variant ``demo_base``);
``resume_keys`` are options that fix the shapes of the loss's own weights, so a resumed run
must keep them. A loss that ``takes_flow_pairs`` also receives the batch's ``--flow-data``
pairs (``flow_pairs=``, :class:`datasets.flow_files.FlowPairCrops`, batched). Adding an
objective is a loss module and one entry here: it then mixes with the others
(``--loss crw=1,name=0.5``) and has its presets, figure and resume check.
Setups: docs/objectives.md (CRW, TimeCycle, fine-grained pixel, GMRW).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from corr.encoders import ENCODERS, LAB_ENCODERS, build_encoder, load_checkpoint, reads_lab
from corr.errors import OptionError
from corr.global_match import MATCH_NETS, match_config, seeded_global_match
from corr.losses.cycle import CycleConsistencyLoss
from corr.losses.global_walk import GlobalWalkFrameLoss
from corr.losses.pixel import FinePixelLoss
from corr.losses.walk import ContrastiveRandomWalk
from corr.train.figures import cycle_image, pixel_image, walk_image

#: A resolved :class:`corr.train.config.TrainConfig` (that module builds on this one, so the
#: type is not imported here).
Config = Any

#: ``figure(clip (T, ...), data of that clip, cfg, encoder stride) -> (TensorBoard tag, uint8 HWC image)``
Figure = Callable[[torch.Tensor, dict, Config, int], tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Objective:
    """One training objective (module docstring)."""

    name: str
    summary: str                                       # one line for --help
    build: Callable[[Config], nn.Module]
    needs_frames: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    demo_settings: Mapping[str, Any] = field(default_factory=dict)
    figure: Optional[Figure] = None
    resume_keys: tuple[str, ...] = ()
    check: Optional[Callable[[Config], None]] = None   # raises ValueError for an unusable config
    trained_network: Optional[str] = None              # for the log, when the loss alone trains its own network
    takes_flow_pairs: bool = False                     # forward(..., flow_pairs=) reads --flow-data pairs
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # presets name-VARIANT over name's
    demo_base: Optional[str] = None                    # the variant the demo builds on (None: the preset)

    @property
    def preset(self) -> str:
        return self.name.replace("_", "-")


def encoder_kwargs(name: str, padding: Optional[str] = None) -> dict[str, Any]:
    """Constructor options of the trained encoder: layer4 where it has one (docs/objectives.md, CRW),
    and the convolution ``padding`` (``padding_mode``) where it takes one and it is given."""
    if name not in ENCODERS:
        raise OptionError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}")
    parameters = inspect.signature(ENCODERS[name]).parameters
    kwargs: dict[str, Any] = {"out_layer": "layer4"} if "out_layer" in parameters else {}
    if padding is not None and "padding_mode" in parameters:
        kwargs["padding_mode"] = padding
    return kwargs


def build_cycle_loss(cfg: Config) -> nn.Module:
    """TimeCycle (docs/objectives.md, TimeCycle) on the encoder's layer3, sized for ``crop_size``
    frames. With ``clip_offsets`` (the published layout) the clip's last frame only places the patch."""
    probe = build_encoder(cfg.encoder, **({"out_layer": "layer3"} if encoder_kwargs(cfg.encoder) else {}))
    cells = math.ceil(cfg.crop_size / probe.stride)
    layer = "layer3" if encoder_kwargs(cfg.encoder) else None
    return CycleConsistencyLoss(probe.out_channels, (cells, cells), layer=layer,
                                motion_frame=cfg.clip_offsets is not None)


def check_cycle_clip(cfg: Config) -> None:
    """Base frames and a target (and the motion reference when ``clip_offsets`` are set)."""
    least = 3 if cfg.clip_offsets is not None else 2
    if cfg.clip_len < least:
        raise OptionError(f"--loss cycle needs base frames and a target: at least {least} frames, got {cfg.clip_len}")


def build_pixel_loss(cfg: Config) -> nn.Module:
    """Fine-grained pixel loss (docs/objectives.md, fine-grained pixel) on layer3 of a LAB encoder
    (resnet18-fgvc); ``teacher`` is read with :func:`corr.encoders.load_checkpoint` (its layer3)."""
    teacher = None
    if cfg.teacher is not None:
        teacher, info = load_checkpoint(cfg.teacher)
        if not reads_lab(teacher):
            raise OptionError(f"--teacher {cfg.teacher} holds a {info['encoder']!r} encoder; the pixel loss "
                              f"needs a LAB encoder ({', '.join(LAB_ENCODERS)})")
    return FinePixelLoss(radius=cfg.pixel_radius, rec_weight=cfg.pixel_rec_weight, sup_weight=cfg.pixel_sup_weight,
                         domain_weight=cfg.pixel_domain_weight, layer="layer3", teacher=teacher)


def check_pixel_encoder(cfg: Config) -> None:
    """The pixel loss feeds channel-dropped LAB frames: the encoder must read LAB."""
    if cfg.encoder not in LAB_ENCODERS:
        raise OptionError(f"--loss pixel needs a LAB encoder ({', '.join(LAB_ENCODERS)}), got --encoder {cfg.encoder}")


def build_global_walk_loss(cfg: Config) -> nn.Module:
    """Two-frame global-matching walk with label warping (corr.losses.global_walk). The loss owns
    its network (corr.global_match.GlobalMatchNet, saved under heads/losses); the encoder is unused.

    The network is drawn from its own random stream seeded with ``cfg.seed`` alone
    (:func:`corr.global_match.seeded_global_match`), so its initial weights are those of
    ``evaluate.py --encoder global-match --seed <seed>`` (label propagation with the untrained
    backbone) whatever else the run builds first.
    """
    return GlobalWalkFrameLoss(seeded_global_match(cfg.seed, match_config(cfg.match_net)),
                               smoothness_weight=cfg.smoothness_weight, smoothness_ramp=tuple(cfg.smoothness_ramp),
                               flow_window=cfg.flow_window, size=cfg.walk_crop_size)


def check_global_walk(cfg: Config) -> None:
    """Known network size, two frames, crops whose cell grid splits into the attention windows."""
    if cfg.match_net not in MATCH_NETS:
        raise OptionError(f"--match-net must be one of {', '.join(MATCH_NETS)}, got {cfg.match_net!r}")
    multiple = 4 * MATCH_NETS[cfg.match_net].splits
    size = cfg.walk_crop_size or cfg.crop_size
    if size % multiple:
        raise OptionError(f"--loss global_walk crops of {size} px: the side must be a multiple of {multiple} "
                          f"(stride 4, {MATCH_NETS[cfg.match_net].splits}x{MATCH_NETS[cfg.match_net].splits} "
                          "attention windows); set --walk-crop-size")
    if cfg.walk_crop_size < 0 or cfg.smoothness_weight < 0 or cfg.flow_window < 0:
        raise OptionError("--walk-crop-size, --smoothness-weight and --flow-window must be >= 0")
    ramp = tuple(cfg.smoothness_ramp)
    if ramp and (len(ramp) != 2 or not 0 <= ramp[0] < ramp[1]):
        raise OptionError(f"--smoothness-ramp must be START,END with 0 <= START < END, got {ramp}")


def check_walk_clip(cfg: Config) -> None:
    """A palindrome walk needs 3 frames (2 with the one-step cycle)."""
    least = 2 if cfg.include_one_step else 3
    if cfg.clip_len < least:
        raise OptionError(f"--loss crw walks there and back along the clip: at least {least} frames, got "
                          f"--clip-len {cfg.clip_len}")


def crw_figure(clip: torch.Tensor, data: dict, cfg: Config, stride: int) -> tuple[str, np.ndarray]:
    return f"walk/frame0_to_frame{cfg.clip_len - 1}", walk_image(clip, data["nodes"], cfg.mode, stride)


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in [
    Objective(
        "crw", "contrastive random walk over the walk nodes (docs/objectives.md, CRW)",
        lambda cfg: ContrastiveRandomWalk(cfg.temperature, cfg.edge_dropout, cfg.include_one_step,
                                          cfg.shared_edge_mask),
        figure=crw_figure, check=check_walk_clip),
    # TimeCycle (the authors' training script and VLOG loader): ResNet-50 at stride 8 (layer3,
    # 1024-d, under the loss's 1x1 conv to 512) with zero padding; Adam lr 2e-4 (constant),
    # betas (0.5, 0.999), gradient norm clipped at 10; frames of a 12 fps source, base frames s,
    # s+2, s+4, s+6, the target s+15 and s+17 for the motion that places the patch; short side
    # resized to 256, one 240 px crop and one flip for the whole clip. The demo's generated
    # sequences (24 frames) are too short for 12 fps steps of a 24 fps frame folder (35
    # frames): there each generated frame is one step, and its 64 px crops come from a 68 px
    # short side (240 / 256 of it).
    Objective(
        "cycle", "TimeCycle cycle consistency of a tracked patch (docs/objectives.md, TimeCycle)",
        build_cycle_loss, needs_frames=True,
        settings={"encoder": "resnet50", "padding": "zeros", "lr": 2e-4, "lr_milestones": (), "betas": (0.5, 0.999),
                  "grad_clip": 10.0, "fps": 12.0, "clip_offsets": (0, 2, 4, 6, 15, 17), "clip_len": 6,
                  "same_crop": True, "flip": True, "crop_size": 240, "short_side": 256},
        demo_settings={"frame_skip": 1, "short_side": 68},
        figure=lambda clip, data, cfg, stride: ("cycle/tracked_patch", cycle_image(clip, data)),
        resume_keys=("crop_size",), check=check_cycle_clip),
    # FGVC's released configuration: ResNet-18 at stride 2 reading LAB, radius 24, weights 1 / 1 / 1,
    # Adam lr 1e-3 annealed by a cosine to lr/1000 per iteration, one clip per process (their 4
    # GPUs x 1), 2-frame clips of consecutive YouTube-VOS frames (6 fps), one random resized crop
    # per clip (areas 0.6-1, aspect 1.5-2, mmaction's tries) resized to 256 px, a flip, and a
    # blur with probability 0.8 (datasets/augment.py).
    Objective(
        "pixel", "fine-grained pixel features: LAB reconstruction, teacher-supervised warped pairs, "
        "domain term (docs/objectives.md, fine-grained pixel)",
        build_pixel_loss, needs_frames=True,
        settings={"encoder": "resnet18-fgvc", "lr": 1e-3, "lr_schedule": "cosine", "lr_milestones": (),
                  "betas": (0.9, 0.999), "batch_size": 1, "clip_len": 2, "fps": 6.0, "same_crop": True, "flip": True,
                  "crop_size": 256, "crop_area": (0.6, 1.0), "crop_aspect": (1.5, 2.0), "crop_style": "mmaction",
                  "blur": 0.8},
        demo_settings={"batch_size": 2},
        figure=lambda clip, data, cfg, stride: ("pixel/warped_pair", pixel_image(clip, data)),
        resume_keys=("pixel_radius", "pixel_domain_weight"), check=check_pixel_encoder, takes_flow_pairs=True),
    # GMRW (the authors' train_kinetics.sh and finetune script): GMFlow network, AdamW lr 4e-5 (their
    # script multiplies it by the number of GPUs) with weight decay 1e-4, gradient norm clipped at
    # 20, pairs of frames 20 apart, 640 px frames cut into 512 px crops, one pair per process.
    # Fine-tuning: lr 4e-6, the smoothness weight ramped from 0 at step 141k to 1 at 151k, and
    # the weighted argmax within 20 cells (resume a global-walk run with this preset). ``small``
    # is the CPU run: the small network, 128 px frames and 64 px crops of pairs 5 frames apart,
    # 4 pairs per step at their 4-GPU rate (4 x 4e-5).
    Objective(
        "global_walk", "two-frame global-matching walk with label warping; trains its own network "
        "(docs/objectives.md, GMRW)",
        build_global_walk_loss, needs_frames=True,
        settings={"lr_milestones": (), "optimizer": "adamw", "weight_decay": 1e-4, "lr": 4e-5, "grad_clip": 20.0,
                  "batch_size": 1, "clip_len": 2, "frame_skip": 20, "same_crop": True,
                  "crop_size": 640, "walk_crop_size": 512, "match_net": "gmflow"},
        variants={"finetune": {"lr": 4e-6, "smoothness_weight": 1.0, "smoothness_ramp": (141000, 151000),
                               "flow_window": 20.0},
                  "small": {"match_net": "small", "crop_size": 128, "walk_crop_size": 64, "frame_skip": 5,
                            "batch_size": 4, "lr": 1.6e-4}},
        demo_base="small", demo_settings={"walk_crop_size": 0},
        resume_keys=("match_net",), check=check_global_walk,
        trained_network="the global-match network (corr.global_match; --encoder unused)"),
]}


def parse_loss_spec(spec: str) -> dict[str, float]:
    """``"crw"`` -> ``{"crw": 1.0}``; ``"crw=1,other=0.5"`` -> ``{"crw": 1.0, "other": 0.5}``."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in OBJECTIVES:
            raise OptionError(f"--loss: unknown loss {name!r} in {spec!r}; known losses: {', '.join(OBJECTIVES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise OptionError(f"--loss: weight of {name!r} must be a number, got {weight!r}") from None
    if not weights:
        raise OptionError(f"--loss: no loss named in {spec!r}; known losses: {', '.join(OBJECTIVES)}")
    return weights


def trained_network_name(cfg: Config) -> str:
    """What the run trains, for the log: the encoder, or the network a loss owns when only it is trained."""
    names = list(parse_loss_spec(cfg.loss))
    own = OBJECTIVES[names[0]].trained_network if len(names) == 1 else None
    return own or cfg.encoder


def loss_images(clip: torch.Tensor, visuals: dict[str, dict], cfg: Config, stride: int
                ) -> list[tuple[str, np.ndarray]]:
    """``(TensorBoard tag, uint8 HWC image)`` per loss that returned figure data for clip 0 of
    the batch (``clip`` is that clip; ``visuals`` holds the batch's data, ``{name: {key: (B, ...)}}``)."""
    images = []
    for name, data in visuals.items():
        figure = OBJECTIVES[name].figure
        if figure is not None and data:
            images.append(figure(clip, {k: v[0] for k, v in data.items()}, cfg, stride))
    return images
