"""The official demo's reconstruction figure: original | masked | reconstruction | reconstruction + visible.

`make_panels` follows `run_one_image` of the official `demo/mae_visualize.ipynb` step by step; the
figure is drawn on a bare `matplotlib.figure.Figure` (never pyplot), so drawing has no global state
and works in threads and on headless machines.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from PIL import Image

from .atomic import atomic_path
from .image import denormalize
from .model import MaskedAutoencoderViT

__all__ = ["PANEL_TITLES", "ReconstructionPanels", "make_panels", "reconstruction_figure", "save_figure", "save_panel"]

# The official demo's subplot titles, in order.
PANEL_TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")

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
    for name, t in (("imgs", imgs), ("pred", pred), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    # Everything on the CPU in float32: the panels are for drawing, and pred may be bf16 on a GPU.
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
    in the demo.
    """
    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, 4)
    for ax, image, name in zip(axes, panels.as_list(), PANEL_TITLES, strict=True):
        ax.imshow(image.detach().float().cpu().clamp(0.0, 1.0).numpy())
        ax.set_title(name, fontsize=16)
        ax.set_axis_off()
    parts = []
    if title:
        parts.append(drawable_text(title))
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if note:
        parts.append(note)
    if parts:
        fig.suptitle(" | ".join(parts), fontsize=16)
    # Fixed margins instead of a layout engine: the saved size stays exactly figsize * dpi.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.82 if parts else 0.9, wspace=0.04)
    return fig


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
    pixels = (image_hw3.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    img = Image.fromarray(pixels.contiguous().numpy())
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
