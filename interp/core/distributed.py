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


class DistributedError(ValueError):
    """--distributed asked for outside a launcher, or a launcher without --distributed."""


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...): nccl on GPUs, gloo on CPU.

    Returns the device this rank should use ('cuda:LOCAL_RANK' on GPUs).
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise DistributedError(
            "--distributed needs torchrun (RANK and WORLD_SIZE are not set): run "
            "torchrun --nproc-per-node N -m interp ... --distributed, or drop --distributed"
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


def requested_by_env() -> bool:
    """True under a launcher (torchrun) that started more than one process: WORLD_SIZE > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` over ranks in place, op 'sum' | 'max' | 'min' (a no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=_OPS[op])
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (a no-op in a single process); returns it."""
    return all_reduce(tensor, "sum")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (the same shape on each) concatenated along dim 0 in rank order; itself alone in a
    single process."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` with rank `src`'s in place (a no-op in a single process); returns it."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor


# ------------------------------------------------------------------ statistics of a batch split over ranks
# A data-parallel step sees one global batch whose rows are spread over the ranks. These give, on every rank, what
# a single process holding the whole batch would compute (same formula, so float-equal), without gradient.
@torch.no_grad()
def batch_variance(x: torch.Tensor) -> torch.Tensor:
    """Mean over the global batch of ||x - mean(x)||^2, `x [n_local, d]`; a scalar tensor."""
    if not is_distributed():
        return (x - x.mean(0)).square().sum(-1).mean()
    sums = all_reduce_sum(torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]))
    n = sums[-1]
    spread = all_reduce_sum((x - sums[:-1] / n).square().sum().reshape(1))
    return spread[0] / n


@torch.no_grad()
def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of `values [m]` taken together with every rank's (each rank passes the same m)."""
    local = values.topk(min(k, values.numel()), sorted=False).values
    if not is_distributed():
        return local.min()
    return all_gather_cat(local).topk(k, sorted=False).values.min()


def start(requested: bool, device: str | None) -> str | None:
    """With `requested` (--distributed), join the process group torchrun describes and return this rank's device
    (nccl and cuda:LOCAL_RANK on GPUs, gloo on CPU). Without it, refuse to run under a multi-process launcher, where
    every process would do the whole job and write the same files."""
    if requested:
        return init_from_env(device or "auto")
    if requested_by_env():
        raise DistributedError(
            f"this runs under torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']} but without --distributed, so "
            "every process would do the whole job; add --distributed"
        )
    return device


def stop() -> None:
    """Leave the process group (no barrier: after an error on one rank the others fail fast instead of waiting)."""
    if is_distributed():
        dist.destroy_process_group()
