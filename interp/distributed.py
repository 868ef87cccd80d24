"""torch.distributed in one place: start from torchrun's environment, ask for rank and world size, wait at barriers.

Every function works without a process group (a single process is rank 0 of a world of 1), so library code calls
them unconditionally.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...): nccl on GPUs, gloo on CPU.

    Returns the device this rank should use ('cuda:LOCAL_RANK' on GPUs).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "--distributed needs torchrun: torchrun --nproc-per-node N -m interp ... --distributed"
        )
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def rank_range(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """The contiguous block [begin, end) of n items that `rank_` of `world` owns (earlier ranks get the remainder)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    begin = rank_ * base + min(rank_, extra)
    return begin, begin + base + (1 if rank_ < extra else 0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
