"""How features are judged: label propagation, label codecs, metrics and the task runner."""
from .config import PRESETS, PropagationConfig
from .propagator import LabelMemory, Matcher, Matches, Propagator

__all__ = ["PRESETS", "LabelMemory", "Matcher", "Matches", "PropagationConfig", "Propagator"]
