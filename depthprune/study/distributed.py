"""Several processes, one study: data-parallel scoring and a split of the sweep's cells.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment) the
process group is initialised here (NCCL for CUDA devices, plus a gloo group for the Python
objects exchanged; gloo alone on CPU). Without it everything runs as one process, through
the same code.

Scoring is split on *batch boundaries*: each process scores a contiguous run of the batches
a single process would form, so every sample sees exactly the same padding and arithmetic,
and the gathered shards concatenate (in rank order) to the single-process Scores.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from depthprune.data.records import Record, batches, data_fingerprint
from depthprune.scoring.forward import ScoreSettings, cap_per_domain, score_model
from depthprune.scoring.scores import Scores


@dataclass
class Context:
    """This process's place in the group: ``rank`` of ``world``; ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None  # gloo group for object collectives (None: single process)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op alone)."""
        if self.world > 1:
            torch.distributed.barrier(group=self.group)

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def device(self, device: str) -> str:
        """``cuda`` becomes this process's GPU (``cuda:LOCAL_RANK``) when several run."""
        if self.world > 1 and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


def setup(device: str = "cpu") -> Context:
    """The process group of this run: joins (or reuses) torch.distributed when the launcher
    set ``WORLD_SIZE`` > 1, else a single-process context."""
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available() or (world <= 1 and not dist.is_initialized()):
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return Context(rank=dist.get_rank(), world=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), group=group)


def shard_bounds(n_items: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous ``[lo, hi)`` share of ``n_items`` for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n_items, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def score_parallel(model: nn.Module, processor: Any, records: Sequence[Record], settings: ScoreSettings,
                   model_id: str, ctx: Context, progress: bool = True) -> Scores:
    """Score ``records`` with every process of ``ctx`` taking a contiguous share of the batches;
    returns the merged Scores (equal to a single-process pass) on every process."""
    records = cap_per_domain(records, settings.max_samples)
    chunks = list(batches(records, settings.batch_size))
    lo, hi = shard_bounds(len(chunks), ctx.rank, ctx.world)
    mine = [r for chunk in chunks[lo:hi] for r in chunk]
    started = time.perf_counter()
    shard = (score_model(model, processor, mine, dataclasses.replace(settings, max_samples=None),
                         model_id=model_id, progress=progress) if mine else None)
    shards = [s for s in ctx.gather(shard) if s is not None]
    merged = Scores.merge(shards)
    merged.settings.update(max_samples=settings.max_samples, data_fingerprint=data_fingerprint(records),
                           num_samples=len(records), processes=ctx.world,
                           seconds=round(time.perf_counter() - started, 3))
    return merged
