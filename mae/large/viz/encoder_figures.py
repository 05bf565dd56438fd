"""Figures of what the encoder looks at: attention maps over the image, and patch-feature (PCA) maps.

Drawn on a bare `matplotlib.figure.Figure` (never pyplot), as `figures.py`; save them with
`figures.save_figure` (atomic).

The attention figure (`attention_figure`), panels by title:

* `heads="all"`: a top row with "input" (the model input; removed patches grey), "rollout" (when the maps
  hold one) and a legend saying how the maps are scaled; then one row per chosen layer, titled "block i":
  "mean" (the heads averaged, large) and "head 0" ... "head H-1" (small, in rows of up to 8). The mean and
  the heads of a block share one colour scale, 0 to the largest weight among them, drawn as a colour bar
  at the row's right end; the rollout has its own scale and colour bar;
* `heads="mean"`: one row: "input", "rollout" (when present), then "block i (mean)" for each layer; each map
  on its own scale, 0 to its largest weight, with a colour bar under it.

Each map is the cls token's attention to the patches (weights of a softmax over all tokens), upsampled
bilinearly to the image and blended over the image in grey (`overlay`), so the hue is the colour bar's
alone; removed patches are drawn plain grey (`REMOVED_GREY`). Colour-bar axes are labelled `COLORBAR`
(`figure_titles` leaves them out).

The PCA figure (`pca_figure`): "input", "PCA, block i" (the first three components as RGB, one colour per
patch) and, when computed, "foreground" (the PCA colours on the foreground patches, black elsewhere); under
the PCA panel the share of the variance each component explains, and a warning line when the image is
near-uniform (`viz.pca.uniform_warning`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, FigureBase
from matplotlib.ticker import MaxNLocator

from ..data.images import denormalize
from ..errors import invalid_argument
from .attention import AttentionMaps
from .figures import drawable_text

__all__ = ["ALPHA", "ATTENTION_LABEL", "COLORBAR", "HEADS", "REMOVED_GREY", "ROLLOUT_LABEL", "attention_figure",
           "figure_titles", "overlay", "pca_figure"]

HEADS: tuple[str, ...] = ("all", "mean")
REMOVED_GREY = 0.5  # the grey of removed patches (R = G = B)
ALPHA = 0.6  # the attention colour's weight over the image
COLORBAR = "<colorbar>"  # the label of every colour bar's axes
ATTENTION_LABEL = "cls -> patch attention weight"
ROLLOUT_LABEL = "rollout weight (cls row)"
_CMAP = "inferno"
_HEADS_PER_ROW = 8
_CELL_IN = 1.3  # one small panel, inches
_BAR_IN = 1.0  # right of a block row: its colour bar, ticks and label


def overlay(image: torch.Tensor, values: torch.Tensor, *, alpha: float = ALPHA, cmap: str = _CMAP,
            vmax: float | None = None) -> torch.Tensor:
    """An (h, w) map (NaN: removed patch) over an (H, W, 3) image in [0, 1] -> (H, W, 3) in [0, 1].

    The map is scaled to [0, 1] by `vmax` (default its own largest finite value; values above are clipped),
    upsampled bilinearly to the image, coloured and blended with weight `alpha`; the pixels of removed patches
    are `REMOVED_GREY`. `alpha=0` greys the removed patches of the plain image."""
    if image.dim() != 3 or image.shape[-1] != 3 or values.dim() != 2:
        raise invalid_argument("values", f"overlay needs an (H, W, 3) image and an (h, w) map, got "
                                         f"{tuple(image.shape)} and {tuple(values.shape)}")
    big_h, big_w = image.shape[:2]
    v = values.detach().float().cpu()
    removed = torch.isnan(v)
    top = _top(v) if vmax is None else float(vmax)
    v = torch.nan_to_num(v, nan=0.0) / (top if top > 0 else 1.0)
    up = F.interpolate(v[None, None], size=(big_h, big_w), mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    gone = F.interpolate(removed[None, None].float(), size=(big_h, big_w), mode="nearest")[0, 0] > 0.5  # (H, W)
    colour = torch.from_numpy(colormaps[cmap](up.clamp(0, 1).numpy())[..., :3]).float()  # (H, W, 3)
    out = (1 - alpha) * image.float().cpu() + alpha * colour
    out[gone] = REMOVED_GREY
    return out.clamp(0.0, 1.0)


def _top(values: torch.Tensor) -> float:
    """The largest finite value of a map (0 when it has none)."""
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if finite.numel() else 0.0


def _image_hw3(image: torch.Tensor) -> torch.Tensor:
    """A normalised (C, H, W) model input -> (H, W, 3) pixels in [0, 1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise invalid_argument("image", f"image must be a normalised (3, H, W) tensor, got {tuple(image.shape)}")
    return denormalize(image.detach().float().cpu()).permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)


def _grey(pixels: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) colour -> (H, W, 3) grey (ITU-R 601 luma), the background the maps are blended over."""
    luma = (pixels * torch.tensor([0.299, 0.587, 0.114])).sum(dim=-1, keepdim=True)
    return luma.expand_as(pixels).clamp(0.0, 1.0)


def _show(container: FigureBase, spec, pixels: torch.Tensor, title: str, fontsize: float) -> Axes:  # noqa: ANN001
    ax = container.add_subplot(spec)
    ax.imshow(pixels.numpy())
    ax.set_title(title, fontsize=fontsize)
    ax.set_axis_off()
    return ax


def _colorbar(container: FigureBase, cax: Axes, vmax: float, label: str, *, horizontal: bool, fontsize: float) -> None:
    """A colour bar from 0 to `vmax` in `_CMAP` on `cax`, labelled; its axes labelled `COLORBAR`."""
    mappable = ScalarMappable(Normalize(0.0, vmax if vmax > 0 else 1.0), colormaps[_CMAP])
    bar = container.colorbar(mappable, cax=cax, orientation="horizontal" if horizontal else "vertical")
    bar.locator = MaxNLocator(3 if horizontal else 4)
    bar.update_ticks()
    bar.ax.tick_params(labelsize=fontsize * 0.85)
    bar.set_label(label, fontsize=fontsize)
    cax.set_label(COLORBAR)


def _bar_below(container: FigureBase, ax: Axes, vmax: float, label: str) -> None:
    """A horizontal colour bar 0.1 inch under `ax`, 0.12 inch high, sized in inches (as `figures._draw_error`)."""
    slot_h = ax.bbox.height / container.dpi
    cax = ax.inset_axes((0.0, -(0.1 + 0.12) / slot_h, 1.0, 0.12 / slot_h))
    _colorbar(container, cax, vmax, label, horizontal=True, fontsize=8)


def attention_figure(image: torch.Tensor, maps: AttentionMaps, *, heads: str = "all", title: str | None = None,
                     note: str | None = None) -> Figure:
    """One image's attention figure (panels and scales: see the module docstring). `maps` holds this image
    alone (a batch of one); `image` is its normalised (3, H, W) model input."""
    if heads not in HEADS:
        raise invalid_argument("heads", f"heads must be 'all' (every head and their mean) or 'mean', got {heads!r}")
    if maps.patches.shape[0] != 1:
        raise invalid_argument("maps", f"attention_figure draws one image; got maps of {maps.patches.shape[0]}")
    pixels = _image_hw3(image)
    under = _grey(pixels)
    plain = overlay(pixels, maps.to_grid(torch.zeros_like(maps.patches, dtype=torch.float32))[0], alpha=0.0)
    rolled = maps.rollout_grid()[0] if maps.rollout is not None else None
    header = " | ".join(drawable_text(p) for p in (title, note) if p)
    if heads == "mean":
        return _means_figure(maps, under, plain, rolled, header)
    return _heads_figure(maps, under, plain, rolled, header)


def _means_figure(maps: AttentionMaps, under: torch.Tensor, plain: torch.Tensor, rolled: torch.Tensor | None,
                  header: str) -> Figure:
    """One row: input, rollout, each layer's head mean; each map on its own scale, its colour bar under it."""
    drawn: list[tuple[str, torch.Tensor | None, str]] = [("input", None, "")]
    if rolled is not None:
        drawn.append(("rollout", rolled, ROLLOUT_LABEL))
    drawn += [(f"block {i} (mean)", maps.mean_grid(i)[0], ATTENTION_LABEL) for i in maps.layers]
    width, height = 3.0 * len(drawn), 4.4 + (0.4 if header else 0.0)
    fig = Figure(figsize=(width, height))
    if header:
        fig.suptitle(header, fontsize=13, y=1.0 - 0.08 / height, va="top")
    legend = "each map on its own scale: 0 to its largest weight (colour bar under it), over the image in grey"
    fig.text(0.5, 1.0 - ((0.5 if header else 0.1) + 0.05) / height, legend, ha="center", va="top",
             fontsize=min(10.0, width * 72 * 0.96 / (0.55 * len(legend))), color="0.25")
    top = 1.0 - ((0.5 if header else 0.1) + 0.75) / height
    grid = fig.add_gridspec(1, len(drawn), left=0.01, right=0.99, bottom=0.85 / height, top=top, wspace=0.08)
    for j, (name, values, label) in enumerate(drawn):
        if values is None:
            _show(fig, grid[0, j], plain, name, 12)
            continue
        vmax = _top(values)
        ax = _show(fig, grid[0, j], overlay(under, values, vmax=vmax), name, 12)
        _bar_below(fig, ax, vmax, label)
    return fig


def _heads_figure(maps: AttentionMaps, under: torch.Tensor, plain: torch.Tensor, rolled: torch.Tensor | None,
                  header: str) -> Figure:
    """A top row (input, rollout, the legend) and a row per layer (mean, heads, one shared colour bar)."""
    num_heads = next(iter(maps.cls.values())).shape[1]
    cols = min(num_heads, _HEADS_PER_ROW)
    rows = math.ceil(num_heads / cols)
    big = max(rows, 2)  # the mean panel spans `big` x `big` cells
    cells = big + cols
    width = _CELL_IN * cells + _BAR_IN + 0.1
    row_in = _CELL_IN * big + 0.5
    head_in = 0.5 if header else 0.0
    fig = Figure(figsize=(width, head_in + row_in * (1 + len(maps.layers))))
    heights = ([head_in] if header else []) + [row_in] * (1 + len(maps.layers))
    subs = list(fig.subfigures(len(heights), 1, height_ratios=heights, hspace=0.0, squeeze=False)[:, 0])
    if header:
        subs.pop(0).text(0.5, 0.5, header, ha="center", va="center", fontsize=13)

    def grid(sub: FigureBase, nrows: int):  # noqa: ANN202 - the panels' cells, then a narrow column for the colour bar
        return sub.add_gridspec(nrows, cells + 1, left=0.01, right=1.0 - 0.8 / width, bottom=0.03, top=0.85,
                                wspace=0.05, hspace=0.25, width_ratios=[1.0] * cells + [0.12])

    top = subs.pop(0)
    g = grid(top, 1)
    first = [("input", plain, None)] + ([("rollout", rolled, _top(rolled))] if rolled is not None else [])
    span = big if len(first) * big + 2 <= cells else max(cells // (len(first) + 1), 1)
    for j, (name, px, vmax) in enumerate(first):
        shown = px if vmax is None else overlay(under, px, vmax=vmax)
        _show(top, g[0, j * span:(j + 1) * span], shown, name, 11)
    if rolled is not None:
        _colorbar(top, top.add_subplot(g[0, cells]), _top(rolled), ROLLOUT_LABEL, horizontal=False, fontsize=9)
    box = g[0, len(first) * span:cells].get_position(top)
    legend = ("The cls token's attention to each patch, blended over the image in grey; removed patches plain "
              "grey. Each block row shares one scale, mean and heads: 0 to the largest weight among them (colour "
              "bar at its right). The rollout has its own scale.")
    chars = max(int(box.width * width * 72 / (0.62 * 9)), 12)
    top.text(box.x0 + 0.01, box.y1, textwrap.fill(legend, chars), ha="left", va="top", fontsize=9, color="0.25")
    for layer, sub in zip(maps.layers, subs):
        sub.suptitle(f"block {layer}", fontsize=12, y=0.99, va="top")
        g = grid(sub, big)
        mean = maps.mean_grid(layer)[0]
        per_head = maps.heads_grid(layer)[0]  # (H, h, w)
        vmax = max(_top(mean), _top(per_head))
        _show(sub, g[:, :big], overlay(under, mean, vmax=vmax), "mean", 11)
        for k in range(num_heads):
            r, c = divmod(k, cols)
            _show(sub, g[r * big // rows:(r + 1) * big // rows, big + c], overlay(under, per_head[k], vmax=vmax),
                  f"head {k}", 8)
        _colorbar(sub, sub.add_subplot(g[:, cells]), vmax, f"{ATTENTION_LABEL}\n(block {layer}: mean and heads)",
                  horizontal=False, fontsize=9)
    return fig


def pca_figure(image: torch.Tensor, rgb: torch.Tensor, *, layer: int, foreground: torch.Tensor | None = None,
               title: str | None = None, note: str | None = None, explained: Sequence[float] | None = None,
               warning: str | None = None) -> Figure:
    """The patch-feature map beside the image: "input", "PCA, block `layer`" and, with a `foreground` (h, w) bool
    map, "foreground"; under the panels the variance the three components explain, above them a warning.

    Args:
        image: the normalised (3, H, W) model input.
        rgb: (h, w, 3) in [0, 1], one colour per patch (drawn as blocks at the image's size).
        layer: the block the colours come from; only named in the panel title.
        foreground: an (h, w) bool map: a third panel keeps the colours of its patches, the others black.
        title, note: joined by " | " above the panels (either may be None).
        explained: the share of the variance of components 1, 2, 3 (`viz.pca.explained_share`), written under the
            panels as "explained variance: R 41.2%, G 12.3%, B 8.1%".
        warning: a line in red under the title (`viz.pca.uniform_warning`), "warning: ..." (wrapped to the width).
    """
    pixels = _image_hw3(image)
    if rgb.dim() != 3 or rgb.shape[-1] != 3:
        raise invalid_argument("rgb", f"rgb must be (h, w, 3) in [0, 1], got {tuple(rgb.shape)}")
    big_h, big_w = pixels.shape[:2]

    def blocks(t: torch.Tensor) -> torch.Tensor:  # (h, w, 3) -> (H, W, 3), nearest: one colour per patch
        up = F.interpolate(t.permute(2, 0, 1)[None].float(), size=(big_h, big_w), mode="nearest")[0]  # (3, H, W)
        return up.permute(1, 2, 0).clamp(0.0, 1.0)  # (H, W, 3)

    panels = [("input", pixels), (f"PCA, block {layer}", blocks(rgb.cpu()))]
    if foreground is not None:
        if tuple(foreground.shape) != tuple(rgb.shape[:2]):
            raise invalid_argument("foreground", f"foreground must be (h, w) = {tuple(rgb.shape[:2])}, "
                                                 f"got {tuple(foreground.shape)}")
        panels.append(("foreground", blocks(rgb.cpu() * foreground.cpu()[..., None].float())))
    header = " | ".join(drawable_text(p) for p in (title, note) if p)
    width = 3.5 * len(panels)
    warned = textwrap.wrap(f"warning: {drawable_text(warning)}", max(int(width * 72 * 0.96 / (0.6 * 10.5)), 20)) \
        if warning else []
    top_in = (0.5 if header else 0.1) + 0.24 * len(warned) + 0.45  # the title, the warning, the panel names
    bottom_in = 0.4 if explained is not None else 0.05
    height = top_in + 3.3 + bottom_in
    fig = Figure(figsize=(width, height))
    if header:
        fig.suptitle(header, fontsize=13, y=1.0 - 0.08 / height, va="top")
    if warned:
        fig.text(0.5, 1.0 - ((0.5 if header else 0.1) + 0.02) / height, "\n".join(warned), ha="center", va="top",
                 fontsize=10.5, color="#b00000", linespacing=1.25)
    grid = fig.add_gridspec(1, len(panels), left=0.01, right=0.99, bottom=bottom_in / height, top=1.0 - top_in / height,
                            wspace=0.04)
    for j, (name, px) in enumerate(panels):
        _show(fig, grid[0, j], px, name, 12)
    if explained is not None:
        shares = ", ".join(f"{c} {_percent(v)}" for c, v in zip("RGB", explained))
        fig.text(0.5, 0.12 / height, f"explained variance (components 1-3 as R, G, B): {shares}", ha="center",
                 va="bottom", fontsize=min(11.0, width * 72 * 0.96 / (0.55 * 70)))
    return fig


def _percent(share: float) -> str:
    return f"{100.0 * float(share):.1f}%" if math.isfinite(float(share)) else "unknown"


def figure_titles(fig: FigureBase) -> list[str]:
    """Every panel title of a figure (a figure's axes include its subfigures'), in drawing order; colour bars
    (axes labelled `COLORBAR`) left out."""
    return [ax.get_title() for ax in fig.axes if ax.get_label() != COLORBAR]
