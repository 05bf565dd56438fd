"""FLOPs counted, not estimated: what a job's forward (and backward) multiplies, as torch's `FlopCounterMode` counts it.

`count_flops(fn)` runs `fn` once under `torch.utils.flop_counter.FlopCounterMode` and returns the floating-point
operations of its matrix products (`FlopCount`): linear layers (`addmm` / `mm` / `bmm`), the patch projection
(convolution) and attention (scaled dot-product, every backend), two per multiply-add, as the counter defines them.
Elementwise work (layer norms, GELU, softmax, residual adds, the optimiser's update) is not counted: MFU is the
matrix work a card does against its matrix peak. A backward run inside `fn` is counted too (its matrix products:
about twice the forward's).

torch's counter knows the CUDA attention kernels (flash, memory-efficient, cuDNN) but not the CPU's fused one
(`_scaled_dot_product_flash_attention_for_cpu`, which `F.scaled_dot_product_attention` runs on the CPU): its
formulas are registered here, the same as the CUDA kernels' (`sdpa_flop_count`: 4 b h s_q s_k d forward,
`sdpa_backward_flop_count` backward), so a count is the same on any device.

`achieved` turns a count and a time into TFLOP/s and the model FLOPs utilisation against a peak.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FlopCount", "achieved", "count_flops"]

aten = torch.ops.aten


def _shape(x: Any) -> Any:
    """The counter hands a custom formula shapes (torch.Size) in place of tensors."""
    return x.shape if isinstance(x, torch.Tensor) else x


def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """The CPU's fused attention: the same matrix products as the CUDA kernels."""
    return flop_counter.sdpa_flop_count(_shape(query), _shape(key), _shape(value))


def _cpu_sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                       **kwargs: Any) -> int:
    return flop_counter.sdpa_backward_flop_count(_shape(grad_out), _shape(query), _shape(key), _shape(value))


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for the ops torch's counter lacks (only those this torch has)."""
    formulas: dict[Any, Callable[..., int]] = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward)):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            formulas[op] = formula
    return formulas


@dataclass(frozen=True)
class FlopCount:
    """The FLOPs of one run of a job: the total and, per aten op (`mm`, `addmm`, `bmm`, `convolution`,
    `_scaled_dot_product_*`, their backward ops), the share of each."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)

    def per_item(self, items: int) -> float:
        """FLOPs per image of a batch of `items`."""
        return self.total / items


def count_flops(fn: Callable[[], Any]) -> FlopCount:
    """Run `fn()` once and count its matrix FLOPs (forward, and backward if `fn` runs one).

    `fn` runs eagerly under the counter (a compiled function is counted by running its eager self: the count is the
    model's, whatever runs it). Returns a `FlopCount`."""
    with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as mode:
        fn()
    counts = mode.get_flop_counts().get("Global", {})
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counts.items()}
    return FlopCount(int(mode.get_total_flops()), by_op)


@dataclass(frozen=True)
class Achieved:
    """A measured rate: TFLOP/s from counted FLOPs and seconds, and the share of `peak_tflops` it reaches."""

    tflops: float
    peak_tflops: float | None

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation: achieved / peak (None without a peak)."""
        return None if not self.peak_tflops else self.tflops / self.peak_tflops


def achieved(flops: float, seconds: float, peak_tflops: float | None = None) -> Achieved:
    """`flops` done in `seconds`, in TFLOP/s, against `peak_tflops` (a spec-sheet or a measured matmul peak)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return Achieved(flops / seconds / 1e12, peak_tflops)
