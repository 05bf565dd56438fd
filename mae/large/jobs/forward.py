"""Masked forward passes of the autoencoder over image files: seeded maskings, batches, the next batch computed
while the caller draws the last one.

Each function goes from inputs to result records; it never prints or writes files (the jobs `reconstruct`,
`loss` and the figures draw and save). Masks are reproducible: every image's noise is drawn from a generator seeded with
`seed` alone, as the official demo does with `torch.manual_seed(seed)` before each image, so an
image gets the same mask whatever the batch size or its position in the batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch

from ..data.images import Crop, ImageFailure, check_crop, image_batches
from ..errors import invalid_argument
from ..models.layers import compile_blocks
from ..models.mae import MaskedAutoencoderViT, check_mask_ratio
from ..models.masks import MaskSpec, build_mask, check_mask, mask_ratio_of
from ..models.target import TargetChoice, detect_target
from ..utils import cancel
from ..utils.compile import CompileOptions, compile_options
from ..utils.device import autocast_context, nonfinite_fix, resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")


def mask_noise(seed: int, num_patches: int, count: int = 1) -> torch.Tensor:
    """(count, L) masking noise, every row the one `torch.manual_seed(seed); torch.rand(1, L)` gives."""
    row = torch.rand(1, num_patches, generator=torch.Generator().manual_seed(seed))
    return row.expand(count, -1).clone()


@dataclass(frozen=True)
class ImageResult:
    path: Path
    index: int  # position among the collected inputs
    image: torch.Tensor  # (C, H, W) normalised input
    pred: torch.Tensor  # (L, p*p*C)
    mask: torch.Tensor  # (L,)
    loss: float


@dataclass(frozen=True)
class Masking:
    """How one forward pass masks every image of a run: the official seeded noise at a ratio (random
    masks), or a mask the caller chose. `label` names it in figures and frames."""

    ratio: float
    noise: torch.Tensor | None = None  # (L,) noise row: the `len_keep` smallest are kept
    mask: torch.Tensor | None = None  # (L,) bool, True = removed
    label: str = ""


@dataclass(frozen=True)
class SweepResult:
    """One image reconstructed under several maskings (a mask-ratio sweep, or one mask per seed)."""

    path: Path
    index: int
    image: torch.Tensor  # (C, H, W)
    maskings: list[Masking]
    preds: list[torch.Tensor]  # per masking, (L, p*p*C)
    masks: list[torch.Tensor]  # per masking, (L,) float, 1 = removed
    losses: list[float]


def maskings_for(
    model: MaskedAutoencoderViT,
    *,
    ratios: Sequence[float] = (0.75,),
    seeds: Sequence[int] = (2,),
    mask: MaskSpec | torch.Tensor | None = None,
) -> list[Masking]:
    """The maskings of a run: one per ratio (a sweep) or one per seed, for the official random mask or a
    chosen one. Random masks of one seed are nested across ratios (one noise; a higher ratio removes a
    superset). A fixed-shape mask (box, half, file, patches, grid, or a tensor) is one masking: a list of
    ratios or seeds with it is refused, as is a ratio list with a mask kind that carries its own ratio."""
    if not ratios or not seeds:
        raise invalid_argument("ratios", "give at least one mask ratio and one seed")
    if len(ratios) > 1 and len(seeds) > 1:
        raise invalid_argument("ratios", "sweep over ratios or over seeds, not both at once")
    c = model.config
    length = c.num_patches
    for r in ratios:
        check_mask_ratio(r, length)
    if isinstance(mask, torch.Tensor):
        spec_fixed, tensor = True, mask
    elif mask is not None and mask.fixed_shape:
        spec_fixed, tensor = True, build_mask(mask, c.img_size, c.patch_size)
    else:
        spec_fixed, tensor = False, None
    if spec_fixed:
        assert tensor is not None
        if len(ratios) > 1 or len(seeds) > 1:
            raise invalid_argument("ratios", "a fixed-shape mask removes the same patches whatever the ratio or seed; "
                                             "give one mask ratio and one seed with it")
        checked = check_mask(tensor, 1, length)[0]
        _removes_some(checked, mask)
        return [Masking(mask_ratio_of(checked), mask=checked, label=getattr(mask, "text", "") or "chosen mask")]
    if mask is not None and mask.ratio is not None and len(ratios) > 1:
        raise invalid_argument("ratios", f"mask {mask.text!r} carries its own ratio; give the ratios of a sweep "
                                         "without it (e.g. block with mask_ratio 0.25,0.5)")
    kind = mask.kind if mask is not None else "random"
    out: list[Masking] = []
    for seed in seeds:
        for r in ([mask.ratio] if mask is not None and mask.ratio is not None else ratios):
            label = f"seed {seed}" if len(seeds) > 1 else f"mask ratio {r:g}"
            if kind == "random":
                out.append(Masking(r, noise=mask_noise(seed, length)[0], label=label))
            else:
                assert mask is not None
                built = build_mask(mask, c.img_size, c.patch_size, ratio=r, seed=seed)
                _removes_some(built, mask)
                out.append(Masking(mask_ratio_of(built), mask=built, label=label))
    return out


def _removes_some(mask: torch.Tensor, spec: MaskSpec | torch.Tensor | None) -> None:
    """A chosen mask must remove a patch: one that removes none would draw an unmasked "masked" panel."""
    if not bool(mask.any()):
        text = getattr(spec, "text", "") or "the mask given"
        raise invalid_argument("mask", f"mask {text} removes no patch of the {mask.numel()} (it lies outside the image, "
                                       "or the mask file is all black); choose a mask that removes at least one")


def reconstruct_files(
    model: MaskedAutoencoderViT,
    paths: Sequence[Path],
    *,
    mask_ratio: float = 0.75,
    seed: int = 2,
    crop: Crop = "resize",
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    overlap: bool = True,
    mask: MaskSpec | torch.Tensor | None = None,
    workers: int = 0,
    compile: bool | CompileOptions = False,
) -> Iterator[ImageResult | ImageFailure]:
    """Reconstruct every file in `paths` in batches; yields one result or failure per file, in order.

    Every image gets the mask `torch.manual_seed(seed)` would give it at `mask_ratio` (the official demo),
    or the chosen `mask` (a `masks.MaskSpec` such as `parse_mask("block:0.75")`, or an (L,) bool tensor).

    A failure is an input that gave no result: a file that could not be read, or an image whose loss or
    prediction is not finite (NaN or infinite: a damaged checkpoint loaded with `allow_nonfinite=True`, or
    an overflow in a low-precision `dtype`); its `reason` says which. The model is not moved.

    With `overlap` the batches are computed in a worker thread, one batch ahead of the caller: while
    the caller handles a batch's results (the CLI draws and saves a figure per image), the next batch's
    forward pass runs (torch releases the GIL in its kernels). The results
    are the same either way; `overlap=False` computes each batch only when the caller asks for it.

    Args:
        model: the masked autoencoder (its decoder predicts the patches).
        paths: the image files; one that cannot be read is yielded as an `ImageFailure` in its place.
        mask_ratio: the share of patches removed, for a random mask or a `mask` kind without its own ratio.
        seed: the masking seed, the same noise for every image (the official demo's is 2).
        crop: `resize` (the demo's squash), `center` or `eval` (`image.preprocess`); images come at the model's size.
        batch_size: images per forward pass, a positive integer.
        device: where the batches run (default: the model's), checked by `resolve_device`.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        overlap: compute the next batch in a worker thread while the caller handles this one (above).
        mask: a `masks.MaskSpec` or an (L,) bool tensor (True = removed) instead of the random mask (default None).
        workers: processes decoding images ahead (`data.image_loader`; 0: in this process).
        compile: run the model's blocks through `torch.compile` (`layers.compile_blocks`: a graph per block shape for
            the run, every batch padded to `batch_size`; undone at the end); results equal the eager ones to float
            rounding, and the first batch pays the compile time.
    """
    maskings = maskings_for(model, ratios=[mask_ratio], seeds=[seed], mask=mask)
    return _run(model, paths, maskings, crop=crop, batch_size=batch_size, device=device, dtype=dtype, overlap=overlap,
                workers=workers, compile=compile)


def sweep_files(
    model: MaskedAutoencoderViT,
    paths: Sequence[Path],
    maskings: Sequence[Masking],
    *,
    crop: Crop = "resize",
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    overlap: bool = True,
    workers: int = 0,
    compile: bool | CompileOptions = False,
) -> Iterator[SweepResult | ImageFailure]:
    """Reconstruct every file under each of `maskings` (`maskings_for`): one forward pass of the batch per
    masking, nothing recomputed per figure; one `SweepResult` or failure per file, in order.

    Args:
        model: the masked autoencoder (its decoder predicts the patches); it is not moved.
        paths: the image files; one that cannot be read is yielded as an `ImageFailure` in its place.
        maskings: the maskings, in order (`maskings_for`).
        crop, batch_size, device, dtype, overlap: as for `reconstruct_files`.
        workers: > 0 decodes the images in that many processes (`data.image_loader`) ahead of the model.
        compile: as for `reconstruct_files`.
    """
    return _run(model, paths, list(maskings), crop=crop, batch_size=batch_size, device=device, dtype=dtype,
                overlap=overlap, sweep=True, workers=workers, compile=compile)


def _run(model: MaskedAutoencoderViT, paths: Sequence[Path], maskings: list[Masking], *, crop: Crop, batch_size: int,
         device: torch.device | str | None, dtype: torch.dtype, overlap: bool, sweep: bool = False,
         workers: int = 0, compile: bool | CompileOptions = False) -> Iterator:
    check_crop(crop)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_argument("batch_size", f"batch size must be a positive integer, got batch_size={batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise invalid_argument("workers", f"workers must be an integer >= 0 (0: load in this process), got {workers!r}")
    options = compile_options(compile)
    target = resolve_device(device) if device is not None else next(model.parameters()).device
    items = _reconstruct_batches(model, paths, maskings, crop=crop, batch_size=batch_size, device=target, dtype=dtype,
                                 sweep=sweep, workers=workers, compile=options)
    return _run_ahead(items, batch_size) if overlap else items


def _reconstruct_batches(
    model: MaskedAutoencoderViT,
    paths: Sequence[Path],
    maskings: list[Masking],
    *,
    crop: Crop,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    sweep: bool,
    workers: int = 0,
    compile: CompileOptions | None = None,
) -> Iterator[ImageResult | SweepResult | ImageFailure]:
    # Compiled: one graph per block shape for the run. A short batch is padded to `batch_size` (one shape), its padding
    # rows dropped.
    def forward(imgs: torch.Tensor, m: Masking) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pred float32, mask, per-image loss on the CPU, non-finite predicted values per image) of a batch."""
        b = imgs.shape[0]
        if compile is not None and b < batch_size:
            imgs = torch.cat([imgs, imgs.new_zeros(batch_size - b, *imgs.shape[1:])])
        n = imgs.shape[0]
        # The CUDA device is per thread, and this may run in _run_ahead's worker: name it.
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with on_device, torch.inference_mode(), autocast_context(device, dtype):
            if m.mask is not None:
                out = model.reconstruct(imgs, mask=m.mask.to(device))
            else:
                assert m.noise is not None
                out = model.reconstruct(imgs, m.ratio, m.noise.expand(n, -1).to(device))  # every image the seed's mask
            pred = out.pred[:b].float()
            bad = (~torch.isfinite(pred)).flatten(1).sum(dim=1).cpu()  # (B,) non-finite values per image
        return pred, out.mask[:b], out.per_image_loss[:b].float().cpu(), bad

    def flush(pending: list) -> Iterator[ImageResult | SweepResult | ImageFailure]:
        loaded = [(i, p, t) for i, p, t in pending if isinstance(t, torch.Tensor)]
        outputs: dict[int, ImageResult | SweepResult | ImageFailure] = {}
        if loaded:
            imgs = torch.stack([t for _, _, t in loaded]).to(device)  # (B, C, H, W)
            runs = [forward(imgs, m) for m in maskings]  # one forward per masking for the whole batch
            for j, (index, path, _) in enumerate(loaded):
                losses = [float(loss[j]) for _, _, loss, _ in runs]
                bad = next(((int(b[j]), loss) for (_, _, _, b), loss in zip(runs, losses)
                            if b[j] or not math.isfinite(loss)), None)
                if bad is not None:
                    outputs[index] = ImageFailure(path, _nonfinite_reason(path, bad[1], bad[0], runs[0][0][j].numel(),
                                                                          dtype))
                elif sweep:
                    outputs[index] = SweepResult(path, index, imgs[j].float().cpu(), list(maskings),
                                                 [pred[j].cpu() for pred, _, _, _ in runs],
                                                 [mask[j].float().cpu() for _, mask, _, _ in runs], losses)
                else:
                    pred, mask, _, _ = runs[0]
                    outputs[index] = ImageResult(path, index, imgs[j].float().cpu(), pred[j].cpu(),
                                                 mask[j].float().cpu(), losses[0])
        for index, _, item in pending:
            yield outputs[index] if isinstance(item, torch.Tensor) else item

    def batches() -> Iterator[list]:
        if workers:  # decoded by worker processes of the data module (`data.image_loader`), in input order
            from ..data.loader import image_loader, loader_batches

            loader = image_loader(paths, model.config.img_size, crop, batch_size, workers=workers,
                                  pin_memory=device.type == "cuda")
            for loaded in loader_batches(loader, device):
                images = iter(loaded.images if loaded.images is not None else [])
                yield [(i, p, failure if failure is not None else next(images)) for i, p, failure in loaded.items]
            return
        yield from image_batches(paths, model.config.img_size, crop, batch_size)

    undo = compile_blocks(model, compile) if compile is not None else None
    try:
        for batch in batches():
            yield from flush(batch)
    finally:
        if undo is not None:
            undo()


def detect_target_on_files(model: MaskedAutoencoderViT, paths: Sequence[Path], masking: Masking, *, crop: Crop = "resize",
                           dtype: torch.dtype = torch.float32, count: int = 4) -> TargetChoice:
    """What the decoder predicts (`target.detect_target`), measured on the first `count` images that can be
    read, when neither the caller nor the catalogue says.

    Args:
        model: the masked autoencoder; it runs where its weights are.
        paths: the image files; only the first `count` are read (an unreadable one is left out, not replaced).
        masking: the one masking to measure under (`maskings_for`).
        crop: `resize`, `center` or `eval` (`image.preprocess`).
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        count: how many of the first paths to use.

    Returns pixels, said so, when none of them could be read."""
    done = [r for r in sweep_files(model, paths[:count], [masking], crop=crop, dtype=dtype, overlap=False)
            if isinstance(r, SweepResult)]
    if not done:
        return TargetChoice("pixels", "no image could be read to detect it: pixels assumed")
    imgs = torch.stack([r.image for r in done])
    return detect_target(torch.stack([r.preds[0] for r in done]), torch.stack([r.masks[0] for r in done]),
                         model.patchify(imgs.to(next(model.parameters()).device)).cpu())


def detect_target_on_noise(model: MaskedAutoencoderViT, *, seed: int = 0, mask_ratio: float = 0.75,
                           dtype: torch.dtype = torch.float32, count: int = 4) -> TargetChoice:
    """`detect_target` on the first `count` images of the noise benchmark (`noise_loss`'s draws)."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(count, c.in_chans, *c.img_size, generator=g)
    noise = torch.rand(count, c.num_patches, generator=g)
    device = next(model.parameters()).device
    with torch.inference_mode(), autocast_context(device, dtype):
        out = model.reconstruct(imgs.to(device), mask_ratio, noise.to(device))
    return detect_target(out.pred, out.mask, model.patchify(imgs.to(device)))


def _nonfinite_reason(path: Path, loss: float, bad: int, numel: int, dtype: torch.dtype) -> str:
    """One sentence for an image whose reconstruction is not finite: what, and what to try."""
    what = f"{bad} of its {numel} predicted values are NaN or infinite" if bad else f"its loss is {loss}"
    return f"{path}: the reconstruction is not finite ({what}), so no result was produced; {nonfinite_fix(dtype)}"


class _Raised(NamedTuple):
    error: BaseException


_DONE = object()


def _run_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield what `items` yields, producing it in a worker thread at most `depth` items ahead.

    The worker's exceptions are raised in the caller; when the caller stops early (break, an error), the
    worker finishes the batch it is computing and ends, and the caller waits for it; on Ctrl-C the caller
    does not wait.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set() and not cancel.requested():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the caller, raised there
            put(_Raised(exc))
            return
        put(_DONE)

    worker = threading.Thread(target=work, name="mae-reconstruct-ahead", daemon=True)
    worker.start()
    interrupted = False
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        stop.set()
        # An interrupt must not wait for the batch in flight (a forward pass cannot be stopped inside a
        # kernel): the worker writes nothing, sees `stop` when it is done and ends on its own.
        if not interrupted and not cancel.requested():
            worker.join()


__all__ = ["ImageResult", "Masking", "SweepResult", "detect_target_on_files",
           "detect_target_on_noise", "mask_noise", "maskings_for", "reconstruct_files", "sweep_files"]
