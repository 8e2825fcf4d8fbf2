"""Where code runs: device choice, device synchronisation for timings, and the code version
recorded with results."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


def sync_device(device: torch.device) -> None:
    """Wait for queued CUDA work (so timings measure it); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def code_version() -> str:
    """``git describe --always --dirty`` of this code, or ``unknown`` outside a git checkout."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"
