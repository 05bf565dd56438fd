"""The official demo's reconstruction figure: original | masked | reconstruction | reconstruction + visible,
and the figures built from the same panels: a chosen list of panels with an error map, a mask-ratio sweep
(the animation is `animation.py`).

`make_panels` follows `run_one_image` of the official `demo/mae_visualize.ipynb` step by step; the
figures are drawn on a bare `matplotlib.figure.Figure` (never pyplot), so drawing has no global state
and works in threads and on headless machines.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from matplotlib.ticker import MaxNLocator
from PIL import Image

from ..data.images import denormalize
from ..errors import invalid_argument
from ..models.mae import MaskedAutoencoderViT
from ..utils.atomic import atomic_path

__all__ = [
    "DEFAULT_PANELS",
    "ERROR_LABEL",
    "NESTED_NOTE",
    "PANEL_NAMES",
    "PANEL_TITLES",
    "ReconstructionPanels",
    "SweepRow",
    "check_panel_names",
    "drawable_text",
    "error_map",
    "make_panels",
    "mask_ratio_label",
    "panels_figure",
    "reconstruction_figure",
    "save_figure",
    "save_panel",
    "sweep_figure",
]

# The official demo's subplot titles, in order.
PANEL_TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
# The panels a figure can show, by name: the demo's four ("visible" = reconstruction + visible) and the error map.
PANEL_NAMES = ("original", "masked", "reconstruction", "visible", "error")
DEFAULT_PANELS = PANEL_NAMES[:4]
_TITLE_OF = dict(zip(PANEL_NAMES, (*PANEL_TITLES, "squared error")))
# The error panel's colour bar: the per-patch mean of (pred - target) ** 2, target = model.loss_target.
ERROR_LABEL = "squared error (loss units)"
_ERROR_CMAP = "inferno"
_NEUTRAL = "0.82"  # visible patches in the error panel: light gray, no error to show

# The same epsilon as the model's norm_pix target, (var + 1e-6) ** 0.5, so un-normalising is its inverse.
_NORM_PIX_EPS = 1.0e-6


@dataclass(frozen=True)
class ReconstructionPanels:
    """One image's four panels, each a float (H, W, 3) CPU tensor in [0, 1], and its pixel mask."""

    original: torch.Tensor
    masked: torch.Tensor  # removed patches show the ImageNet mean colour, as in the official demo
    reconstruction: torch.Tensor  # the decoder's prediction for every patch, visible ones included
    reconstruction_visible: torch.Tensor  # visible patches from the original, removed ones predicted
    mask: torch.Tensor  # (H, W) float, 1 = removed, 0 = visible

    def as_list(self) -> list[torch.Tensor]:
        """The four panels in the order of `PANEL_TITLES`."""
        return [self.original, self.masked, self.reconstruction, self.reconstruction_visible]


def make_panels(
    model: MaskedAutoencoderViT,
    imgs: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    norm_pix: bool = False,
) -> list[ReconstructionPanels]:
    """The four panels of each image, computed exactly as the official demo does.

    imgs: (N, C, H, W) normalised model input; pred: (N, L, p*p*C) decoder output; mask: (N, L)
    with 1 = removed. In normalised space the demo forms `masked = x * (1 - mask)`, so removed pixels
    are 0, which after denormalisation is the ImageNet mean colour (a neutral gray-brown), and
    `x * (1 - mask) + y * mask` for "reconstruction + visible". Every panel is then denormalised
    with the ImageNet mean/std and clamped to [0, 1].

    With `norm_pix=True` (a model trained with `norm_pix_loss`), `pred` is in per-patch normalised
    units and has no absolute brightness of its own. Each image's prediction is mapped back with
    statistics of its *visible* patches only (the removed ones are what the model must not see):
    `pred * s + m`, where m is the mean of the visible patches' means and s the mean of their stds,
    each patch's statistics taken over all its p*p*C values, std as the model's target computes it
    (unbiased variance + 1e-6, square root). This is exact when all patches share the same statistics
    and a plausible rendering otherwise.
    """
    cfg = model.config
    p, c = cfg.patch_size, cfg.in_chans
    if c != 3:
        raise ValueError(f"panels need 3-channel (RGB) images to denormalise, the model has in_chans={c}")
    x, pred, mask = _cpu_inputs(model, imgs, pred, mask)
    n = x.shape[0]

    if norm_pix:
        pred = _unnormalize_pred(model, x, pred, mask)

    y = model.unpatchify(pred)  # (N, C, H, W)
    pixel_mask = model.unpatchify(mask.unsqueeze(-1).repeat(1, 1, p * p * c))  # (N, C, H, W)
    im_masked = x * (1 - pixel_mask)
    im_paste = x * (1 - pixel_mask) + y * pixel_mask

    def hwc(t: torch.Tensor) -> torch.Tensor:
        return denormalize(t).permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3) in [0, 1]

    original, masked, recon, paste = hwc(x), hwc(im_masked), hwc(y), hwc(im_paste)
    return [
        ReconstructionPanels(original[i], masked[i], recon[i], paste[i], pixel_mask[i, 0].contiguous())
        for i in range(n)
    ]


def _cpu_inputs(
    model: MaskedAutoencoderViT, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """imgs, pred and mask checked against the model and brought to the CPU in float32: the panels are
    for drawing, and pred may be bf16 on a GPU."""
    p, c = model.config.patch_size, model.config.in_chans
    for name, t in (("imgs", imgs), ("pred", pred), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    x = imgs.detach().float().cpu()
    pred = pred.detach().float().cpu()
    mask = mask.detach().float().cpu()
    num_patches = model.patch_embed.num_patches
    if x.dim() != 4:
        raise ValueError(f"imgs must be (N, {c}, H, W), got {tuple(x.shape)}")
    n = x.shape[0]
    if pred.shape != (n, num_patches, p * p * c):
        raise ValueError(f"pred must have shape ({n}, {num_patches}, {p * p * c}), got {tuple(pred.shape)}")
    if mask.shape != (n, num_patches):
        raise ValueError(f"mask must have shape ({n}, {num_patches}), got {tuple(mask.shape)}")
    return x, pred, mask


def error_map(model: MaskedAutoencoderViT, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each removed patch's squared error, as an image: (N, H, W) float32 on the CPU, NaN on visible patches.

    A patch's value is the mean over its p*p*C values of `(pred - model.loss_target(imgs)) ** 2`, repeated
    over its pixels: the loss's own units (per-patch normalised pixels when the model has `norm_pix_loss`),
    so the mean over an image's removed patches (`torch.nanmean` of the map) is `model.per_image_loss`.
    Arguments as `make_panels`: imgs (N, C, H, W) normalised, pred (N, L, p*p*C), mask (N, L), 1 = removed.
    A mask that removes nothing gives a map that is NaN everywhere (there is no reconstruction to judge).
    """
    x, pred, mask = _cpu_inputs(model, imgs, pred, mask)
    per_patch = ((pred - model.loss_target(x)) ** 2).mean(dim=-1)  # (N, L), as per_image_loss
    per_patch = per_patch.masked_fill(mask < 0.5, float("nan"))
    values = model.config.patch_size ** 2 * model.config.in_chans
    return model.unpatchify(per_patch.unsqueeze(-1).expand(-1, -1, values).contiguous())[:, 0].contiguous()


def _unnormalize_pred(
    model: MaskedAutoencoderViT, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Map a norm_pix prediction back to normalised-image units with visible-patch statistics."""
    target = model.patchify(x)  # (N, L, p*p*C)
    patch_mean = target.mean(dim=-1)  # (N, L)
    patch_std = (target.var(dim=-1) + _NORM_PIX_EPS) ** 0.5  # (N, L), as model.loss_target
    visible = 1.0 - mask
    count = visible.sum(dim=1)  # (N,)
    if bool((count == 0).any()):
        raise ValueError("norm_pix un-normalisation needs at least one visible patch per image; the mask removes all")
    mean = (patch_mean * visible).sum(dim=1) / count  # (N,)
    std = (patch_std * visible).sum(dim=1) / count  # (N,)
    return pred * std[:, None, None] + mean[:, None, None]


def reconstruction_figure(
    panels: ReconstructionPanels,
    *,
    title: str | None = None,
    loss: float | None = None,
    note: str | None = None,
    figsize: tuple[float, float] = (16.0, 4.8),
) -> Figure:
    """One row of four images titled as in the official demo, with title, loss and note on top.

    The suptitle joins the parts that are given, e.g. "cat.jpg | loss 0.4321 | random decoder"; there
    is none when all three are None. Axes are switched off (no ticks, no frame), as `plt.axis('off')`
    in the demo. The same figure as `panels_figure(panels, DEFAULT_PANELS, ...)`.
    """
    return panels_figure(panels, DEFAULT_PANELS, title=title, loss=loss, note=note, figsize=figsize)


def panels_figure(
    panels: ReconstructionPanels,
    names: Sequence[str] = DEFAULT_PANELS,
    *,
    error: torch.Tensor | None = None,
    error_max: float | None = None,
    title: str | None = None,
    loss: float | None = None,
    note: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One row of the panels `names` (a subset of `PANEL_NAMES`, in the order given), titled as
    `reconstruction_figure`, which is this figure with the default four panels.

    The "error" panel needs `error`, this image's (H, W) map from `error_map`: removed patches coloured
    by their squared error (0 to `error_max`, default the map's largest value), visible ones light gray,
    with a colour bar below it in the loss's units (`ERROR_LABEL`). `error` is ignored when "error" is
    not in `names`. The default size is 4 x 4.8 inches a panel, plus 1 inch of height for the colour bar.
    """
    names = check_panel_names(names)
    error = _check_error(error, panels, "error") if "error" in names else None
    figsize = figsize or (4.0 * len(names), 4.8 + (_COLORBAR_IN if error is not None else 0.0))
    fig = Figure(figsize=figsize)
    parts = _title_parts(title, loss, note)
    if parts:
        fig.suptitle(" | ".join(parts), fontsize=16)
    # Fixed margins instead of a layout engine: the saved size stays exactly figsize * dpi.
    bottom = 0.02 + (_COLORBAR_IN / figsize[1] if error is not None else 0.0)
    _draw_row(fig, panels, names, error, _error_max(error_max, [error]), fontsize=16, titles=True,
              margins=(0.01, 0.99, bottom, 0.82 if parts else 0.9))
    return fig


class SweepRow(NamedTuple):
    """One row of `sweep_figure`: a mask ratio, the image's loss at it, its panels and (optionally) its
    error map. A plain tuple `(ratio, loss, panels[, error])` is taken as well."""

    ratio: float
    loss: float | None
    panels: ReconstructionPanels
    error: torch.Tensor | None = None


# What `sweep_figure(nested=True)` writes under the title.
NESTED_NOTE = "same seed: the masks are nested (a higher mask ratio removes a superset of the patches)"


def sweep_figure(
    rows: Sequence[SweepRow | tuple],
    *,
    names: Sequence[str] = DEFAULT_PANELS,
    title: str | None = None,
    note: str | None = None,
    nested: bool = False,
    error_max: float | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One image at several mask ratios: a row per `SweepRow` (in the order given) of the panels `names`,
    each row titled with its ratio and loss ("mask ratio 0.50 | loss 0.4321"), the panel names over the
    first row only.

    `title` and `note` go on top, joined as in `reconstruction_figure`; `nested=True` (the caller drew
    every mask from the same seed, e.g. `masks.nested_masks`) adds `NESTED_NOTE` below them. With an
    "error" panel every row needs its error map, and all rows share one colour scale (0 to `error_max`,
    default the largest error of any row), so the rows can be compared. Each row is a subfigure
    (`fig.subfigs`, after a header subfigure when there is a title, note or `nested`). The default size is
    3 inches a panel, plus room for the titles and colour bars.
    """
    names = check_panel_names(names)
    checked = _check_rows(rows, "error" in names)
    if not checked:
        raise invalid_argument("rows", "sweep_figure needs at least one row")
    scale_max = _error_max(error_max, [r.error for r in checked])

    header = _title_parts(title, None, note)
    header_lines = [" | ".join(header)] if header else []
    if nested:
        header_lines.append(NESTED_NOTE)
    has_error = "error" in names
    row_in = _SWEEP_PANEL_IN + _SWEEP_ROW_TITLE_IN + (_COLORBAR_IN if has_error else 0.0)
    header_in = 0.15 + 0.32 * len(header_lines) if header_lines else 0.0
    natural = (_SWEEP_PANEL_IN * len(names) + 0.2, header_in + row_in * len(checked))
    fig = Figure(figsize=figsize or natural)
    heights = ([header_in] if header_lines else []) + [row_in] * len(checked)
    subfigs = list(fig.subfigures(len(heights), 1, height_ratios=heights, hspace=0.0, squeeze=False)[:, 0])
    if header_lines:
        head = subfigs.pop(0)
        width_pt = fig.get_figwidth() * 72.0 * 0.96
        for i, line in enumerate(header_lines):
            # Smaller type for a line that would not fit (DejaVu Sans averages about 0.55 em a character).
            size = min(14.0 if i == 0 and header else 11.0, width_pt / (0.55 * max(len(line), 1)))
            head.text(0.5, 1.0 - (0.1 + 0.32 * (i + 0.5)) / header_in, line, ha="center", va="center", fontsize=size)
    for i, (row, sub) in enumerate(zip(checked, subfigs)):
        sub.suptitle(_row_title(row.ratio, row.loss), fontsize=13, y=1.0 - 0.04 / row_in, va="top")
        bottom = (0.05 + (_COLORBAR_IN if has_error else 0.0)) / row_in
        top = 1.0 - _SWEEP_ROW_TITLE_IN / row_in
        _draw_row(sub, row.panels, names, row.error, scale_max, fontsize=11, titles=i == 0,
                  margins=(0.01, 0.99, bottom, top))
    return fig


def mask_ratio_label(ratio: float) -> str:
    """"mask ratio 0.35": two decimals, more only when the ratio needs them ("mask ratio 0.125")."""
    return f"mask ratio {_format_ratio(ratio)}"


def check_panel_names(names: Sequence[str]) -> tuple[str, ...]:
    """`names` as a tuple, after checking each is one of `PANEL_NAMES`, none twice, at least one."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    valid = ", ".join(PANEL_NAMES)
    if not names:
        raise invalid_argument("panels", f"choose at least one panel of: {valid}")
    for name in names:
        if name not in PANEL_NAMES:
            raise invalid_argument("panels", f"unknown panel {name!r}; the panels are: {valid}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise invalid_argument("panels", f"panel {repeated[0]!r} is named twice; name each of {valid} at most once")
    return names


# ---- layout helpers -------------------------------------------------------------------------------
_COLORBAR_IN = 1.0  # height under a row for the error colour bar, its ticks and its label
_SWEEP_PANEL_IN = 3.0
_SWEEP_ROW_TITLE_IN = 0.6  # the row title and, on the first row, the panel names


def _title_parts(title: str | None, loss: float | None, note: str | None) -> list[str]:
    parts = []
    if title:
        parts.append(drawable_text(title))
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if note:
        parts.append(drawable_text(note))
    return parts


def _format_ratio(ratio: float) -> str:
    ratio = float(ratio)
    return f"{ratio:.2f}" if round(ratio, 2) == ratio else f"{ratio:g}"


def _row_title(ratio: float, loss: float | None) -> str:
    return mask_ratio_label(ratio) + ("" if loss is None else f" | loss {float(loss):.4f}")


def _check_error(error: torch.Tensor | None, panels: ReconstructionPanels, where: str) -> torch.Tensor:
    if error is None:
        raise invalid_argument("error", f"the error panel needs {where} = error_map(...)[i], this image's (H, W) error map")
    if not isinstance(error, torch.Tensor) or error.shape != panels.mask.shape:
        shape = tuple(error.shape) if isinstance(error, torch.Tensor) else type(error).__name__
        raise invalid_argument("error", f"{where} must be an (H, W) tensor of shape {tuple(panels.mask.shape)} "
                                        f"(the panels' size), got {shape}")
    return error.detach().float().cpu()


def _check_rows(rows: Sequence[SweepRow | tuple], need_error: bool) -> list[SweepRow]:
    checked = []
    for i, row in enumerate(rows):
        if not isinstance(row, tuple) or len(row) not in (3, 4):
            raise invalid_argument("rows", f"row {i} must be (ratio, loss, panels[, error]), got {type(row).__name__}")
        row = SweepRow(*row)
        if isinstance(row.ratio, bool) or not isinstance(row.ratio, numbers.Real) or not 0.0 <= float(row.ratio) <= 1.0:
            raise invalid_argument("rows", f"row {i}: the mask ratio must be a number in [0, 1], got {row.ratio!r}")
        if not isinstance(row.panels, ReconstructionPanels):
            raise invalid_argument("rows", f"row {i}: panels must be ReconstructionPanels, got {type(row.panels).__name__}")
        error = _check_error(row.error, row.panels, f"row {i}'s error") if need_error else None
        checked.append(row._replace(error=error))
    return checked


def _error_max(error_max: float | None, errors: Sequence[torch.Tensor | None]) -> float:
    """The top of the error colour scale: `error_max`, else the largest finite error (1.0 when none is)."""
    if error_max is not None:
        if not math.isfinite(float(error_max)) or float(error_max) <= 0:
            raise invalid_argument("error_max", f"error_max must be a positive number, got {error_max!r}")
        return float(error_max)
    values = [float(torch.nan_to_num(e, nan=0.0, posinf=0.0).max()) for e in errors if e is not None and e.numel()]
    top = max(values, default=0.0)
    return top if top > 0 else 1.0


def _draw_row(
    container: FigureBase,
    panels: ReconstructionPanels,
    names: Sequence[str],
    error: torch.Tensor | None,
    error_max: float,
    *,
    fontsize: float,
    titles: bool,
    margins: tuple[float, float, float, float],
) -> list[Axes]:
    """The panels `names` side by side in `container` (a figure or subfigure), inside `margins`
    (left, right, bottom, top as fractions of the container)."""
    left, right, bottom, top = margins
    grid = container.add_gridspec(1, len(names), left=left, right=right, bottom=bottom, top=top, wspace=0.04)
    axes = []
    for j, name in enumerate(names):
        ax = container.add_subplot(grid[0, j])
        if name == "error":
            assert error is not None  # checked by the callers
            _draw_error(container, ax, error, error_max, fontsize)
        else:
            ax.imshow(panel_of(panels, name).detach().float().cpu().clamp(0.0, 1.0).numpy())
        if titles:
            ax.set_title(_TITLE_OF[name], fontsize=fontsize)
        ax.set_axis_off()
        axes.append(ax)
    return axes


def panel_of(panels: ReconstructionPanels, name: str) -> torch.Tensor:
    return {"original": panels.original, "masked": panels.masked, "reconstruction": panels.reconstruction,
            "visible": panels.reconstruction_visible}[name]


def _draw_error(container: FigureBase, ax: Axes, error: torch.Tensor, error_max: float, fontsize: float) -> None:
    """The error map on `ax` (NaN, the visible patches, in neutral gray) and a horizontal colour bar below
    it, sized in inches so that it looks the same whatever the panel's size."""
    from matplotlib import colormaps

    cmap = colormaps[_ERROR_CMAP].with_extremes(bad=_NEUTRAL)
    image = ax.imshow(error.numpy(), cmap=cmap, vmin=0.0, vmax=error_max, interpolation="nearest")
    slot_h = ax.bbox.height / container.dpi  # the panel's slot height in inches
    # 0.1 inch below the image, 0.15 inch high; ticks and the label fill the rest of _COLORBAR_IN.
    cax = ax.inset_axes((0.0, -(0.1 + 0.15) / slot_h, 1.0, 0.15 / slot_h))
    bar = container.colorbar(image, cax=cax, orientation="horizontal")
    bar.locator = MaxNLocator(4)
    bar.update_ticks()
    bar.ax.tick_params(labelsize=max(7.0, fontsize * 0.6))
    bar.set_label(ERROR_LABEL, fontsize=max(8.0, fontsize * 0.7))


@functools.cache
def _font_charmap() -> frozenset[int]:
    """The code points the figures' font can draw (matplotlib's default font, DejaVu Sans)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def drawable_text(text: str) -> str:
    """`text` with every character the font cannot draw written as a backslash escape (`\u4e2d`), so a
    file name in any script shows as something readable instead of boxes, and matplotlib has nothing to
    warn about. A name that is not valid UTF-8 (surrogate escapes) is shown with its bytes escaped."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    charmap = _font_charmap()
    return "".join(c if ord(c) in charmap or c in "\n\t" else c.encode("unicode_escape").decode("ascii") for c in text)


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write `fig` as a PNG of figsize * dpi pixels, atomically (no half-written file on failure).

    zlib level 1 rather than PIL's default 6: about half the save time for a file about 17% larger
    (docs/benchmarks.md), and saving is what a batch run waits on.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return path


def save_panel(image_hw3: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write one panel, (H, W, 3) in [0, 1] (or an (H, W) mask), as a PNG at its native pixel size."""
    if not isinstance(image_hw3, torch.Tensor) or image_hw3.dim() not in (2, 3) or (
        image_hw3.dim() == 3 and image_hw3.shape[-1] != 3
    ):
        shape = tuple(image_hw3.shape) if isinstance(image_hw3, torch.Tensor) else type(image_hw3).__name__
        raise ValueError(f"a panel must be an (H, W, 3) or (H, W) tensor in [0, 1], got {shape}")
    img = pil_image(image_hw3)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def pil_image(image_hw3: torch.Tensor) -> Image.Image:
    pixels = (image_hw3.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(pixels.contiguous().numpy())
