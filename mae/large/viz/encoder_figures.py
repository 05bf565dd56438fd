"""Figures of what the encoder looks at: attention maps over the image, and patch-feature (PCA) maps.

Drawn on a bare `matplotlib.figure.Figure` (never pyplot), as `figures.py`; save them with
`figures.save_figure` (atomic).

The attention figure (`attention_figure`), panels by title:

* `heads="all"`: a top row with "input" (the model input; removed patches grey) and "rollout" (when the
  maps hold one); then one row per chosen layer, titled "block i": "mean" (the heads averaged, large) and
  "head 0" ... "head H-1" (small, in rows of up to 8);
* `heads="mean"`: one row: "input", "rollout" (when present), then "block i (mean)" for each layer.

Each map is the cls token's attention to the patches, scaled to its own maximum, upsampled bilinearly to
the image and blended over it (`overlay`); removed patches are drawn plain grey (`REMOVED_GREY`).

The PCA figure (`pca_figure`): "input", "PCA, block i" (the first three components as RGB, one colour per
patch) and, when computed, "foreground" (the PCA colours on the foreground patches, black elsewhere).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure, FigureBase

from ..data.images import denormalize
from ..errors import invalid_argument
from .attention import AttentionMaps
from .figures import drawable_text

__all__ = ["ALPHA", "HEADS", "REMOVED_GREY", "attention_figure", "figure_titles", "overlay", "pca_figure"]

HEADS: tuple[str, ...] = ("all", "mean")
REMOVED_GREY = 0.5  # the grey of removed patches (R = G = B)
ALPHA = 0.6  # the attention colour's weight over the image
_CMAP = "inferno"
_HEADS_PER_ROW = 8
_CELL_IN = 1.3  # one small panel, inches


def overlay(image: torch.Tensor, values: torch.Tensor, *, alpha: float = ALPHA, cmap: str = _CMAP) -> torch.Tensor:
    """An (h, w) map (NaN: removed patch) over an (H, W, 3) image in [0, 1] -> (H, W, 3) in [0, 1].

    The map is scaled to [0, 1] by its largest finite value, upsampled bilinearly to the image, coloured and
    blended with weight `alpha`; the pixels of removed patches are `REMOVED_GREY`. `alpha=0` greys the removed
    patches of the plain image."""
    if image.dim() != 3 or image.shape[-1] != 3 or values.dim() != 2:
        raise invalid_argument("values", f"overlay needs an (H, W, 3) image and an (h, w) map, got "
                                         f"{tuple(image.shape)} and {tuple(values.shape)}")
    big_h, big_w = image.shape[:2]
    v = values.detach().float().cpu()
    removed = torch.isnan(v)
    top = float(torch.nan_to_num(v, nan=0.0).max())
    v = torch.nan_to_num(v, nan=0.0) / (top if top > 0 else 1.0)
    up = F.interpolate(v[None, None], size=(big_h, big_w), mode="bilinear", align_corners=False)[0, 0]  # (H, W)
    gone = F.interpolate(removed[None, None].float(), size=(big_h, big_w), mode="nearest")[0, 0] > 0.5  # (H, W)
    colour = torch.from_numpy(colormaps[cmap](up.clamp(0, 1).numpy())[..., :3]).float()  # (H, W, 3)
    out = (1 - alpha) * image.float().cpu() + alpha * colour
    out[gone] = REMOVED_GREY
    return out.clamp(0.0, 1.0)


def _image_hw3(image: torch.Tensor) -> torch.Tensor:
    """A normalised (C, H, W) model input -> (H, W, 3) pixels in [0, 1]."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise invalid_argument("image", f"image must be a normalised (3, H, W) tensor, got {tuple(image.shape)}")
    return denormalize(image.detach().float().cpu()).permute(1, 2, 0)  # (3, H, W) -> (H, W, 3)


def _show(container: FigureBase, spec, pixels: torch.Tensor, title: str, fontsize: float) -> None:  # noqa: ANN001
    ax = container.add_subplot(spec)
    ax.imshow(pixels.numpy())
    ax.set_title(title, fontsize=fontsize)
    ax.set_axis_off()


def attention_figure(image: torch.Tensor, maps: AttentionMaps, *, heads: str = "all", title: str | None = None,
                     note: str | None = None) -> Figure:
    """One image's attention figure (panels: see the module docstring). `maps` holds this image alone
    (a batch of one); `image` is its normalised (3, H, W) model input."""
    if heads not in HEADS:
        raise invalid_argument("heads", f"heads must be 'all' (every head and their mean) or 'mean', got {heads!r}")
    if maps.patches.shape[0] != 1:
        raise invalid_argument("maps", f"attention_figure draws one image; got maps of {maps.patches.shape[0]}")
    pixels = _image_hw3(image)
    first = [("input", overlay(pixels, maps.to_grid(torch.zeros_like(maps.patches, dtype=torch.float32))[0], alpha=0.0))]
    if maps.rollout is not None:
        first.append(("rollout", overlay(pixels, maps.rollout_grid()[0])))
    header = " | ".join(drawable_text(p) for p in (title, note) if p)
    if heads == "mean":
        panels = first + [(f"block {i} (mean)", overlay(pixels, maps.mean_grid(i)[0])) for i in maps.layers]
        fig = Figure(figsize=(3.0 * len(panels), 3.6 + (0.4 if header else 0.0)))
        grid = fig.add_gridspec(1, len(panels), left=0.01, right=0.99, bottom=0.02, top=0.82 if header else 0.9,
                                wspace=0.04)
        for j, (name, px) in enumerate(panels):
            _show(fig, grid[0, j], px, name, 12)
    else:
        num_heads = next(iter(maps.cls.values())).shape[1]
        cols = min(num_heads, _HEADS_PER_ROW)
        rows = math.ceil(num_heads / cols)
        big = max(rows, 2)  # the mean panel spans `big` x `big` cells
        width = _CELL_IN * (big + cols) + 0.2
        row_in = _CELL_IN * big + 0.5
        head_in = 0.5 if header else 0.0
        fig = Figure(figsize=(width, head_in + row_in * (1 + len(maps.layers))))
        heights = ([head_in] if header else []) + [row_in] * (1 + len(maps.layers))
        subs = list(fig.subfigures(len(heights), 1, height_ratios=heights, hspace=0.0, squeeze=False)[:, 0])
        if header:
            subs.pop(0).text(0.5, 0.5, header, ha="center", va="center", fontsize=13)
        top = subs.pop(0)
        grid = top.add_gridspec(1, big + cols, left=0.01, right=0.99, bottom=0.03, top=0.85, wspace=0.05)
        for j, (name, px) in enumerate(first):
            _show(top, grid[0, j * big:(j + 1) * big] if j * big + big <= big + cols else grid[0, -1], px, name, 11)
        for layer, sub in zip(maps.layers, subs):
            sub.suptitle(f"block {layer}", fontsize=12, y=0.99, va="top")
            g = sub.add_gridspec(big, big + cols, left=0.01, right=0.99, bottom=0.03, top=0.85, wspace=0.05, hspace=0.25)
            _show(sub, g[:, :big], overlay(pixels, maps.mean_grid(layer)[0]), "mean", 11)
            per_head = maps.heads_grid(layer)[0]  # (H, h, w)
            for k in range(num_heads):
                r, c = divmod(k, cols)
                _show(sub, g[r * big // rows:(r + 1) * big // rows, big + c], overlay(pixels, per_head[k]), f"head {k}", 8)
    if header and heads == "mean":
        fig.suptitle(header, fontsize=13)
    return fig


def pca_figure(image: torch.Tensor, rgb: torch.Tensor, *, layer: int, foreground: torch.Tensor | None = None,
               title: str | None = None, note: str | None = None) -> Figure:
    """The patch-feature map beside the image: "input", "PCA, block `layer`" and, with a `foreground` (h, w) bool
    map, "foreground".

    Args:
        image: the normalised (3, H, W) model input.
        rgb: (h, w, 3) in [0, 1], one colour per patch (drawn as blocks at the image's size).
        layer: the block the colours come from; only named in the panel title.
        foreground: an (h, w) bool map: a third panel keeps the colours of its patches, the others black.
        title, note: joined by " | " above the panels (either may be None).
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
    fig = Figure(figsize=(3.5 * len(panels), 4.0 + (0.4 if header else 0.0)))
    if header:
        fig.suptitle(header, fontsize=13)
    grid = fig.add_gridspec(1, len(panels), left=0.01, right=0.99, bottom=0.02, top=0.82 if header else 0.9, wspace=0.04)
    for j, (name, px) in enumerate(panels):
        _show(fig, grid[0, j], px, name, 12)
    return fig


def figure_titles(fig: FigureBase) -> list[str]:
    """Every panel title of a figure (a figure's axes include its subfigures'), in drawing order."""
    return [ax.get_title() for ax in fig.axes]
