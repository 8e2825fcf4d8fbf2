"""The platform a record was taken on: the CPU vendor and the vector instructions torch's CPU
kernels use. The same code gives float results that differ in the last bits between
platforms, so records pin results bit for bit only where they were taken; elsewhere the
record tests compare with tolerances (each test says which)."""
from __future__ import annotations

import math
import platform
from pathlib import Path


def platform_key() -> str:
    """e.g. ``x86_64 AuthenticAMD AVX512``."""
    import torch

    vendor = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        vendor = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                       if line.startswith("vendor_id")), vendor)
    return f"{platform.machine()} {vendor} {torch.backends.cpu.get_cpu_capability()}"


def close(got, want, rel: float, abs_: float) -> bool:
    """Whether nested dicts / lists of numbers agree within ``rel`` / ``abs_`` (NaN equals NaN;
    everything that is not a number must be equal)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            close(got[k], want[k], rel, abs_) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(
            close(g, w, rel, abs_) for g, w in zip(got, want))
    if isinstance(want, float) or isinstance(got, float):
        if isinstance(got, bool) or isinstance(want, bool) or got is None or want is None:
            return got == want
        if math.isnan(want) or math.isnan(got):
            return math.isnan(want) and math.isnan(got)
        return math.isclose(got, want, rel_tol=rel, abs_tol=abs_)
    return got == want
