"""Where code runs: one :class:`Runtime` (device, rank, world size, mixed precision) shared
by training and evaluation, device synchronisation for timings, and the code version
recorded with results.

    runtime = start_runtime("auto")                 # one process: rank 0 of 1
    runtime = start_runtime("auto", backend="nccl")  # under torchrun: joins the process group
    names = runtime.shard(names)                     # this rank's share, names[rank::world]
    runtime.close()                                  # leaves the group (if one was joined)

Under ``torchrun`` (``WORLD_SIZE > 1``) each process reads ``RANK`` / ``LOCAL_RANK`` and
uses GPU ``LOCAL_RANK``; a single process uses ``cuda:0`` on a GPU machine.
"""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]

#: How long a collective waits for the slowest rank (an evaluation shard may take hours).
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Runtime:
    """This process: its device, its place among the processes, and whether AMP is on."""

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    amp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: ``items[rank::world_size]`` (order kept)."""
        return list(items)[self.rank::self.world_size]

    def owns(self, index: int) -> bool:
        """Whether the item at ``index`` of a stream belongs to this rank."""
        return index % self.world_size == self.rank

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` (detached) averaged over the processes."""
        value = value.detach().clone()
        if self.distributed:
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def close(self) -> None:
        """Leave the process group, if one was joined."""
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error.

    An unindexed CUDA device becomes ``cuda:<local_rank>`` (modulo the GPU count).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name} was requested but CUDA is not available here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def start_runtime(device: str = "auto", *, backend: str = "gloo", amp: Optional[bool] = False) -> Runtime:
    """The runtime of this process; joins the process group when launched by ``torchrun``.

    device:  ``auto``, ``cpu``, ``cuda`` or ``cuda:i``;
    backend: the process group's backend; ``auto`` = nccl on CUDA, gloo on the CPU (training
             all-reduces gradients); evaluation only synchronises, so it uses gloo;
    amp:     ``None`` = on with CUDA; ``True`` asks for it (off on the CPU); ``False`` off.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
    local_rank = int(os.environ.get("LOCAL_RANK", rank)) if world_size > 1 else 0
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    use_amp = resolved.type == "cuda" and (amp is None or bool(amp))
    return Runtime(resolved, rank, world_size, local_rank, use_amp)


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
