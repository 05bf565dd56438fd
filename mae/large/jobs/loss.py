"""The loss job: the requirements' noise benchmark (or the loss on real images), with its expected values.

`noise_loss` is the benchmark (seeded `randn` images in ImageNet-normalised space, seeded masks);
`image_loss` the same loss on image files; `loss` is the command's job: it picks the checkpoint (the default
file when present, else a seeded random init), what the decoder predicts (the catalogue, a folder's
`config.json`, else measured), and runs one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .. import catalog
from ..catalog import EXPECTED_NOISE_LOSS, NOISE_LOSS_TOLERANCE
from ..data.images import ImageFailure, collect_images
from ..errors import ImageError, MAEError, invalid_argument
from ..models.layers import compile_blocks
from ..models.mae import MaskedAutoencoderViT
from ..models.target import TargetChoice, resolve_target
from ..utils.compile import CompileOptions, CompileWatch, compile_options
from ..utils.device import autocast_context, nonfinite_fix
from .forward import detect_target_on_files, detect_target_on_noise, maskings_for, reconstruct_files
from .models import ModelSource, as_source, checkpoint_kind
from .run import QUIET, Events


@dataclass(frozen=True)
class LossResult:
    source: str  # "noise" or "images"
    kind: str  # full | encoder-only | random-init | partial
    losses: list[float]  # one per sample
    mask_ratio: float
    norm_pix_loss: bool
    expected: float | None  # the requirements' value for this kind (noise only)
    tolerance: float

    @property
    def mean(self) -> float:
        return sum(self.losses) / len(self.losses)

    @property
    def std(self) -> float:
        if len(self.losses) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self.losses) / (len(self.losses) - 1))

    @property
    def within_tolerance(self) -> bool | None:
        if self.expected is None:
            return None
        return abs(self.mean - self.expected) <= self.tolerance


def noise_loss(
    model: MaskedAutoencoderViT,
    kind: str,
    *,
    samples: int = 8,
    seed: int = 0,
    mask_ratio: float = 0.75,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    compile: bool | CompileOptions = False,
) -> LossResult:
    """The requirements' benchmark: loss on `randn` images (ImageNet-normalised space), seeded.

    Raises `MAEError` when a sample's loss is not finite (the noise is finite, so the weights or the
    precision are at fault).

    Args:
        model: the masked autoencoder (its `norm_pix_loss` as set); it runs where its weights are.
        kind: what the checkpoint is (`full`, `encoder-only`, `random-init`, ...): recorded, and the key of the
            expected value (`catalog.EXPECTED_NOISE_LOSS`, given only at the benchmark's 0.75 without norm-pix).
        samples: how many noise images, a positive integer.
        seed: seeds one generator that draws the images, then the masking noise.
        mask_ratio: the share of patches removed.
        batch_size: samples per forward pass.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        compile: run the model's blocks through `torch.compile` (`layers.compile_blocks`; a short last batch is padded:
            one graph per block shape; undone at the end).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise invalid_argument("samples", f"samples must be a positive integer, got {samples!r}")
    c = model.config
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(samples, c.in_chans, *c.img_size, generator=g)  # (S, C, H, W)
    noise = torch.rand(samples, c.num_patches, generator=g)  # (S, L)
    options = compile_options(compile)
    undo = compile_blocks(model, options) if options is not None else None
    try:
        losses = _noise_losses(model, imgs, noise, mask_ratio, batch_size, device, dtype, pad=options is not None)
    finally:
        if undo is not None:
            undo()
    bad = [i for i, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        raise MAEError(
            f"the loss on noise is not finite for {len(bad)} of {samples} samples (sample {bad[0]}: "
            f"{losses[bad[0]]}), so there is no mean to report; {nonfinite_fix(dtype)}"
        )
    benchmark = mask_ratio == catalog.NOISE_MASK_RATIO and not model.norm_pix_loss
    expected = EXPECTED_NOISE_LOSS.get(kind) if benchmark else None
    return LossResult("noise", kind, losses, mask_ratio, model.norm_pix_loss, expected, NOISE_LOSS_TOLERANCE)


def _noise_losses(model: MaskedAutoencoderViT, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float,
                  batch_size: int, device: torch.device, dtype: torch.dtype, *, pad: bool) -> list[float]:
    """Each sample's loss, in batches; with `pad` a short last batch is padded to `batch_size` (one shape for a compiled
    model) and the padding's losses dropped."""
    losses: list[float] = []
    for start in range(0, imgs.shape[0], batch_size):
        batch, batch_noise = imgs[start:start + batch_size], noise[start:start + batch_size]
        count = batch.shape[0]
        if pad and count < batch_size:
            batch = torch.cat([batch, batch.new_zeros(batch_size - count, *batch.shape[1:])])
            batch_noise = torch.cat([batch_noise, batch_noise.new_zeros(batch_size - count, batch_noise.shape[1])])
        with torch.inference_mode(), autocast_context(device, dtype):
            out = model.reconstruct(batch.to(device), mask_ratio, batch_noise.to(device))
        losses.extend(out.per_image_loss[:count].float().cpu().tolist())
    return losses


def image_loss(
    model: MaskedAutoencoderViT,
    kind: str,
    images: Sequence[str | Path],
    *,
    seed: int = 0,
    mask_ratio: float = 0.75,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    recursive: bool = False,
    compile: bool | CompileOptions = False,
) -> tuple[LossResult, list[ImageFailure]]:
    """The loss on image files and folders (each image masked with `seed`'s mask): the result over the
    images that gave a finite loss, and the failures: inputs that could not be read and images whose loss
    or prediction is not finite (`reconstruct_files`). Raises `ImageError` when no image gave a loss.

    Args:
        model: the masked autoencoder (its `norm_pix_loss` as set); it runs where its weights are.
        kind: what the checkpoint is (`full`, `encoder-only`, `random-init`, ...): recorded in the result.
        images: image files and folders.
        seed: the masking seed, the same mask for every image.
        mask_ratio: the share of patches removed.
        batch_size: images per forward pass.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        recursive: walk the sub-folders of the folders given.
        compile: run the pass through `torch.compile` (`forward.reconstruct_files`).
    """
    paths, failures = collect_images(images, recursive=recursive)
    losses: list[float] = []
    for item in reconstruct_files(model, paths, mask_ratio=mask_ratio, seed=seed, batch_size=batch_size, dtype=dtype,
                                  compile=compile):
        if isinstance(item, ImageFailure):
            failures.append(item)
        else:
            losses.append(item.loss)
    if not losses:
        raise ImageError("no image gave a loss: " + "; ".join(f.reason for f in failures))
    result = LossResult("images", kind, losses, mask_ratio, model.norm_pix_loss, None, NOISE_LOSS_TOLERANCE)
    return result, failures




@dataclass(frozen=True)
class LossRun:
    """What the loss job measured, on what, against which target."""

    result: LossResult
    checkpoint: Path | None  # None: a seeded random init
    target: TargetChoice
    failures: list[ImageFailure]  # images that could not be read or gave no finite loss


def loss(
    images: Sequence[str | Path] | None = None,
    model: ModelSource | nn.Module | str | Path | None = None,
    *,
    random_init: bool = False,
    samples: int = 8,
    seed: int = 0,
    mask_ratio: float = 0.75,
    target: str = "auto",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "auto",
    recursive: bool = False,
    compile: bool = False,
    events: Events = QUIET,
) -> LossRun:
    """The mean reconstruction loss on the noise benchmark (`images` None) or on image files and folders.

    Args:
        images: image files and folders; None for the noise benchmark (`noise_loss`).
        model: a `MaskedAutoencoderViT`, a checkpoint, a `ModelSource`; None (or a source without a checkpoint): the
            default full checkpoint (`catalog.FULL`) if it is in `data/`, else a random init (said in a note).
        random_init: measure the official random init (seed `seed`) whatever files exist.
        samples: noise images to average over.
        seed: the noise images, the masks and the random init.
        mask_ratio: the fraction of patches removed.
        target: `auto` (known for the official files, else measured), `pixels` or `norm-pix`.
        batch_size, dtype, device, recursive: how the images run.
        compile: run the masked pass through `torch.compile` (one graph; its compile time is said in a note).
        events: what to report while it runs (`run.Events`).
    """
    source = as_source(model)
    if random_init and (source.checkpoint is not None or source.model is not None):
        raise invalid_argument("random_init", "random_init and a checkpoint exclude each other")
    source = replace(source, seed=seed) if source.model is None else source
    if not random_init and source.checkpoint is None and source.model is None:
        source = _default_source(source, events)
    net = source.mae(device)
    events.loaded(net)
    kind = checkpoint_kind(net)
    checkpoint = net.load_report.path if net.load_report else None
    choice = resolve_target(target, checkpoint, kind, net.load_report.run if net.load_report else None)
    if choice is None:  # a full file the catalogue does not know: measure what its decoder predicts
        choice = (detect_target_on_noise(net, seed=seed, mask_ratio=mask_ratio, dtype=dtype) if images is None else
                  detect_target_on_files(net, collect_images(images, recursive=recursive)[0],
                                         maskings_for(net, ratios=[mask_ratio], seeds=[seed])[0], dtype=dtype))
    net.norm_pix_loss = choice.norm_pix
    events.note(f"decoder target: {choice.target} ({choice.how})")
    watch = CompileWatch() if compile else None
    if images is None:
        result = noise_loss(net, kind, samples=samples, seed=seed, mask_ratio=mask_ratio, batch_size=batch_size,
                            dtype=dtype, compile=compile)
        failures: list[ImageFailure] = []
    else:
        result, failures = image_loss(net, kind, images, seed=seed, mask_ratio=mask_ratio, batch_size=batch_size,
                                      dtype=dtype, recursive=recursive, compile=compile)
        for failure in failures:
            events.failure(failure)
    found = watch.poll() if watch is not None else None
    if found is not None:
        events.note(found.describe("the masked forward pass"))
    return LossRun(result, checkpoint, choice, failures)


def _default_source(source: ModelSource, events: Events) -> ModelSource:
    """The default full checkpoint when it is in `data/`, else the seeded random init `source` is, said in a note."""
    default = catalog.FULL.default_path
    if default.exists():
        return replace(source, checkpoint=default)
    events.note(f"no checkpoint at {default}: measuring a random init instead (`mae-large download visualize` fetches "
                "the full checkpoint)")
    return source
