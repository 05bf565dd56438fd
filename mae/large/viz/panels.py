"""The official demo's four panels of a reconstruction (original, masked, reconstruction, reconstruction +
visible) and the error map, as images: `make_panels` follows `run_one_image` of the official
`demo/mae_visualize.ipynb` step by step. The figures that arrange them are `figures.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..data.images import denormalize
from ..models.mae import MaskedAutoencoderViT
from ..utils.atomic import atomic_path

__all__ = ["PANEL_TITLES", "ReconstructionPanels", "error_map", "make_panels", "panel_of", "pil_image", "save_panel",
           "unnormalize_pred"]

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
    x, pred, mask = _cpu_inputs(model, imgs, pred, mask)
    n = x.shape[0]

    if norm_pix:
        pred = unnormalize_pred(model, x, pred, mask)

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


def unnormalize_pred(
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


def panel_of(panels: ReconstructionPanels, name: str) -> torch.Tensor:
    return {"original": panels.original, "masked": panels.masked, "reconstruction": panels.reconstruction,
            "visible": panels.reconstruction_visible}[name]


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
