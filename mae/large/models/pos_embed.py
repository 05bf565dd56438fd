"""Position embeddings: the fixed 2-D sin-cos tables of MAE, and resizing of learned tables.

The MAE encoder and decoder position tables are not learned: they are a function of the patch grid.
They are computed here in float64 and cast to float32, exactly as the official NumPy code does, so
they match the released checkpoints bit for bit and can be regenerated for any grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim) table: sin half then cos half, frequencies 1/10000^(2i/D)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos table, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    out = torch.outer(positions.reshape(-1).to(torch.float64), omega)  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """The official `get_2d_sincos_pos_embed`, for square or rectangular grids.

    Returns a float32 table (cls_token + gh*gw, embed_dim) whose rows follow the patch order (row-major).
    As in the official code the first half of the channels encodes the *column* (width) coordinate and
    the second half the row: `np.meshgrid(grid_w, grid_h)` puts the width grid first.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2-D sin-cos table, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    # The official grid is float32 before it meets the float64 frequencies.
    rows = torch.arange(gh, dtype=torch.float32)
    cols = torch.arange(gw, dtype=torch.float32)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")  # (gh, gw) each
    emb = torch.cat([sincos_1d(embed_dim // 2, grid_c), sincos_1d(embed_dim // 2, grid_r)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.to(torch.float32)  # (1 + gh*gw, D) or (gh*gw, D)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_extra_tokens: int = 1,
) -> torch.Tensor:
    """Bicubically resize a learned (1, extra + gh*gw, D) table to `new_grid`, as the official
    `interpolate_pos_embed` does; the extra (cls) tokens are kept as they are.

    `old_grid` defaults to the square root of the patch count. A table already at `new_grid` is
    returned unchanged (no interpolation round trip).
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"expected a (1, tokens, dim) position table, got shape {tuple(pos_embed.shape)}")
    extra = pos_embed[:, :num_extra_tokens]  # (1, E, D)
    patches = pos_embed[:, num_extra_tokens:]  # (1, gh*gw, D)
    n = patches.shape[1]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer the grid of a table with {n} patch rows; pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not hold {n} patch rows")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)  # (1, gh'*gw', D)
    return torch.cat([extra, patches.to(pos_embed.dtype)], dim=1)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """(1, 1 + gh*gw, D) -> (1, 1 + gh'*gw', D): the official `interpolate_pos_embed`.

    Bicubic, align_corners=False; the cls row is kept; a table already on `new_grid` is returned as is.
    `old_grid` defaults to the square grid the official code assumes.
    """
    return resize_pos_embed(pos_embed, new_grid, old_grid, num_extra_tokens=1)
