"""Running a command over many inputs, as one process or as several under torchrun.

`run_sharded` is the one place that joins the process group, hands each rank its round-robin share of
the inputs, shows the progress on rank 0 and passes every result to a per-rank *sink*, in the rank's
input order. The sink decides what happens to results: `GatherSink` (today's) sends them to rank 0,
which gets them all in input order; a sink that writes its rank's results as they come (sharded
outputs) needs no gathering at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from cli.common import progress, record_result

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.utils.distributed import DistContext

T = TypeVar("T")
S = TypeVar("S")


class Sink(Protocol):
    """Where one rank's results go, one at a time, in the rank's input order."""

    def add(self, item: Any) -> None: ...

    def close(self) -> list[Any] | None:
        """This rank is done: every rank calls it (it may be a collective); rank 0 may get a merged list."""
        ...


class GatherSink:
    """Keeps this rank's results and gathers all of them, in input order, on rank 0 (None elsewhere)."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        self.items.append(item)

    def close(self) -> list[Any] | None:
        from mae.large.utils.distributed import gather_to_main

        return gather_to_main(self.ctx, self.items)


@dataclass(frozen=True)
class ShardedRun(Generic[S]):
    state: S  # what `setup` returned (the model)
    results: list[Any] | None  # what the sink's close returned (rank 0: every result, in input order)
    ctx: DistContext


def run_sharded(
    items: Sequence[T],
    device: Any,
    *,
    label: str,
    quiet: bool,
    setup: Callable[[DistContext, bool], S],
    work: Callable[[S, list[T], DistContext], Iterable[Any]],
    sink: Callable[[DistContext], Sink] = GatherSink,
    record: bool = True,
) -> ShardedRun[S]:
    """`setup(ctx, quiet)` once per process (load the model; `quiet` is True off rank 0), then every result
    of `work(state, this rank's items, ctx)` into the sink, with a progress bar on rank 0. `record=False` keeps
    no per-result row for a failure's JSON report (`record_result`): memory stays flat over any number of inputs."""
    from mae.large.utils.distributed import distributed_run, shard

    with distributed_run(device) as ctx:
        quiet_here = quiet or not ctx.is_main
        state = setup(ctx, quiet_here)
        local = shard(items, ctx.rank, ctx.world_size)
        if ctx.is_distributed:
            label = f"{label} (rank 0's {len(local)} of {len(items)})"
        rank_sink = sink(ctx)
        with progress(len(local), label, quiet=quiet_here) as advance:
            for result in work(state, local, ctx):
                rank_sink.add(result)
                if record:
                    record_result(result)
                advance()
        merged = rank_sink.close()
    return ShardedRun(state, merged, ctx)
