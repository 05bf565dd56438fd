"""Running a job: what it reports while it works (`Events`), and its inputs shared over torchrun (`run_sharded`).

A job never prints. What a person running it wants to see as it happens (a note, an input that failed, the
progress, the loaded model's report) goes to the `Events` it is given; the defaults do nothing, so a Python
caller gets the same files and return value in silence, and the command line renders the same events.

`run_sharded` is the one place that joins the process group, hands each rank its round-robin share of the
inputs, reports the progress on rank 0 and passes every result to a per-rank *sink*, in the rank's input
order. The sink decides what happens to results: `GatherSink` sends them to rank 0, which gets them all in
input order; a sink that writes its rank's results as they come (sharded outputs) needs no gathering at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from ..data.images import ImageFailure
    from ..utils.distributed import DistContext

T = TypeVar("T")
S = TypeVar("S")

Advance = Callable[[], None]
Progress = Callable[[int, str], contextlib.AbstractContextManager[Advance]]


@contextlib.contextmanager
def no_progress(total: int, label: str) -> Iterator[Advance]:
    """A progress report that shows nothing."""
    yield lambda: None


def _ignore(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Events:
    """What a job reports while it runs; every field defaults to doing nothing.

    `note(text)`: a one-line remark (sub-folders not walked, an input given twice, the decoder target chosen);
    `failure(f)`: an input that gave no result, as soon as it is known (`ImageFailure`); `progress(total, label)`:
    a context manager giving the `advance()` to call per input; `loaded(model)`: a model was loaded (its
    `load_report` says from what); `result(item)`: each per-input result as it comes (a row or a failure).
    Off rank 0 of a distributed run, jobs use `quiet()`."""

    note: Callable[[str], None] = _ignore
    failure: Callable[[ImageFailure], None] = _ignore
    progress: Progress = no_progress
    loaded: Callable[[Any], None] = _ignore
    result: Callable[[Any], None] = _ignore

    def quiet(self) -> Events:
        """These events without the ones a person reads (for the ranks other than 0)."""
        return replace(self, note=_ignore, failure=_ignore, progress=no_progress, loaded=_ignore)


QUIET = Events()


@dataclass(frozen=True, kw_only=True)
class JobRun:
    """What every job that writes a result per input returns: one row per input, in input order (a failed input is
    `{"image", "error"}`), the seconds it took, and the model it ran (for a caller that goes on with it)."""

    rows: list[dict[str, Any]]
    seconds: float
    model: Any = field(repr=False)

    @property
    def ok(self) -> list[dict[str, Any]]:
        """The rows of the inputs that gave a result."""
        return [r for r in self.rows if "error" not in r]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The rows of the inputs that gave none."""
        return [r for r in self.rows if "error" in r]


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
        from ..utils.distributed import gather_to_main

        return gather_to_main(self.ctx, self.items)


@dataclass(frozen=True)
class ShardedRun(Generic[S]):
    state: S  # what `setup` returned (the model)
    results: list[Any] | None  # what the sink's close returned (rank 0: every result, in input order)
    ctx: DistContext
    events: Events = field(default=QUIET)  # the events of this rank (quiet off rank 0)


def run_sharded(
    items: Sequence[T],
    device: Any,
    *,
    label: str,
    events: Events,
    setup: Callable[[DistContext, Events], S],
    work: Callable[[S, list[T], DistContext, Events], Iterable[Any]],
    sink: Callable[[DistContext], Sink] = GatherSink,
    record: bool = True,
) -> ShardedRun[S]:
    """`setup(ctx, events)` once per process (load the model), then every result of `work(state, this rank's items,
    ctx, events)` into the sink, with the progress on rank 0.

    Args:
        items: every input of the run; rank `r` of `W` works on `items[r::W]`, in order.
        device: this process's device, already resolved (a `torch.device` or a name such as `cuda`; not `auto`): a
            CUDA device without an index becomes `cuda:LOCAL_RANK` under torchrun (`distributed.context_from_env`).
        label: the progress bar's label (under torchrun, with rank 0's share added).
        events: what to report; the ranks other than 0 get `events.quiet()`.
        setup: called once per process as `setup(ctx, events)`; what it returns (the model) is handed to `work`.
        work: yields this rank's results, one per item, in order: `work(state, local_items, ctx, events)`.
        sink: builds this rank's `Sink` from the `DistContext` (default `GatherSink`: every result on rank 0).
        record: report each result with `events.result`; False reports none (a sink that writes as it goes keeps
            memory flat over any number of inputs).

    Returns a `ShardedRun`: the state, what the sink's `close` returned (None off rank 0 for `GatherSink`), the
    context and this rank's events."""
    from ..utils.distributed import distributed_run, shard

    with distributed_run(device) as ctx:
        here = events if ctx.is_main else events.quiet()
        state = setup(ctx, here)
        local = shard(items, ctx.rank, ctx.world_size)
        if ctx.is_distributed:
            label = f"{label} (rank 0's {len(local)} of {len(items)})"
        rank_sink = sink(ctx)
        with here.progress(len(local), label) as advance:
            for result in work(state, local, ctx, here):
                rank_sink.add(result)
                if record:
                    here.result(result)
                advance()
        merged = rank_sink.close()
    return ShardedRun(state, merged, ctx, here)


def collect_inputs(inputs: Sequence[Any], purpose: str, *, recursive: bool, events: Events
                   ) -> tuple[list[Any], list[ImageFailure]]:
    """Image files from files and folders (`images.collect_images`), in order: a note for what was passed over on
    purpose (sub-folders not walked, inputs given twice), and one `ImageError` when no image is left to `purpose`."""
    from ..data.images import collect_images
    from ..errors import ImageError

    collected = collect_images(inputs, recursive=recursive)
    paths, failures = list(collected[0]), list(collected[1])
    skipped = collected.skipped_folders
    walk = (f"{len(skipped)} sub-folder(s) were not walked ({', '.join(p.name for p in skipped[:3])}"
            f"{' ...' if len(skipped) > 3 else ''}); pass recursive=True to include them") if skipped else ""
    if not paths:
        reasons = "; ".join(f.reason for f in failures) or "no inputs"
        error = ImageError(f"no image to {purpose}: {reasons}" + (f"; {walk}" if walk else ""))
        error.argument = "recursive" if walk else None
        raise error
    if walk:
        events.note(walk)
    for path in collected.duplicates:
        events.note(f"{path} was given more than once; it is processed once")
    return paths, failures


def noting_compile(items: Iterable[T], events: Events, what: str, enabled: bool = True) -> Iterator[T]:
    """`items` as they come, with a note each time compiling happened while the last one was made
    (`utils.compile.CompileWatch`): how long `what` took to compile, said as soon as it is known."""
    if not enabled:
        yield from items
        return
    from ..utils.compile import CompileWatch

    watch = CompileWatch()
    for item in items:
        found = watch.poll()
        if found is not None:
            events.note(found.describe(what))
        yield item
