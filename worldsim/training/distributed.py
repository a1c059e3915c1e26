"""Data-parallel training across processes with `torch.distributed`.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), a
training command joins a process group: gloo on CPU, NCCL on CUDA. Started any other way
it is a plain single process (rank 0 of 1) and nothing here touches torch.distributed.

    torchrun --nproc-per-node 2 -m worldsim.cli train vae --data D --out R   # one machine
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29500 ...         # several

Conventions the training loop follows: each rank samples its own batches (its own seeds);
gradients are averaged by DistributedDataParallel; only rank 0 writes checkpoints, logs and
TensorBoard files; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from worldsim.runtime import choose_device


@dataclass
class DistributedContext:
    """Where this process sits. world_size 1 means a plain process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of floats over all ranks (identity for a single process)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str | None = None, timeout_min: float = 30.0
                     ) -> DistributedContext:
    """Join the process group if launched by torchrun, else describe a single process.
    `device` as for `runtime.choose_device`; under torchrun with CUDA each rank takes the GPU
    `LOCAL_RANK`."""
    if not launched_by_torchrun():
        return DistributedContext(device=choose_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = choose_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return DistributedContext(rank=rank, world_size=world, local_rank=local_rank,
                              device=chosen)


def shutdown_distributed(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
