"""What a pre-training run shows while it learns: losses on fixed held-out images under fixed masks, a preview figure
of them, the loss curves, and the k-NN accuracy of the encoder's features (DINO-style monitoring; the official code
has none). Everything here runs on rank 0, in eval mode, and leaves the model's mode and the generators as they were.

The held-out losses, per epoch:
* `val_loss`: the model's own loss (its target: normalised or plain pixels) on the removed patches;
* `val_pixel_loss`: the same squared error in pixel space (the normalised image's units): a norm-pix prediction is
  mapped back with the statistics of the image's visible patches (`panels.unnormalize_pred`, what the figures show);
* `val_baseline_pixel_loss`: the baseline of predicting every removed patch as the mean colour of the visible pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.images import ImageFailure, load_image
from ..data.loader import Source
from ..data.records import ImageRef
from ..errors import ImageError
from ..models.mae import MaskedAutoencoderViT
from ..utils.device import autocast
from ..utils.keyed import derive_seed
from ..viz.figures import save_figure
from ..viz.panels import make_panels, unnormalize_pred
from ..viz.training import loss_figure, preview_figure

__all__ = ["Heldout", "heldout_images", "heldout_losses", "knn_top1", "save_loss_figure", "save_preview"]

PREVIEW = "preview.png"
LOSS_FIGURE = "loss.png"


@dataclass(frozen=True)
class Heldout:
    """K fixed images (the evaluation transform) and the fixed masking noise each is seen with, every epoch."""

    paths: list[ImageRef]  # image files or records (`data.records`)
    images: torch.Tensor  # (K, 3, H, W) normalised
    noise: torch.Tensor  # (K, L): the official masking noise (the smallest are kept)


def heldout_images(source: Source, count: int, size: tuple[int, int], num_patches: int, seed: int) -> Heldout:
    """`count` images spread evenly over `source` (the first readable ones from each spot), through the official
    evaluation transform, with masking noise drawn from `derive_seed(seed, "heldout", i)`."""
    step = max(1, len(source.paths) // max(count, 1))
    chosen: list[ImageRef] = []
    images = []
    for path in source.paths[::step]:
        if len(chosen) == count:
            break
        try:
            images.append(load_image(path, size=size, crop="eval"))
        except ImageError:
            continue
        chosen.append(path)
    if not chosen:
        raise ImageError("no held-out image could be read; check the images of the run")
    noise = torch.stack([torch.rand(num_patches, generator=torch.Generator().manual_seed(derive_seed(seed, "heldout", i)))
                         for i in range(len(chosen))])  # (K, L)
    return Heldout(chosen, torch.stack(images), noise)


@torch.no_grad()
def heldout_losses(model: MaskedAutoencoderViT, held: Heldout, mask_ratio: float, device: torch.device,
                   amp: str = "off") -> tuple[dict[str, float], Any]:
    """The held-out losses (module docstring) and the reconstruction they come from (for the preview)."""
    was_training = model.training
    model.eval()
    try:
        imgs = held.images.to(device)
        with autocast(amp, device):
            out = model.reconstruct(imgs, mask_ratio, held.noise.to(device))
        pred, mask = out.pred.float(), out.mask.float()  # (K, L, p*p*C), (K, L)
        target = model.patchify(imgs).float()  # (K, L, p*p*C) in the normalised image's units
        pixels = unnormalize_pred(model, imgs.float(), pred, mask) if model.norm_pix_loss else pred
        removed = mask.sum(dim=1)  # (K,)
        pixel_loss = (((pixels - target) ** 2).mean(dim=-1) * mask).sum(dim=1) / removed  # (K,)
        c = model.config.in_chans
        visible = (1 - mask)[:, :, None]  # (K, L, 1)
        patches = target.reshape(*target.shape[:2], -1, c)  # (K, L, p*p, C)
        colour = (patches * visible[..., None]).sum(dim=(1, 2)) / (visible.sum(dim=1) * patches.shape[2])  # (K, C)
        baseline = (((patches - colour[:, None, None, :]) ** 2).mean(dim=(-1, -2)) * mask).sum(dim=1) / removed
    finally:
        model.train(was_training)
    losses = {"val_loss": float(out.per_image_loss.float().mean()), "val_pixel_loss": float(pixel_loss.mean()),
              "val_baseline_pixel_loss": float(baseline.mean())}
    return losses, (out, out.per_image_loss.float().cpu().tolist())


def save_preview(model: MaskedAutoencoderViT, held: Heldout, reconstruction: Any, out_dir: Path, epoch: int,
                 note: str | None = None) -> Path:
    """`preview.png` (and `preview-{epoch}.png`, so the run's progress stays visible): the held-out images under their
    fixed masks, this epoch's reconstruction."""
    out, losses = reconstruction
    panels = make_panels(model, held.images, out.pred.float(), out.mask.float(), norm_pix=model.norm_pix_loss)
    fig = preview_figure(panels, losses, epoch=epoch, title="held-out reconstructions", note=note)
    save_figure(fig, out_dir / f"preview-{epoch}.png")
    return save_figure(fig, out_dir / PREVIEW)


def save_loss_figure(out_dir: Path, steps: Sequence[tuple[float, float]], records: Sequence[dict[str, Any]]) -> Path:
    """`loss.png`: the training loss per step (smoothed) and the held-out losses per epoch."""
    keys = ("val_loss", "val_pixel_loss", "val_baseline_pixel_loss")
    heldout = {k.replace("_", " "): [r.get(k) for r in records] for k in keys if any(k in r for r in records)}
    fig = loss_figure([s for s, _ in steps], [v for _, v in steps], [int(r["epoch"]) for r in records], heldout,
                      title="pre-training")
    return save_figure(fig, out_dir / LOSS_FIGURE)


def knn_top1(model: MaskedAutoencoderViT, train: Source, val: Source, device: torch.device, *, batch_size: int = 64,
             k: int = 20) -> float:
    """k-NN top-1 (cosine, DINO's weighted vote) of the encoder's cls features (after its final norm, the official
    linear probe's feature) on labelled val images by labelled train images, at the model's input size."""
    from ..evaluate.features import extract_features
    from ..evaluate.knn import knn
    from ..models.vit import VisionTransformer, ViTConfig

    vit = VisionTransformer(ViTConfig.from_mae(model.config, num_classes=0, global_pool=False)).to(device)
    vit.load_encoder_state(model.state_dict())

    def rows(source: Source) -> tuple[torch.Tensor, torch.Tensor]:
        got = [r for r in extract_features(vit, source.paths, batch_size=batch_size, crop="eval", device=device)
               if not isinstance(r, ImageFailure)]
        if not got:
            raise ImageError("no image of the k-NN monitoring sets could be read")
        return torch.stack([r.vector for r in got]), torch.tensor([source.labels[r.index] for r in got])

    (train_x, train_y), (val_x, val_y) = rows(train), rows(val)
    return knn(train_x, train_y, val_x, val_y, k=min(k, len(train_y))).top1


__all__ += ["LOSS_FIGURE", "PREVIEW"]
