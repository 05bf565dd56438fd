"""NaN and infinite values in a set of tensors: counted with one read of each finite tensor, described in one line.

A leaf: the loading chain (`load.scan`), `inspect` (`summary`) and the writers (`save.save_as`) all ask it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import short_list


def count_nonfinite(tensor: torch.Tensor) -> int:
    """How many values of `tensor` are NaN or infinite (0 for a tensor that is not floating point).

    A finite tensor is read once: NaN and infinities propagate through a sum (NaN + x is NaN, Inf + -Inf
    is NaN), so a finite sum proves every value finite. A sum that is not finite is confirmed value by
    value, because finite values can also overflow the sum (a false alarm the count clears).
    """
    if not tensor.is_floating_point() or tensor.is_meta or tensor.numel() == 0:
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """name -> number of NaN / infinite values, for the tensors of `state` that hold any, in state order."""
    counts = {name: count_nonfinite(tensor) for name, tensor in state.items()}
    return {name: n for name, n in counts.items() if n}


def describe_nonfinite(counts: Mapping[str, int], state: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    """`blocks.0.attn.qkv.weight (3 of 12288 values), pos_embed (1 of 768 values) and 2 more`."""
    return short_list([f"{name} ({n} of {state[name].numel()} values)" for name, n in counts.items()], limit)
