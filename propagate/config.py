"""Settings of label propagation: one frozen dataclass with the published presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from corr.errors import OptionError


@dataclass(frozen=True)
class PropagationConfig:
    """Hyper-parameters of the one label-propagation algorithm (see :mod:`propagate.propagator`).

    context:        n, the number of previous frames kept as short memory.
    topk:           k, neighbours kept per query position, chosen jointly over every allowed
                    context position (frame 0 and the short memory together).
    temperature:    tau in ``softmax(cosine / tau)`` over the k neighbours.
    radius:         a short-memory key is allowed for a query only if it lies in the query's
                    neighbourhood on the feature grid; ``None`` = no limit. Frame 0 (long
                    memory) is limited only with ``restrict_first``.
    neighbourhood:  its shape: ``"disk"``, Euclidean distance ``< radius`` cells; or ``"square"``,
                    ``|dy| <= radius`` and ``|dx| <= radius`` (DINO's ``size_mask_neighborhood``).
    restrict_first: the neighbourhood limits frame 0's keys too (DINO's script); no effect
                    without a radius.
    pad_with_first: front-pad the video with n copies of frame 0 (features and ground truth),
                    as the reference CRW evaluator does; early frames then see those copies as
                    short memory. The published CRW numbers were made with it.
    normalize_features: L2-normalise features per position (cosine similarity).
    label_norm:     "none" or "minmax": rescale each channel of every predicted label map to
                    [0, 1] (``(l - min) / (max - min)`` over the frame) before it is output and
                    written back as context.
    output_norm:    "none" or "minmax": rescale each channel of the label map upsampled to
                    pixels, whose maximum is > 0, to [0, 1] before the argmax (DINO's
                    ``norm_mask``); the labels kept as context are untouched (DAVIS, VIP).
    frames:         "common" or "dino": how DAVIS frames reach the encoder and predictions
                    return to the annotation (:mod:`propagate.dino_frames`): "common" is the
                    task's rule (docs/propagation.md, Labels per task); "dino" is DINO's
                    script (short side 480, long side floored to a multiple of 64, its input
                    statistics, nearest-neighbour labels in and out).
    """

    context: int = 20
    topk: int = 10
    temperature: float = 0.05
    radius: Optional[float] = 12.0
    pad_with_first: bool = False
    normalize_features: bool = True
    label_norm: str = "none"
    neighbourhood: str = "disk"
    restrict_first: bool = False
    output_norm: str = "none"
    frames: str = "common"

    def __post_init__(self):
        if self.context < 0:
            raise OptionError(f"context must be >= 0, got {self.context}")
        if self.topk < 1:
            raise OptionError(f"topk must be >= 1, got {self.topk}")
        if not self.temperature > 0:
            raise OptionError(f"temperature must be > 0, got {self.temperature}")
        if self.radius is not None and not self.radius > 0:
            raise OptionError(f"radius must be > 0 or None, got {self.radius}")
        if self.label_norm not in ("none", "minmax"):
            raise OptionError(f"label_norm must be 'none' or 'minmax', got {self.label_norm!r}")
        if self.neighbourhood not in ("disk", "square"):
            raise OptionError(f"neighbourhood must be 'disk' or 'square', got {self.neighbourhood!r}")
        if self.output_norm not in ("none", "minmax"):
            raise OptionError(f"output_norm must be 'none' or 'minmax', got {self.output_norm!r}")
        if self.frames not in ("common", "dino"):
            raise OptionError(f"frames must be 'common' or 'dino', got {self.frames!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "PropagationConfig":
        """A published setting by name (``crw``, ``dino``, ``spa_then_temp``, ``timecycle``), with overrides."""
        if name not in PRESETS:
            raise OptionError(f"--preset: unknown propagation preset {name!r}; known: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Published settings, mapped onto the one algorithm (docs/propagation.md).
# - crw: Jabri et al. 2020 (20 context frames, top-10, tau 0.05, radius 12, padded start):
#   reproduces the paper's evaluation.
# - dino: Caron et al. 2021, their eval_video_segmentation.py: 7 / 5 / 0.1, a square window of
#   +-12 cells that also restricts frame 0, min-max normalised output, DINO's frame sizes.
# - spa_then_temp: Li et al. 2023 (20 / 10 / 0.07, radius 24 on DAVIS; 10 on JHMDB, 32 on VIP).
# - timecycle: Wang et al. 2019 (7 context frames, top-5, min-max label normalisation). Its
#   top-5 per context frame is taken jointly here, and no locality limit is applied.
PRESETS: dict[str, PropagationConfig] = {
    "crw": PropagationConfig(context=20, topk=10, temperature=0.05, radius=12.0, pad_with_first=True),
    "dino": PropagationConfig(context=7, topk=5, temperature=0.1, radius=12.0, neighbourhood="square",
                              restrict_first=True, output_norm="minmax", frames="dino"),
    "spa_then_temp": PropagationConfig(context=20, topk=10, temperature=0.07, radius=24.0),
    "timecycle": PropagationConfig(context=7, topk=5, temperature=0.05, radius=None, label_norm="minmax"),
}
