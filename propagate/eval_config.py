"""The options of ``evaluate.py``: one dataclass every task and the runner read.

:class:`EvalConfig` holds every command-line option (``corr.cli`` turns its fields into
``--options``); the task fills in its defaults (input size, split, output folder) with
:meth:`propagate.task.Task.configure`, which also calls :meth:`EvalConfig.validate`.
Derived settings: :meth:`EvalConfig.propagation` (the preset with overrides, see
docs/propagation.md), :meth:`EvalConfig.adaptation` (test-time adaptation) and
:meth:`EvalConfig.flow_tracking` (the TAP-Vid walk tracker, docs/benchmarks.md, TAP-Vid).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from corr.adapt import AdaptConfig
from corr.errors import OptionError
from corr.flow_track import FlowTrackConfig

from .cache import CACHE_DTYPES
from .config import PropagationConfig
from .labels import KEYPOINT_ENCODINGS, POINT_DECODINGS

#: The encoder of a run without ``--encoder`` and ``--checkpoint``.
DEFAULT_ENCODER = "resnet18-crw"


@dataclass
class EvalConfig:
    """Evaluate an encoder by label propagation on a benchmark."""

    task: str = dataclasses.field(default="davis", metadata={"help": "benchmark"})
    data_root: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "dataset: DAVIS / VIP_Fine folder, JHMDB folder or split file, TAP-Vid "
                                        ".pkl or Kinetics folder; default data/<DAVIS|JHMDB|VIP|tapvid_davis.pkl>, "
                                        "else a generated synthetic set"})
    split: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "split name or path to a split .txt (default: davis/vip val, jhmdb "
                                        "splits/test_split1.txt under the data root)"})
    resolution: str = dataclasses.field(default="480p", metadata={"help": "DAVIS: 480p or Full-Resolution"})
    binary_masks: bool = dataclasses.field(
        default=False, metadata={"help": "DAVIS: annotations are binary masks saved as 0/255; read 255 as object 1 "
                                         "(not void)"})
    input_size: Optional[tuple[int, ...]] = dataclasses.field(
        default=None, metadata={"help": "H,W frames are resized to (default: jhmdb 320,320; vip 560,560; "
                                        "tapvid 256,256; davis native only)"})
    query_mode: str = dataclasses.field(default="strided", metadata={"help": "TAP-Vid queries: first|strided"})
    keypoint_encoding: str = dataclasses.field(
        default="sub-cell", metadata={"help": "JHMDB joints: sub-cell (Gaussian at the joint's sub-cell position) | "
                                              "reference (CRW's integer-cell window and decoding)"})
    point_decoding: str = dataclasses.field(
        default="window", metadata={"help": "TAP-Vid query heatmaps: window (sub-cell Gaussian, windowed mean on the "
                                            "grid) | fgvc (FGVC's 6 px Gaussian, top-5 pixels at image resolution)"})
    tracker: str = dataclasses.field(
        default="propagation", metadata={"help": "TAP-Vid tracker: propagation (label propagation of --encoder "
                                                 "features) | walk (chained flows of a global-matching "
                                                 "--checkpoint, corr.flow_track)"})
    video: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "--task video: the video file or frame folder to propagate through"})
    mask: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "--task video: the mask to propagate, a PNG of the video's size: indexed "
                                        "(ids kept), binary/grey (thresholded at half) or colours (one id each)"})
    mask_frame: int = dataclasses.field(default=0, metadata={"help": "--task video: the frame --mask is of"})
    points: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "--task video: points to track instead of a mask, 'x,y;x,y' pixels of "
                                        "the video's frames"})
    points_frame: int = dataclasses.field(default=0, metadata={"help": "--task video: the frame --points are on"})
    max_side: Optional[int] = dataclasses.field(
        default=None, metadata={"help": "--task video: downscale frames whose long side is longer (default 854; "
                                        "DINO's frame protocol sizes frames itself)"})
    sequences: Optional[tuple[str, ...]] = dataclasses.field(
        default=None, metadata={"help": "comma-separated subset of the split's sequences"})
    encoder: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "encoder name (corr.encoders.ENCODERS, e.g. dino-vits16) or "
                                        "package.module:function returning an nn.Module with a stride (default: the "
                                        f"one --checkpoint holds, else {DEFAULT_ENCODER}; one that differs from the "
                                        "checkpoint's is an error)"})
    checkpoint: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "our checkpoint or a published one (docs/model-zoo.md); the encoder is "
                                        "read from the file"})
    checkpoint_format: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "layout of --checkpoint / --weights (corr.encoders.CHECKPOINT_FORMATS); "
                                        "default: recognised from the file"})
    weights: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "local weights for --encoder: torchvision ImageNet, DINO / DINOv2 files"})
    preset: str = dataclasses.field(default="crw", metadata={"help": "propagation preset"})
    context: Optional[int] = dataclasses.field(default=None, metadata={"help": "override: short-memory frames"})
    topk: Optional[int] = dataclasses.field(default=None, metadata={"help": "override: top-k"})
    temperature: Optional[float] = dataclasses.field(default=None, metadata={"help": "override: softmax temperature"})
    radius: Optional[float] = dataclasses.field(
        default=None, metadata={"help": "override: radius in cells (inf = none)"})
    pad_with_first: Optional[bool] = dataclasses.field(default=None, metadata={"help": "override: pad with frame 0"})
    normalize_features: Optional[bool] = dataclasses.field(
        default=None, metadata={"help": "override: L2-normalise features per position (cosine affinity)"})
    label_norm: Optional[str] = dataclasses.field(default=None, metadata={"help": "override: none|minmax"})
    neighbourhood: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "override: disk (distance < radius) | square (|dy|, |dx| <= radius)"})
    restrict_first: Optional[bool] = dataclasses.field(
        default=None, metadata={"help": "override: the neighbourhood limits frame 0 too"})
    output_norm: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "override: none|minmax per channel of the upsampled output (DAVIS)"})
    frames: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "override: common|dino, DAVIS frame sizes and label resampling "
                                        "(docs/propagation.md)"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto|cpu|cuda[:i]"})
    out: Optional[str] = dataclasses.field(default=None, metadata={"help": "output folder (default results/<task>)"})
    vis: bool = dataclasses.field(default=False, metadata={"help": "write overlay videos and contact sheets"})
    report: bool = dataclasses.field(
        default=False, metadata={"help": "write an HTML report to <out>/report/index.html (python -m propagate.report "
                                        "<out> rebuilds it)"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "frames per feature-extraction batch"})
    overwrite: bool = dataclasses.field(default=False, metadata={
        "help": "redo sequences already scored in --out; replace results of other settings there"})
    debug: bool = dataclasses.field(default=False, metadata={"help": "show the traceback of an error"})
    tta_steps: int = dataclasses.field(
        default=0, metadata={"help": "test-time adaptation: walk steps per video (0: off)"})
    tta_window: int = dataclasses.field(
        default=10, metadata={"help": "test-time adaptation: clip frames within W of a time"})
    tta_lr: float = dataclasses.field(default=1e-4, metadata={"help": "test-time adaptation: Adam learning rate"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of a random-init encoder and of adaptation"})
    cache: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "feature cache folder (propagate.cache); not used with --tta-steps"})
    cache_dtype: str = dataclasses.field(
        default="float32", metadata={"help": "feature cache storage: float32 (exact) | float16 (half the disk)"})
    cache_topk: int = dataclasses.field(
        default=0, metadata={"help": "matches per query kept in the cache (at least the setting's top-k); a sweep "
                                     "keeps its largest top-k"})
    walk_setting: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: chained (consecutive pairs) or direct (query frame to every "
                                        "frame) (default: corr.flow_track.FlowTrackConfig)"})
    flow_method: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: weighted_sum (whole frame) or weighted_argmax (within "
                                        "--window-threshold cells of the argmax)"})
    window_threshold: Optional[float] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: the weighted argmax's radius in cells"})
    upsample_factor: Optional[int] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: upsample frames by this before the network (the "
                                        "published best numbers use 4)"})
    occlusion_threshold: Optional[float] = dataclasses.field(
        default=None, metadata={"help": "--tracker walk: forward-backward distance in pixels from which a point "
                                        "is occluded (default: corr.flow_track.FlowTrackConfig)"})
    sweep: Optional[str] = dataclasses.field(
        default=None, metadata={"help": "evaluate every combination, e.g. 'topk=5,10,20 radius=12,24' or "
                                        "'preset=crw,dino'; with --tracker walk 'upsample_factor=1,2' "
                                        "(results under <out>/sweep/<setting>/)"})

    def adaptation(self) -> AdaptConfig:
        """Test-time adaptation settings (:mod:`corr.adapt`); ``steps == 0`` is off."""
        return AdaptConfig(steps=self.tta_steps, window=self.tta_window, lr=self.tta_lr, seed=self.seed)

    def propagation(self) -> PropagationConfig:
        """The preset with this run's overrides (``--radius inf`` removes the locality limit)."""
        overrides = {name: getattr(self, name) for name in PROPAGATION_OVERRIDES
                     if name != "radius" and getattr(self, name) is not None}
        if self.radius is not None:
            overrides["radius"] = None if math.isinf(self.radius) else self.radius
        return PropagationConfig.preset(self.preset, **overrides)

    def flow_tracking(self) -> FlowTrackConfig:
        """The walk tracker's settings (:class:`corr.flow_track.FlowTrackConfig` with this run's overrides)."""
        overrides = {name: getattr(self, name) for name in WALK_SETTINGS if getattr(self, name) is not None}
        return FlowTrackConfig(**overrides)

    def validate(self) -> "EvalConfig":
        """Check the options every task shares (the task checks its own, :meth:`propagate.task.Task.configure`)."""
        at_least = {"batch_size": 1, "tta_steps": 0, "tta_window": 1, "cache_topk": 0}
        for name, least in at_least.items():
            if getattr(self, name) < least:
                raise OptionError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(self, name)}")
        if not self.tta_lr > 0:
            raise OptionError(f"--tta-lr must be > 0, got {self.tta_lr}")
        if self.cache_dtype not in CACHE_DTYPES:
            raise OptionError(f"--cache-dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        if self.keypoint_encoding not in KEYPOINT_ENCODINGS:
            raise OptionError(f"--keypoint-encoding must be one of {', '.join(KEYPOINT_ENCODINGS)}, "
                             f"got {self.keypoint_encoding!r}")
        if self.keypoint_encoding != EvalConfig.keypoint_encoding and self.task != "jhmdb":
            raise OptionError("--keypoint-encoding is for --task jhmdb only")
        if self.task != "video":
            given = [name for name in VIDEO_OPTIONS if getattr(self, name) != getattr(EvalConfig, name)]
            if given:
                raise OptionError(f"--{', --'.join(n.replace('_', '-') for n in given)}: for --task video only")
        if self.point_decoding not in POINT_DECODINGS:
            raise OptionError(f"--point-decoding must be one of {', '.join(POINT_DECODINGS)}, "
                             f"got {self.point_decoding!r}")
        if self.point_decoding != EvalConfig.point_decoding and (self.task != "tapvid" or self.tracker == "walk"):
            raise OptionError("--point-decoding is for --task tapvid with label propagation only")
        if self.query_mode not in ("first", "strided"):
            raise OptionError(f"--query-mode must be first or strided, got {self.query_mode!r}")
        if self.tracker not in ("propagation", "walk"):
            raise OptionError(f"--tracker must be propagation or walk, got {self.tracker!r}")
        if self.tracker == "walk":
            self._check_walk()
        elif any(getattr(self, name) is not None for name in WALK_SETTINGS):
            raise OptionError(f"--{'/--'.join(n.replace('_', '-') for n in WALK_SETTINGS)} are settings of "
                             f"--tracker walk (TAP-Vid), not of label propagation")
        else:
            self.propagation()  # bad values fail here
        return self

    def _check_walk(self) -> None:
        """Options that have no meaning for ``--tracker walk`` are errors, not silently ignored."""
        if self.task != "tapvid":
            raise OptionError("--tracker walk is for --task tapvid only")
        unused = [name for name in PROPAGATION_OVERRIDES if getattr(self, name) is not None]
        if self.preset != EvalConfig.preset:
            unused.insert(0, "preset")
        if unused:
            raise OptionError(f"--{', --'.join(n.replace('_', '-') for n in unused)}: label-propagation settings do "
                             f"not apply to --tracker walk (its settings: --walk-setting, --flow-method, "
                             f"--window-threshold, --upsample-factor, --occlusion-threshold)")
        if self.encoder not in (None, GLOBAL_MATCH):
            raise OptionError(f"--tracker walk tracks with a global-match network (--checkpoint of train.py --loss "
                             f"global_walk); --encoder {self.encoder} does not apply")
        for name, value in (("weights", self.weights), ("cache", self.cache)):
            if value:
                raise OptionError(f"--{name} is for encoder features of label propagation; --tracker walk has none")
        if self.tta_steps > 0:
            raise OptionError("--tta-steps adapts a propagation encoder; it is not supported with --tracker walk")
        self.flow_tracking()  # bad values fail here


#: The overrides of the propagation preset (:meth:`EvalConfig.propagation`).
PROPAGATION_OVERRIDES = ("context", "topk", "temperature", "radius", "pad_with_first", "normalize_features",
                         "label_norm", "neighbourhood", "restrict_first", "output_norm", "frames")
#: The options of ``--task video`` (a user's own video, :mod:`propagate.tasks.video`).
VIDEO_OPTIONS = ("video", "mask", "mask_frame", "points", "points_frame", "max_side")
#: The walk tracker's own options (:meth:`EvalConfig.flow_tracking`).
WALK_SETTINGS = ("walk_setting", "flow_method", "window_threshold", "upsample_factor", "occlusion_threshold")
#: ``--encoder`` name of the convolutional backbone of :class:`corr.global_match.GlobalMatchNet`.
GLOBAL_MATCH = "global-match"
