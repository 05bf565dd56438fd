"""Masks the user chooses: generators, a mini-syntax, and the bridge to the official `noise`.

A mask is a boolean tensor on the patch grid, row-major like `patchify`: (L,) for one image or (N, L) for a
batch, True = removed (hidden from the encoder), as the official `mask` output (1 = removed). Every
generator is a pure function of (grid, parameters, seed) -> (L,) bool.

The official forward keeps the `len_keep` patches with the smallest `noise`. A mask is therefore exactly a
noise that ranks the kept patches first, in grid order (`noise_for_mask`); the model turns `mask=` into that
noise, so `mask=` and `noise=` give bit-identical outputs.

Mini-syntax (`parse_mask`, the CLI's `--mask`):

    random[:R]            the official random mask (ratio R, default: the run's mask ratio)
    block[:R]             BEiT blockwise masking to exactly round(R * L) patches
    grid                  keep one patch in each 2x2 cell (ratio 0.75 on even grids)
    box:X0,Y0,X1,Y1       a rectangle in pixels of the model input (or fractions: all values in [0, 1]
                          with a decimal point); a patch is removed when its centre lies inside
    left | right | top | bottom   that half of the image
    center[:R]            a centred square of R of the patches (default 0.25)
    file:PATH             a black-and-white image, white = removed, resized to the grid by majority
    patches:I,J,...       these patch indices (row-major)
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Size2D
from ..errors import invalid_argument, shown
from ..utils.imagefile import decode_image

KINDS: tuple[str, ...] = ("random", "block", "grid", "box", "left", "right", "top", "bottom", "center", "file",
                          "patches")
# Kinds whose shape does not depend on a ratio: a list of ratios (a sweep) makes no sense with them.
FIXED_SHAPE: frozenset[str] = frozenset({"box", "left", "right", "top", "bottom", "file", "patches", "grid"})
DEFAULT_CENTER_RATIO = 0.25


# ---- generators -----------------------------------------------------------------------------------------
def _count(grid: Size2D) -> int:
    return grid[0] * grid[1]


def _check_ratio(ratio: float, name: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise invalid_argument(name, f"{name} must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def random_mask(grid: Size2D, ratio: float, seed: int) -> torch.Tensor:
    """The official random mask: `torch.manual_seed(seed); noise = torch.rand(1, L)`, the
    `int(L * (1 - ratio))` smallest kept."""
    length = _count(grid)
    keep = int(length * (1 - _check_ratio(ratio)))
    noise = torch.rand(1, length, generator=torch.Generator().manual_seed(seed))[0]
    mask = torch.ones(length, dtype=torch.bool)
    mask[torch.argsort(noise)[:keep]] = False
    return mask


def block_mask(grid: Size2D, ratio: float, seed: int, *, min_patches: int = 4, min_aspect: float = 0.3) -> torch.Tensor:
    """BEiT's blockwise masking (Bao et al. 2022, `MaskingGenerator`): rectangles of random area (at least
    `min_patches`) and aspect in [min_aspect, 1/min_aspect] until the target is reached, then topped up or
    trimmed at random to exactly `round(ratio * L)` removed patches."""
    rows, cols = grid
    target = round(_check_ratio(ratio) * rows * cols)
    rng = random.Random(seed)
    mask = [[False] * cols for _ in range(rows)]
    count = 0
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    while count < target:
        budget = target - count
        added = 0
        for _ in range(10):  # BEiT's attempts per block
            area = rng.uniform(min_patches, max(min_patches, budget))
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < h < rows and 0 < w < cols):
                continue
            top, left = rng.randint(0, rows - h), rng.randint(0, cols - w)
            new = sum(not mask[r][c] for r in range(top, top + h) for c in range(left, left + w))
            if 0 < new <= budget:
                for r in range(top, top + h):
                    for c in range(left, left + w):
                        mask[r][c] = True
                added = new
                break
        if added == 0:
            break  # no block fits the remaining budget: top up below
        count += added
    flat = [m for row in mask for m in row]
    unmasked = [i for i, m in enumerate(flat) if not m]
    for i in rng.sample(unmasked, max(0, target - count)):
        flat[i] = True
    return torch.tensor(flat, dtype=torch.bool)


def grid_mask(grid: Size2D) -> torch.Tensor:
    """Keep the top-left patch of every 2x2 cell: ratio 0.75 on even grids (more kept on odd ones)."""
    rows, cols = grid
    r = torch.arange(rows)[:, None]
    c = torch.arange(cols)[None, :]
    return (~((r % 2 == 0) & (c % 2 == 0))).flatten()


def _centres(grid: Size2D, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) of every patch centre, row-major. (L,), (L,)."""
    rows, cols = grid
    y = (torch.arange(rows, dtype=torch.float64) + 0.5) * patch_size
    x = (torch.arange(cols, dtype=torch.float64) + 0.5) * patch_size
    return x[None, :].expand(rows, cols).flatten(), y[:, None].expand(rows, cols).flatten()


def box_mask(grid: Size2D, patch_size: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Remove the patches whose centre lies in the box (x0, y0, x1, y1) in pixels of the model input,
    half-open: x0 <= x < x1, y0 <= y < y1."""
    x0, y0, x1, y1 = box
    if not (x0 < x1 and y0 < y1):
        raise invalid_argument("box", f"box {box} must have x0 < x1 and y0 < y1")
    x, y = _centres(grid, patch_size)
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def half_mask(grid: Size2D, side: str) -> torch.Tensor:
    """Remove the left, right, top or bottom half (by patch centre; on an odd grid the middle row or
    column goes to the right / bottom half)."""
    rows, cols = grid
    x, y = _centres(grid, 1)
    halves = {"left": x < cols / 2, "right": x >= cols / 2, "top": y < rows / 2, "bottom": y >= rows / 2}
    if side not in halves:
        raise invalid_argument("side", f"side must be left, right, top or bottom, got {side!r}")
    return halves[side]


def center_mask(grid: Size2D, ratio: float = DEFAULT_CENTER_RATIO) -> torch.Tensor:
    """Remove a centred square of about `ratio` of the patches (side round(sqrt(ratio * L)), at most the
    shorter side of the grid)."""
    rows, cols = grid
    side = min(rows, cols, max(1, round(math.sqrt(_check_ratio(ratio) * rows * cols))))
    top, left = (rows - side) // 2, (cols - side) // 2
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask.flatten()


def file_mask(path: str | os.PathLike[str], grid: Size2D) -> torch.Tensor:
    """A black-and-white image, white = removed, laid over the grid: a patch is removed when more than half of its
    area is white (grey levels are thresholded at 128 first), the fraction weighted by the exact area each mask
    pixel covers of the patch's cell, whatever the image's size (`_cell_overlaps`; integer arithmetic, no rounding)."""
    path = Path(path)
    # The guards of every image this project reads (`utils.imagefile`): a bomb is refused from its header.
    white = decode_image(path, lambda img: np.asarray(img.convert("L"), dtype=np.uint8) >= 128, what="mask image",
                         folder_hint="give a black-and-white image file (white = removed)")  # (H, W)
    rows, cols = grid
    height, width = white.shape
    oy, ox = _cell_overlaps(height, rows), _cell_overlaps(width, cols)  # (rows, H), (cols, W)
    covered = oy @ white.astype(np.int64) @ ox.T  # (rows, cols): white area of each cell, in (1/rows x 1/cols) px
    return torch.from_numpy(2 * covered > height * width).flatten()  # cell area: (H / rows) x (W / cols) px


def _cell_overlaps(pixels: int, cells: int) -> np.ndarray:
    """(cells, pixels) int64: the length pixel k covers of cell i along one axis, in units of 1 / cells of a pixel
    (cell i spans [i * pixels, (i + 1) * pixels), pixel k spans [k * cells, (k + 1) * cells) in those units)."""
    i = np.arange(cells, dtype=np.int64)[:, None]
    k = np.arange(pixels, dtype=np.int64)[None, :]
    return np.clip(np.minimum((i + 1) * pixels, (k + 1) * cells) - np.maximum(i * pixels, k * cells), 0, None)


def patches_mask(grid: Size2D, indices: list[int]) -> torch.Tensor:
    """Remove these patch indices (row-major)."""
    length = _count(grid)
    bad = [i for i in indices if not 0 <= i < length]
    if bad:
        raise invalid_argument("patches", f"patch indices {bad[:5]} are outside the grid of {length} patches "
                                          f"(0 to {length - 1})")
    mask = torch.zeros(length, dtype=torch.bool)
    mask[list(indices)] = True
    return mask


# ---- the mini-syntax --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskSpec:
    """A parsed `--mask` value: the kind and its parameter (a ratio, a box, a side, a path, indices)."""

    kind: str
    ratio: float | None = None  # random, block, center
    box: tuple[float, float, float, float] | None = None
    fractions: bool = False  # box given as fractions of the image
    path: Path | None = None
    indices: tuple[int, ...] = ()
    text: str = ""

    @property
    def fixed_shape(self) -> bool:
        return self.kind in FIXED_SHAPE


def _numbers(text: str, what: str) -> list[float]:
    """Comma-separated finite numbers (`1e400`, `inf` and `nan` are refused: no mask parameter is infinite)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise invalid_argument("mask", f"{what} must be numbers separated by commas, got {shown(text)}") from None
    if not all(math.isfinite(v) for v in values):
        raise invalid_argument("mask", f"{what} must be finite numbers, got {shown(text)}")
    return values


def parse_mask(text: str) -> MaskSpec:
    """`block:0.75` -> MaskSpec("block", ratio=0.75); see the module docstring for the syntax."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind == "half":
        kind, arg = arg.lower(), ""
    if kind not in KINDS:
        raise invalid_argument("mask", f"unknown mask {shown(text)}; use one of {', '.join(KINDS)} (e.g. block:0.75, "
                                       "box:60,40,180,200, right, file:mask.png, patches:0,1,14)")
    if kind in ("random", "block", "center"):
        values = _numbers(arg, "a ratio") if arg else []
        if arg and len(values) != 1:
            raise invalid_argument("mask", f"{kind} takes one ratio such as {kind}:0.75, got {shown(arg)}")
        ratio = _check_ratio(values[0], "mask ratio") if values else None
        return MaskSpec(kind, ratio=ratio, text=text)
    if kind == "box":
        values = _numbers(arg, "box coordinates")
        if len(values) != 4:
            raise invalid_argument("mask", f"box needs 4 numbers x0,y0,x1,y1, got {shown(arg)}")
        fractions = all(0.0 <= v <= 1.0 for v in values) and "." in arg
        return MaskSpec(kind, box=(values[0], values[1], values[2], values[3]), fractions=fractions, text=text)
    if kind == "file":
        if not arg:
            raise invalid_argument("mask", "file needs a path: file:mask.png")
        return MaskSpec(kind, path=Path(arg), text=text)
    if kind == "patches":
        values = _numbers(arg, "patch indices")
        if not values or any(v != int(v) or abs(v) >= 2**53 for v in values):  # beyond 2**53 a float is not exact
            raise invalid_argument("mask", f"patches needs whole indices such as patches:0,1,14, got {shown(arg)}")
        return MaskSpec(kind, indices=tuple(int(v) for v in values), text=text)
    if arg:
        raise invalid_argument("mask", f"mask {kind} takes no parameter, got {shown(text)}")
    return MaskSpec(kind, text=text)


def build_mask(spec: MaskSpec, img_size: Size2D, patch_size: int, *, ratio: float = 0.75, seed: int = 0) -> torch.Tensor:
    """The (L,) bool mask `spec` describes for an input of `img_size` pixels; `ratio` and `seed` serve the
    kinds that need them and give none of their own."""
    grid = (img_size[0] // patch_size, img_size[1] // patch_size)
    r = spec.ratio if spec.ratio is not None else ratio
    if spec.kind == "random":
        return random_mask(grid, r, seed)
    if spec.kind == "block":
        return block_mask(grid, r, seed)
    if spec.kind == "grid":
        return grid_mask(grid)
    if spec.kind == "center":
        return center_mask(grid, spec.ratio if spec.ratio is not None else DEFAULT_CENTER_RATIO)
    if spec.kind == "box":
        assert spec.box is not None
        box = spec.box
        if spec.fractions:
            h, w = img_size
            box = (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
        return box_mask(grid, patch_size, box)
    if spec.kind == "file":
        assert spec.path is not None
        return file_mask(spec.path, grid)
    if spec.kind == "patches":
        return patches_mask(grid, list(spec.indices))
    return half_mask(grid, spec.kind)


# ---- masks as the model sees them ---------------------------------------------------------------------------
def check_mask(mask: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """A user mask as an (N, L) bool tensor, checked: right shape, the same number of removed patches in
    every row (the encoder runs a dense batch), at least one visible patch. A bool tensor (True = removed) or a
    number tensor of 0 and 1 (1 = removed: the `mask` a forward returns, the official format). Raises `ValueError`."""
    if not isinstance(mask, torch.Tensor):
        raise invalid_argument("mask", f"mask must be a bool tensor (True = removed) or a tensor of 0 and 1 (1 = "
                                       f"removed), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
            bad = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist() if not mask.is_complex() else [mask.dtype]
            raise invalid_argument("mask", f"a mask of numbers must hold only 0 (kept) and 1 (removed), as the mask "
                                           f"a forward returns; found {bad}")
        mask = mask != 0
    if mask.dim() == 1:
        mask = mask.unsqueeze(0).expand(batch, -1)
    if tuple(mask.shape) != (batch, length):
        raise invalid_argument("mask", f"mask must have shape (N, L) = ({batch}, {length}) or (L,) = ({length},), "
                                       f"got {tuple(mask.shape)}")
    removed = mask.sum(dim=1)
    if bool((removed != removed[0]).any()):
        raise invalid_argument("mask", f"every row of mask must remove the same number of patches (the encoder runs "
                                       f"a dense batch), got {sorted(set(removed.tolist()))}")
    if int(removed[0]) >= length:
        raise invalid_argument("mask", "mask removes every patch; leave at least one visible")
    return mask


def noise_for_mask(mask: torch.Tensor) -> torch.Tensor:
    """The official `noise` that makes `random_masking` keep exactly the visible patches: the kept ones
    rank first, in grid order, then the removed ones. (N, L) float32."""
    length = mask.shape[-1]
    order = torch.arange(length, dtype=torch.float32, device=mask.device)
    return order + mask.to(torch.float32) * length  # kept: 0..L-1, removed: L..2L-1


def mask_as_noise(mask: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, int]:
    """A user mask as what a compiled forward takes: (`noise_for_mask` (N, L), the number of patches kept), the mask
    checked first (`check_mask`). `model(imgs, noise=noise, len_keep=kept)` is the pass `model(imgs, mask=mask)` runs,
    with the count read here, outside any graph."""
    mask = check_mask(mask, batch, length)
    return noise_for_mask(mask), length - int(mask[0].sum())


def mask_ratio_of(mask: torch.Tensor) -> float:
    """The fraction of removed patches in the first row."""
    row = mask if mask.dim() == 1 else mask[0]
    return float(row.sum()) / row.numel()


def nested_masks(grid: Size2D, ratios: list[float], seed: int) -> list[torch.Tensor]:
    """Official random masks for several ratios from one seed: one noise, so a higher ratio removes a
    superset of the patches a lower one removes."""
    return [random_mask(grid, r, seed) for r in ratios]
