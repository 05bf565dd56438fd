"""Running a job on several processes started by `torchrun`: who am I, which inputs are mine, merge.

`torchrun --nproc-per-node N ...` starts N copies of the program and tells each its place through
environment variables (RANK, WORLD_SIZE, LOCAL_RANK, plus MASTER_ADDR/MASTER_PORT for the rendezvous).
A job then

1. calls `init_distributed(device)` (a no-op context for a plain single-process run),
2. takes its round-robin share of the inputs with `shard(items, ctx.rank, ctx.world_size)`,
3. computes one result per item of its share, in order,
4. hands them to `gather_to_main(ctx, results)`, which returns every result in input order on rank 0
   (and None elsewhere), so only rank 0 writes the output file and prints,
5. and finally calls `destroy(ctx)`.

Object collectives (`gather_object`) carry the results, tensors included, so gloo (CPU) and nccl
(CUDA) both work; results should be moved to the CPU first so they stay small to pickle.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..errors import MAEError

T = TypeVar("T")

__all__ = ["DistContext", "all_gather", "context_from_env", "destroy", "distributed_run", "gather_to_main",
           "init_distributed", "shard", "unshard"]


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run. A plain run is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # set when the process group is up
    owns_group: bool = False  # True when init_distributed created the process group (destroy tears it down)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise MAEError(f"environment variable {name}={raw!r} is not an integer; it is set by torchrun") from None


def context_from_env(device: torch.device | str = "cpu") -> DistContext:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them (absent: rank 0 of 1); no process group.

    A CUDA device without an index becomes `cuda:LOCAL_RANK` in a distributed run, so each process on a
    node gets its own GPU; an explicit index (`cuda:1`) is kept.
    """
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise MAEError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process of the run; "
                       "start distributed runs with torchrun")
    device = torch.device(device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def init_distributed(device: torch.device | str = "cpu", *, timeout_s: float = 1800.0) -> DistContext:
    """The context of this process; joins the process group when WORLD_SIZE > 1.

    The backend is nccl for CUDA devices and gloo otherwise (CPU, and MPS whose tensors are gathered
    through the CPU). A process group that already exists (the caller set it up) is reused and left
    for the caller to destroy. `timeout_s` bounds every collective: a rank that died makes the others
    fail after it instead of hanging forever.
    """
    ctx = context_from_env(device)
    if not ctx.is_distributed:
        return ctx
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - torch builds without distributed support
        raise MAEError("this torch build has no torch.distributed; run without torchrun")
    if dist.is_initialized():
        return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, dist.get_backend(), owns_group=False)
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    if backend == "nccl":
        visible = torch.cuda.device_count()
        if ctx.device.index is not None and ctx.device.index >= visible:
            raise MAEError(f"rank {ctx.rank} wants {ctx.device} but only {visible} CUDA device(s) are visible; "
                           f"start at most {visible} processes per node (--nproc-per-node) or use --device cpu")
        torch.cuda.set_device(ctx.device)  # object collectives on nccl use the current device
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, backend, owns_group=True)


def destroy(ctx: DistContext) -> None:
    """Tear down the process group `init_distributed` created (nothing otherwise)."""
    if not ctx.owns_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run(device: torch.device | str = "cpu") -> Iterator[DistContext]:
    """`init_distributed` ... `destroy`, also when the job raises."""
    ctx = init_distributed(device)
    try:
        yield ctx
    finally:
        destroy(ctx)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Round-robin share of `items` for `rank`: items[rank::world_size].

    The shares of ranks 0..world_size-1 are disjoint and together cover `items`; their sizes differ by
    at most one, and each share keeps the input order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")
    return list(items[rank::world_size])  # a lazy sequence (data set records) builds only this share


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of `shard`: the per-rank lists (rank order) interleaved back into input order.

    Each part must hold exactly one entry per item of that rank's share; anything else is a bug in the
    job (a rank lost or duplicated a result) and raises ValueError rather than silently misorder.
    """
    world = len(parts)
    total = sum(len(p) for p in parts)
    for rank, part in enumerate(parts):
        expected = len(range(rank, total, world))
        if len(part) != expected:
            sizes = [len(p) for p in parts]
            raise ValueError(f"rank {rank} returned {len(part)} results, its share of {total} items is {expected} "
                             f"(results per rank: {sizes})")
    return [parts[i % world][i // world] for i in range(total)]


def gather_to_main(ctx: DistContext, local: Sequence[T]) -> list[T] | None:
    """Every rank's `local` results merged in input order on rank 0; None on the other ranks.

    `local` is this rank's list of results, one per item of `shard(items, ctx.rank, ctx.world_size)`
    in that order; any picklable objects (tensors included; keep them on the CPU). A single-process
    run returns `list(local)` without touching torch.distributed.
    """
    if not ctx.is_distributed:
        return list(local)
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("gather_to_main in a distributed run needs init_distributed first")
    parts: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(list(local), parts, dst=0)
    if not ctx.is_main:
        return None
    assert parts is not None
    return unshard(parts)


def all_gather(ctx: DistContext, value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank (a collective: every rank must call it; it also
    synchronises them). A single-process run returns `[value]`."""
    if not ctx.is_distributed:
        return [value]
    import torch.distributed as dist

    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, value)
    return parts
