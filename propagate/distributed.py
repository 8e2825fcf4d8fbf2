"""Evaluation in several processes: ``torchrun --nproc_per_node=G evaluate.py ...``.

Sequences are sharded round-robin: rank r evaluates ``names[r::G]`` and writes their
per-sequence records and predictions; after a barrier, rank 0 alone reads every record and
writes ``results.json``. Scores are computed per sequence from that sequence's predictions
only, and the merge reads the same records a single process reads on a rerun, so the
metrics equal the single-process run's exactly (timings differ).

The process group only ever synchronises (barriers, no tensors), so it always uses the
``gloo`` backend, on CPU and GPU machines alike. On GPUs, ``--device auto`` or ``cuda``
becomes ``cuda:<LOCAL_RANK>`` (one GPU per process).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: How long a barrier waits for the slowest rank (its shard may take hours on a big set).
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the evaluation processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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


def init_ranks() -> Ranks:
    """Read ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun) and join the gloo group.

    Without those variables, or with ``WORLD_SIZE=1``, this is a single process and no group
    is created.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    return Ranks(rank=rank, world_size=world, local_rank=local)


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """With several processes, an unindexed CUDA device becomes ``cuda:<local rank>``."""
    if ranks.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks.local_rank % max(torch.cuda.device_count(), 1))
    return device


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
