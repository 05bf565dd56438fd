"""utils.compile: the options a job compiles with, and the compile time it reports (torch's own accounting)."""

from __future__ import annotations

import pytest
import torch

from mae.large.errors import MAEError
from mae.large.utils.compile import CompileOptions, CompileWatch, compile_options


def test_options() -> None:
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == CompileOptions()
    assert CompileOptions().kwargs() == {"fullgraph": True, "dynamic": False}  # one graph, static shapes: the default
    assert CompileOptions(mode="max-autotune").kwargs()["mode"] == "max-autotune"
    assert "mode" not in CompileOptions(mode="default").kwargs()
    with pytest.raises(MAEError, match="compile mode must be"):
        CompileOptions(mode="fastest")
    with pytest.raises(MAEError, match="compile must be True, False"):
        compile_options("yes")  # type: ignore[arg-type]


def test_the_watch_reports_a_compile_once_and_nothing_after() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * 3 + 1

    watch = CompileWatch()
    assert watch.poll() is None
    run = torch.compile(f, backend="eager", fullgraph=True, dynamic=False)  # tracing alone: fast, still counted
    x = torch.randn(4)
    assert torch.equal(run(x), f(x))
    found = watch.poll()
    assert found is not None and found.graphs == 1 and found.seconds > 0
    assert "compiled in" in found.describe("f") and "1 graph;" in found.describe("f")
    run(torch.randn(4))  # the same shape: the graph is reused, nothing compiled
    assert watch.poll() is None
    run(torch.randn(5))  # another shape under static shapes: a second graph
    assert watch.poll().graphs == 1
    assert watch.total.graphs == 2
