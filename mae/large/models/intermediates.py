"""Intermediate layers: the token sequence after chosen blocks, with timm's `forward_intermediates` semantics.

Both models expose `forward_intermediates` (a thin method calling `collect_intermediates` here) with the
signature and meaning of timm's `VisionTransformer.forward_intermediates` and its index rule
`feature_take_indices` (huggingface/pytorch-image-models, `timm/models/vision_transformer.py` and
`timm/models/_features.py`; semantics learned from there, the code is this project's):

* `indices`: None = every block; an int n = the last n blocks; a sequence = those blocks, a negative
  index counting from the end. The intermediates come in block order, each block once. Unlike timm, an
  index out of range, or a selection of no block, is an error rather than silently nothing.
* `norm=True` passes each intermediate through the model's final token norm (the classifier with
  `global_pool=True` has none, as in timm where `norm` is then the identity).
* `output_fmt`: "NCHW" (N, D, h, w) patch grids, or "NLC" (N, L, D) patch tokens; the cls token is split
  off either way and comes back as (N, 1, D) with `return_prefix_tokens=True`, each intermediate then being
  a `(patches, prefix)` pair.
* `stop_early=True` runs the blocks only up to the deepest one asked for (the returned final tokens are
  then those of that block, through the norm, as in timm).
* returns `(final, intermediates)`, `final` the (N, 1 + T, D) token sequence through the final norm, or the
  intermediates alone with `intermediates_only=True`.

The masked autoencoder also masks (`mask_ratio` / `noise` / `mask`, as its `forward_encoder`): the kept
tokens are no grid, so with masking every intermediate is a `KeptTokens` (the tokens and the patch index of
each), whatever `output_fmt` says.

This module imports no model class: the models import it (they call it from their method).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import nn

from ..errors import invalid_argument

__all__ = ["OUTPUT_FORMATS", "EncoderTokens", "KeptTokens", "collect_intermediates", "take_indices"]

OUTPUT_FORMATS: tuple[str, ...] = ("NCHW", "NLC")
NUM_PREFIX_TOKENS = 1  # the cls token


@dataclass(frozen=True)
class EncoderTokens:
    """What the first block sees: the embedded tokens, cls first, and where each patch token comes from."""

    x: torch.Tensor  # (N, 1 + T, D) cls token first, then T patch tokens (T = L, or the kept ones)
    patches: torch.Tensor  # (N, T) int64: the grid index (row-major) of each patch token
    grid: tuple[int, int]  # (h, w) patch grid of the input

    @property
    def num_patches(self) -> int:
        """L, the patches of the whole grid (T of them are tokens here)."""
        return self.grid[0] * self.grid[1]

    @property
    def masked(self) -> bool:
        """True when some patches were removed (the tokens are not a full grid)."""
        return self.x.shape[1] - NUM_PREFIX_TOKENS < self.num_patches

    @property
    def in_grid_order(self) -> bool:
        """True when the tokens are the whole grid in row-major order (a grid can be formed by a reshape)."""
        if self.masked:
            return False
        order = torch.arange(self.num_patches, device=self.patches.device)
        return bool((self.patches == order).all())


def grid_tokens(x: torch.Tensor, grid: tuple[int, int]) -> EncoderTokens:
    """`EncoderTokens` of an unmasked run: every patch, in grid order."""
    n = x.shape[0]
    patches = torch.arange(grid[0] * grid[1], device=x.device).expand(n, -1)  # (N, L)
    return EncoderTokens(x, patches, grid)


class KeptTokens(NamedTuple):
    """The patch tokens of a masked run (no grid): the tokens in the order the blocks saw them, and the grid
    index of each (scatter them into a grid with `patches`)."""

    tokens: torch.Tensor  # (N, kept, D)
    patches: torch.Tensor  # (N, kept) int64, row-major grid index


def take_indices(num_blocks: int, indices: int | Sequence[int] | None, argument: str = "indices") -> list[int]:
    """The blocks `indices` selects, sorted: None = all, an int n = the last n, a sequence = those (negative
    from the end). timm's `feature_take_indices`, plus range checks (`invalid_argument(argument, ...)`)."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        n = int(indices)
        if not 1 <= n <= num_blocks:
            raise invalid_argument(argument, f"{argument}={n} asks for the last {n} blocks; the model has {num_blocks}, "
                                              f"so give 1 to {num_blocks} (or a list of block indices)")
        return list(range(num_blocks - n, num_blocks))
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise invalid_argument(argument, f"{argument} must be an int (the last n blocks), a list of block indices or "
                                          f"None (all), got {indices!r}")
    taken: set[int] = set()
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise invalid_argument(argument, f"block indices must be integers, got {index!r}")
        if not -num_blocks <= int(index) < num_blocks:
            raise invalid_argument(argument, f"block {int(index)} does not exist: the model has {num_blocks} blocks "
                                              f"(0 to {num_blocks - 1}, or -{num_blocks} to -1 from the end)")
        taken.add(int(index) % num_blocks)
    if not taken:
        raise invalid_argument(argument, f"{argument} selects no block; give at least one block index")
    return sorted(taken)


def check_output_fmt(output_fmt: str) -> str:
    if output_fmt not in OUTPUT_FORMATS:
        raise invalid_argument("output_fmt", f"output_fmt must be 'NCHW' (patch grids) or 'NLC' (token sequences), "
                                             f"got {output_fmt!r}")
    return output_fmt


def collect_intermediates(
    blocks: Sequence[nn.Module],
    tokens: EncoderTokens,
    *,
    final_norm: Callable[[torch.Tensor], torch.Tensor],
    indices: int | Sequence[int] | None = None,
    return_prefix_tokens: bool = False,
    norm: bool = False,
    stop_early: bool = False,
    output_fmt: str = "NCHW",
    intermediates_only: bool = False,
    checkpointing: bool = False,
) -> list | tuple[torch.Tensor, list]:
    """Run `blocks` over `tokens`, keeping the outputs of the blocks `indices` selects (see the module
    docstring).

    Args:
        blocks: the model's transformer blocks, in order.
        tokens: what the first block sees (`EncoderTokens`: cls first, and where each patch token comes from).
        final_norm: the model's token norm (identity when it has none); applied to `final`, and with `norm` to each
            intermediate.
        indices: None = every block, an int n = the last n, a sequence = those blocks (negative from the end).
        return_prefix_tokens: each intermediate as a `(patches, prefix)` pair, the cls token (N, 1, D) as prefix.
        norm: pass each intermediate through `final_norm`.
        stop_early: run the blocks only up to the deepest one selected (`final` is then that block's output).
        output_fmt: `NCHW` (N, D, h, w) grids or `NLC` (N, L, D) sequences; a masked run gives `KeptTokens` either way.
        intermediates_only: return the intermediates alone, without `final`.
        checkpointing: recompute each block in backward (non-reentrant activation checkpointing); the caller decides
            when (the classifier: only while training with gradients on).
    """
    check_output_fmt(output_fmt)
    take = take_indices(len(blocks), indices)
    wanted = set(take)
    run = list(blocks)[: take[-1] + 1] if stop_early else list(blocks)
    x = tokens.x
    kept: list[torch.Tensor] = []
    for i, blk in enumerate(run):
        # As the classifier's own forward: non-reentrant checkpointing while training, when asked.
        x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False) if checkpointing else blk(x)
        if i in wanted:
            kept.append(final_norm(x) if norm else x)

    prefix = [y[:, :NUM_PREFIX_TOKENS] for y in kept]  # (N, 1, D) each
    patch_tokens = [y[:, NUM_PREFIX_TOKENS:] for y in kept]  # (N, T, D) each
    formatted: list = [_format(y, tokens, output_fmt) for y in patch_tokens]
    if return_prefix_tokens:
        formatted = list(zip(formatted, prefix))
    if intermediates_only:
        return formatted
    return final_norm(x), formatted


def _format(y: torch.Tensor, tokens: EncoderTokens, output_fmt: str) -> torch.Tensor | KeptTokens:
    """One intermediate's patch tokens (N, T, D) as asked: a grid, a sequence, or `KeptTokens` when masked."""
    if tokens.masked:
        return KeptTokens(y, tokens.patches)
    if not tokens.in_grid_order:  # every patch, in another order (noise at mask ratio 0): back to grid order
        y = torch.gather(y, 1, torch.argsort(tokens.patches, dim=1).unsqueeze(-1).expand(-1, -1, y.shape[-1]))
    if output_fmt == "NLC":
        return y  # (N, L, D)
    n, _, d = y.shape
    h, w = tokens.grid
    return y.reshape(n, h, w, d).permute(0, 3, 1, 2).contiguous()  # (N, L, D) -> (N, h, w, D) -> (N, D, h, w)
