"""How features are judged: label propagation, label codecs, metrics and the task runner;
:func:`track` propagates a mask or points through one's own video."""
from .config import PRESETS, PropagationConfig
from .propagator import LabelMemory, Matcher, Matches, Propagator
from .track import TrackedFrame, track

__all__ = ["PRESETS", "LabelMemory", "Matcher", "Matches", "PropagationConfig", "Propagator", "TrackedFrame",
           "track"]
