"""How features are judged: label propagation, label codecs, metrics and the task runner."""
from .config import PRESETS, PropagationConfig
from .propagator import Propagator

__all__ = ["PRESETS", "PropagationConfig", "Propagator"]
