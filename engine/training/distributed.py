"""Several processes: join the process group that `torchrun` or `accelerate launch` describes.

Both launchers export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; one process is a
world of one and never touches torch.distributed. The backend is gloo on CPU and nccl on CUDA.
Helpers here sum numbers across processes and gather small Python objects, the only collective
operations the recipe needs besides DDP's gradient all-reduce. Nothing here knows of models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world as the launcher described it in the environment (a world of one without one)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(rank=int(os.environ.get("RANK", "0")), size=size,
                 local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: str) -> None:
    """Join the process group (no-op for a world of one)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if device.startswith("cuda"):
        import torch

        # nccl and FSDP's device mesh use the current device: one GPU per process.
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                rank=world.rank, world_size=world.size)


def shutdown(world: World) -> None:
    """Leave the process group."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        # Every rank leaves together: a rank that tore gloo down while rank 0 was still
        # writing the adapter died with "terminate called without an active exception"
        # (SIGABRT) on a loaded 2-core machine, about one run in ten.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def sum_across(values: list[float], world: World, device: str = "cpu") -> list[float]:
    """Element-wise sum of a list of numbers over every process (float64)."""
    if not world.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(value: Any, world: World) -> list[Any]:
    """Every process's `value`, in rank order (a one-item list without several processes)."""
    if not world.distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any, world: World) -> Any:
    """Rank 0's `value`, on every process."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
