"""``--sweep "topk=5,10,20 radius=12,24"``: the settings of a sweep, parsed, and their folder names.

:func:`parse_sweep` gives the cartesian product of the named values (the last name varies
fastest) as override dicts for :class:`propagate.eval_config.EvalConfig`. Label propagation
sweeps :data:`SWEEP_FIELDS` only (settings that reuse cached features and matches,
docs/propagation.md); ``--tracker walk`` sweeps :data:`WALK_SWEEP_FIELDS`, the tracker's own.
:func:`setting_name` names a setting's folder, ``topk-5_radius-12``.
"""
from __future__ import annotations

import itertools
import math

from corr.errors import OptionError

#: What ``--sweep`` may vary: settings of propagation only, so every setting reuses the
#: cached features (input size, encoder and checkpoint are one run each).
SWEEP_FIELDS: dict[str, type] = {"preset": str, "context": int, "topk": int, "temperature": float,
                                 "radius": float, "pad_with_first": bool, "normalize_features": bool,
                                 "label_norm": str}
#: What ``--sweep`` may vary with ``--tracker walk``: the tracker's own settings (the network
#: and the input size are one run each).
WALK_SWEEP_FIELDS: dict[str, type] = {"walk_setting": str, "flow_method": str, "window_threshold": float,
                                      "upsample_factor": int, "occlusion_threshold": float}


def parse_sweep(text: str, tracker: str = "propagation") -> list[dict]:
    """``"topk=5,10 radius=12,24"`` -> the cartesian product as override dicts, in order
    (the last name varies fastest): ``[{"topk": 5, "radius": 12.0}, {"topk": 5, "radius": 24.0}, ...]``.

    Names are :data:`SWEEP_FIELDS` (``-`` or ``_``), or with ``tracker="walk"``
    :data:`WALK_SWEEP_FIELDS`; ``radius=inf`` removes the locality limit.
    """
    fields = WALK_SWEEP_FIELDS if tracker == "walk" else SWEEP_FIELDS
    axes: dict[str, list] = {}
    for part in text.split():
        name, sep, values = part.partition("=")
        name = name.replace("-", "_")
        if not sep or not values:
            raise OptionError(f"--sweep: expected name=v1,v2,... separated by spaces, got {part!r}")
        if tracker == "walk" and name in SWEEP_FIELDS:
            raise OptionError(f"--sweep: {name!r} is a label-propagation setting; sweeps over propagation settings "
                             f"need --tracker propagation; --tracker walk sweeps {', '.join(fields)}")
        if tracker != "walk" and name in WALK_SWEEP_FIELDS:
            raise OptionError(f"--sweep: {name!r} is a setting of --tracker walk; label propagation sweeps "
                             f"{', '.join(fields)}")
        if name not in fields:
            raise OptionError(f"--sweep: {name!r} cannot be swept; choose from {', '.join(fields)}")
        if name in axes:
            raise OptionError(f"--sweep: {name!r} given twice")
        axes[name] = [_sweep_value(name, v, fields[name]) for v in values.split(",") if v]
    if not axes:
        raise OptionError("--sweep: no setting given")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _sweep_value(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise OptionError(f"--sweep: {name} takes true/false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise OptionError(f"--sweep: {name} takes {kind.__name__} values, got {text!r}") from None


def setting_name(overrides: dict) -> str:
    """A folder name for one setting: ``topk-5_radius-12``."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return "inf" if math.isinf(value) else f"{value:g}"
        return str(value)

    return "_".join(f"{name}-{text(value)}" for name, value in overrides.items())
