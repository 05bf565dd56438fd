"""What the encoder looks at, over image files: attention maps and patch-feature maps (PCA), in input order.

Each job yields one result or one `ImageFailure` per path, in the order given: a file that cannot be read,
or an image whose maps are not finite (a damaged checkpoint loaded with `allow_nonfinite=True`, an overflow
in low precision), is a failure saying so, never a result. Images are preprocessed as the official demo
(`load_image`) at the model's size; batches run in eval mode under `torch.inference_mode` (the mode is
restored). Nothing here prints or writes files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.images import Crop, ImageFailure, image_batches
from ..errors import invalid_argument
from ..models.intermediates import take_indices
from ..models.mae import MaskedAutoencoderViT
from ..utils.device import autocast_context, nonfinite_fix, resolve_device
from ..viz.attention import AttentionMaps, attention_maps
from ..viz.pca import CovarianceAccumulator, PCABasis, fit_pca, foreground, project, to_rgb

__all__ = ["AttentionResult", "PCAResult", "attention_files", "pca_files"]


@dataclass(frozen=True)
class AttentionResult:
    path: Path
    index: int  # position in the `paths` given
    image: torch.Tensor  # (C, H, W) normalised model input, CPU
    maps: AttentionMaps  # a batch of one, CPU


@dataclass(frozen=True)
class PCAResult:
    path: Path
    index: int
    image: torch.Tensor  # (C, H, W) normalised model input, CPU
    layer: int  # the block whose tokens were used, counted from 0
    coords: torch.Tensor  # (h, w, 3) float32: the patch tokens along the first three components
    rgb: torch.Tensor  # (h, w, 3) in [0, 1]
    foreground: torch.Tensor | None  # (h, w) bool, when asked
    basis: PCABasis  # joint: the same for every image




class _EvalRun:
    """Eval mode, inference mode and autocast around a model's batch, the mode restored afterwards."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype

    def __call__(self, fn, imgs: torch.Tensor):  # noqa: ANN001, ANN204 - any function of the batch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), autocast_context(self.device, self.dtype):
                return fn(imgs.to(self.device))
        finally:
            self.model.train(was_training)


def _target(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    return resolve_device(device) if device is not None else next(model.parameters()).device


def _nonfinite(path: Path, what: str, dtype: torch.dtype) -> ImageFailure:
    return ImageFailure(path, f"{path}: its {what} are not finite (NaN or infinite values), so nothing was drawn; "
                              f"{nonfinite_fix(dtype)}")


def attention_files(
    model: MaskedAutoencoderViT,
    paths: Sequence[str | os.PathLike[str]],
    *,
    layers: int | Sequence[int] | None = (-1,),
    rollout: bool = False,
    mask_ratio: float | None = None,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    batch_size: int = 8,
    crop: Crop = "resize",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Iterator[AttentionResult | ImageFailure]:
    """The cls rows (and the rollout) of `attention_maps` for each image file. Masking as `attention_maps`,
    with `noise` or `mask` one (L,) row used for every image.

    Args:
        model: the masked autoencoder whose encoder is read; it is not moved.
        paths: the image files; one that cannot be read is yielded as an `ImageFailure` in its place.
        layers: the blocks whose cls rows are kept: an int n for the last n, block indices (negative from the end),
            or None for all (default the last).
        rollout: also compute the attention rollout through every block.
        mask_ratio: the share of patches removed before the blocks (default none: every patch).
        noise, mask: one (L,) noise row or bool mask row (True = removed) used for every image, not both
            (`MaskedAutoencoderViT.encoder_tokens`).
        batch_size: images per forward pass.
        crop: `resize` (the demo's squash), `center` or `eval` (`image.preprocess`); images come at the model's size.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        device: where the batches go (default: the model's; `resolve_device`).
    """
    take_indices(len(model.blocks), layers, "layers")  # fail before any image is read
    target = _target(model, device)
    run = _EvalRun(model, target, dtype)
    for batch in image_batches(paths, model.config.img_size, crop, batch_size):
        tensors = [t for _, _, t in batch if isinstance(t, torch.Tensor)]
        maps = None
        if tensors:
            n = len(tensors)
            rows = {"noise": None if noise is None else noise.reshape(1, -1).expand(n, -1),
                    "mask": None if mask is None else mask.reshape(1, -1).expand(n, -1)}
            maps = run(functools.partial(attention_maps, model, layers=layers, rollout=rollout, mask_ratio=mask_ratio,
                                         **rows), torch.stack(tensors))
        for index, path, item, row in _rows(batch):
            if isinstance(item, ImageFailure):
                yield item
                continue
            assert maps is not None
            one = _one(maps, row)
            finite = all(bool(torch.isfinite(t).all()) for t in one.cls.values())
            if one.rollout is not None:
                finite = finite and bool(torch.isfinite(one.rollout).all())
            yield AttentionResult(path, index, item, one) if finite else _nonfinite(path, "attention weights", dtype)


def _rows(batch: list) -> Iterator[tuple[int, Path, Any, int]]:
    """(input position, path, image or failure, row of the image in the batch's stacked tensor)."""
    row = 0
    for index, path, item in batch:
        yield index, path, item, row
        row += not isinstance(item, ImageFailure)


def _one(maps: AttentionMaps, i: int) -> AttentionMaps:
    """Image `i` of a batch's maps, on the CPU in float32 (copies: a result must not keep the batch alive)."""
    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[i: i + 1].float().cpu().clone()

    return AttentionMaps(maps.layers, {k: cut(v) for k, v in maps.cls.items()}, maps.patches[i: i + 1].cpu().clone(),
                         maps.grid,
                         None if maps.full is None else {k: cut(v) for k, v in maps.full.items()},
                         None if maps.rollout is None else cut(maps.rollout))


def pca_files(
    model: MaskedAutoencoderViT,
    paths: Sequence[str | os.PathLike[str]],
    *,
    layer: int = -1,
    joint: bool = True,
    with_foreground: bool = False,
    batch_size: int = 8,
    crop: Crop = "resize",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Iterator[PCAResult | ImageFailure]:
    """The patch tokens of block `layer` (through the encoder's final norm) of each image, along their first
    three principal components, as colours. `joint=True`: one PCA over every image (a first pass sums the
    D x D covariance, a second projects), so all share one colour space; `joint=False`: a PCA per image.

    Args:
        model: the masked autoencoder whose encoder is read (every patch, no masking); it is not moved.
        paths: the image files; one that cannot be read is yielded as an `ImageFailure` in its place.
        layer: the block whose tokens are used (counted from 0, negative from the end; default the last).
        joint: one PCA over every image's finite tokens (True) or one per image (False).
        with_foreground: also give each result a foreground mask (`viz.pca.foreground` of the first component).
        batch_size: images per forward pass.
        crop: `resize` (the demo's squash), `center` or `eval` (`image.preprocess`); images come at the model's size.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        device: where the batches go (default: the model's; `resolve_device`).
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise invalid_argument("layer", f"layer must be a block index (an integer), got {layer!r}")
    block = take_indices(len(model.blocks), [layer], "layer")[0]
    target = _target(model, device)
    run = _EvalRun(model, target, dtype)

    def tokens_of(imgs: torch.Tensor) -> torch.Tensor:  # (N, L, D) float32 on the CPU
        out = model.forward_intermediates(imgs, [block], norm=True, stop_early=True, output_fmt="NLC",
                                          intermediates_only=True)[0]
        return out.float().cpu()

    basis = None
    if joint:
        acc = CovarianceAccumulator(model.config.embed_dim)
        for batch in image_batches(paths, model.config.img_size, crop, batch_size):
            tensors = [t for _, _, t in batch if isinstance(t, torch.Tensor)]
            if tensors:
                tokens = run(tokens_of, torch.stack(tensors))
                finite = torch.isfinite(tokens).flatten(1).all(dim=1)  # (N,): only finite images count
                acc.update(tokens[finite])
        basis = acc.fit(3) if acc.count >= 2 else None
    for batch in image_batches(paths, model.config.img_size, crop, batch_size):
        tensors = [t for _, _, t in batch if isinstance(t, torch.Tensor)]
        tokens = run(tokens_of, torch.stack(tensors)) if tensors else None
        for index, path, item, row in _rows(batch):
            if isinstance(item, ImageFailure):
                yield item
                continue
            assert tokens is not None
            t = tokens[row]  # (L, D)
            if not bool(torch.isfinite(t).all()):
                yield _nonfinite(path, f"block {block} tokens", dtype)
                continue
            yield _pca_result(path, index, item, block, t, basis or fit_pca(t, 3), model, with_foreground)


def _pca_result(path: Path, index: int, image: torch.Tensor, block: int, tokens: torch.Tensor, basis: PCABasis,
                model: MaskedAutoencoderViT, with_foreground: bool) -> PCAResult:
    h, w = model.patch_embed.grid_size
    coords = project(tokens, basis)  # (L, 3)
    fg = foreground(coords[None, :, 0])[0].reshape(h, w) if with_foreground else None  # (L,) -> (h, w)
    return PCAResult(path, index, image, block, coords.reshape(h, w, 3), to_rgb(coords, basis).reshape(h, w, 3),
                     fg, basis)
