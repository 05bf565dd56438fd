"""`torch.compile` as the jobs use it (opt-in), and the compile time a run spends, reported rather than hidden.

`CompileOptions` is how a job compiles: whole graphs (`fullgraph`: an error, never a silent graph break), static shapes
unless `dynamic` is asked for (the jobs pad a short last batch to the batch size, so one graph serves a whole run),
torch.compile's `mode` (None: the default; `max-autotune`, `reduce-overhead` (CUDA graphs) are measured in
`bench/mfu.py` first). `compile_options(True)` is the default, `compile_options(False)` None: eager, bit for bit what a
run without compiling computes. What a job compiles is the models' transformer blocks (`models.layers.compile_blocks`).

`eager()` runs compiled code eagerly for a while (torch's `force_eager` stance): a run's side passes (evaluation,
held-out previews, animation frames) at other shapes, which would otherwise compile graphs of their own.

`CompileWatch` reads torch's own accounting of compile time (dynamo's frames, AOT autograd, inductor, the backward
graph compiled at the first backward) and of the graphs compiled, so a job can say, as soon as it happens, how long
compiling took: `watch.poll()` returns what was compiled since the last poll.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import invalid_argument

__all__ = ["MODES", "CompileOptions", "CompileWatch", "Compiled", "compile_fn", "compile_options", "eager", "own_copy"]

F = TypeVar("F", bound=Callable[..., Any])
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileOptions:
    """How a job compiles its forward (and, in training, its backward): see the module's docstring."""

    mode: str | None = None  # None / "default", "reduce-overhead" (CUDA graphs), "max-autotune", ...
    dynamic: bool = False  # False: static shapes (one graph per shape); True: a symbolic batch
    fullgraph: bool = True  # one graph or an error, never a silent graph break
    backend: Any = "inductor"  # torch.compile's backend: inductor generates the kernels ("aot_eager" to bisect numerics)

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise invalid_argument("compile", f"compile mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    def kwargs(self) -> dict[str, Any]:
        """torch.compile's keyword arguments."""
        return {"fullgraph": self.fullgraph, "dynamic": self.dynamic,
                **({"mode": self.mode} if self.mode not in (None, "default") else {}),
                **({"backend": self.backend} if self.backend != "inductor" else {})}


def compile_options(compile: bool | CompileOptions | None) -> CompileOptions | None:
    """A job's `compile` argument: True (the default options), False / None (eager) or `CompileOptions`."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return CompileOptions()
    if isinstance(compile, CompileOptions):
        return compile
    raise invalid_argument("compile", f"compile must be True, False or a CompileOptions, got {compile!r}")


def compile_fn(fn: F, options: CompileOptions) -> F:
    """`torch.compile(fn, **options.kwargs())`: a function, a bound method or a module."""
    return torch.compile(fn, **options.kwargs())  # type: ignore[return-value]


def own_copy(fn: F) -> F:
    """A copy of the function `fn` with a code object of its own. Dynamo keeps the graphs it compiles per code object,
    at most `recompile_limit` (8) of them for every caller of one function in the process; compiling a job's own copy
    starts it with none (jobs run one after another in a process, at their own shapes), and its graphs go with it."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__doc__, copy.__qualname__ = fn.__kwdefaults__, fn.__doc__, fn.__qualname__
    return copy  # type: ignore[return-value]


def eager() -> contextlib.AbstractContextManager:
    """Compiled functions run eagerly inside (torch.compiler's `force_eager` stance; torch >= 2.6, else nothing)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Compiled:
    """What was compiled between two polls of a `CompileWatch`: seconds of compiling, and graphs made."""

    seconds: float
    graphs: int

    def describe(self, what: str) -> str:
        """One line: `torch.compile: the encoder's blocks compiled in 41.2 s (1 graph; included in the run's time, ...)`."""
        plural = "graph" if self.graphs == 1 else "graphs"
        return (f"torch.compile: {what} compiled in {self.seconds:.1f} s ({self.graphs} {plural}; included in the run's "
                "time, later batches of the same shape reuse it)")


def _compile_seconds() -> float:
    """Seconds this process spent compiling so far, by torch's own accounting (frames and backward graphs)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # a torch whose private accounting moved: fall back on the watch's own clock
        return float("nan")


def _graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


class CompileWatch:
    """Polls torch's compile accounting: `poll()` is what was compiled since the previous poll (None: nothing).

    Process-wide: a compile in another thread of the process between two polls counts too (the jobs compile one
    thing at a time). Where torch's private accounting is unavailable, the wall time between the polls around a
    call that made a graph is used."""

    def __init__(self) -> None:
        self._seconds, self._graphs, self._clock = _compile_seconds(), _graphs(), time.perf_counter()
        self.total = Compiled(0.0, 0)

    def poll(self) -> Compiled | None:
        seconds, graphs, clock = _compile_seconds(), _graphs(), time.perf_counter()
        spent = seconds - self._seconds
        new = graphs - self._graphs
        if spent != spent:  # NaN: no accounting; the wall time since the last poll, when a graph was made
            spent = clock - self._clock if new else 0.0
        self._seconds, self._graphs, self._clock = seconds, graphs, clock
        if new <= 0 and spent <= 0:
            return None
        found = Compiled(spent, max(new, 0))
        self.total = Compiled(self.total.seconds + found.seconds, self.total.graphs + found.graphs)
        return found
