"""Image embeddings from a (pre-trained) MAE encoder, and the safetensors file that stores them.

Pooling, as the official fine-tuning model (`models_vit.VisionTransformer`) defines it:

* `cls` (`global_pool=False`, the default of the official linear probe `main_linprobe.py`): the cls token
  after the encoder's final `norm`, loaded from the checkpoint: exactly what the MAE encoder outputs at
  position 0 with mask ratio 0. The default for a pre-training file (`load_feature_encoder`).
* `mean` (`global_pool=True`, the fine-tuning default): the mean of the patch tokens after the last block,
  then `fc_norm`. A pre-training checkpoint has no `fc_norm` (the official code starts it fresh, and
  drops the encoder's final `norm`), so with such a file `fc_norm` is the identity-affine LayerNorm:
  the feature is a *plain LayerNorm of the mean patch token* (zero mean, unit variance over D). A
  fine-tuned classifier's own pooling, through its trained `fc_norm`.

`classifier_for_pool` gives the config for either; `extract_features` runs the images through the
model in batches (decoded by `data.image_loader`, in worker processes if asked).

The files are `store.py`'s: `save_features` writes one safetensors file (float32 `features`
(N, D), the row names, labels and classes in its metadata); a shard folder (`ShardWriter`,
`write_index`) holds a data set's rows; `open_features` reads either lazily (`FeatureSet`: names, labels,
classes, meta, `chunks`, `materialize`) and `load_features` whole.

Nothing here prints.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .. import catalog
from ..config import Size2D, to_2tuple
from ..data.images import Crop, ImageFailure, check_crop
from ..data.loader import image_loader, loader_batches
from ..errors import invalid_argument
from ..models.intermediates import take_indices
from ..models.layers import compile_blocks
from ..models.vit import VisionTransformer, ViTConfig
from ..utils.compile import CompileOptions, compile_options
from ..utils.device import autocast_context, nonfinite_fix, resolve_device

__all__ = ["POOLS", "FeatureResult", "Pool", "classifier_for_pool", "extract_features", "global_pool_for", "pooling",
    "load_feature_encoder", "model_name", "pooled_at_layer"]

Pool = Literal["mean", "cls"]
POOLS: tuple[str, ...] = catalog.POOLS


@dataclass(frozen=True)
class FeatureResult:
    path: Path
    index: int  # position in the `paths` given to extract_features
    vector: torch.Tensor  # (D,) float32 on the CPU


def global_pool_for(pool: str) -> bool:
    """`mean` -> True (mean of patch tokens + fc_norm), `cls` -> False (normed cls token)."""
    if pool not in POOLS:
        raise invalid_argument("pool", f"pool must be 'mean' or 'cls', got {pool!r}")
    return pool == "mean"


def classifier_for_pool(pool: str, base: ViTConfig | None = None, **overrides: object) -> ViTConfig:
    """A feature extractor's config: `base` (default ViT-L/16) with no head, no stochastic depth and
    the pooling of `pool`."""
    base = base if base is not None else ViTConfig()
    return base.replace(**{"num_classes": 0, "drop_path_rate": 0.0, "global_pool": global_pool_for(pool), **overrides})


def load_feature_encoder(
    path: str | os.PathLike[str] | Any,
    pool: str | None = None,
    config: ViTConfig | None = None,
    *,
    trust: bool = False,
    device: torch.device | str = "cpu",
    allow_nonfinite: bool = False,
) -> VisionTransformer:
    """A feature extractor (no head, eval mode) over the encoder of a checkpoint, pooled as `pool`.

    `pool=None` follows the file: a fine-tuned classifier (`checkpoint.classify` kind "fine-tuned", global
    pool) gives its own pooling, the mean patch token through its *trained* `fc_norm`; any other file gives
    `cls`, the cls token after the encoder's trained `norm` (the official linear probe's feature). A fine-tuned
    file's trained `fc_norm` is always the one used (as `from_pretrained(head="file")` loads it; its head is
    not); `pool="cls"` on it is an `InvalidArgumentError` (it has no final norm).

    Args:
        path: a checkpoint file or model folder (any layout `read_checkpoint` knows); it is read once.
        pool: `cls`, `mean`, or None to follow the file (above).
        config: the base classifier config (default ViT-L/16; its head and pooling are replaced).
        trust: read a pickle file with `weights_only=False` (its pickle may run code).
        device: where the model goes (`resolve_device`; one this machine lacks fails before the file is read).
        allow_nonfinite: load tensors holding NaN or infinite values (the load report warns) instead of raising.
    """
    from ..checkpoints.classify import classify
    from ..checkpoints.read import CheckpointData, read_checkpoint
    from ..models.mae import MaskedAutoencoderViT

    if pool is not None:
        global_pool_for(pool)  # a bad name fails before the file is read
    device = resolve_device(device)  # and so does a device this machine lacks
    base = config if config is not None else ViTConfig()
    data = path if isinstance(path, CheckpointData) else read_checkpoint(path, trust=trust)  # classified here, loaded below
    result = classify(data.state_dict, MaskedAutoencoderViT.expected_state(base.mae_view()), data.classifier)
    fine_tuned = result.kind == "fine-tuned"
    if fine_tuned and pool == "cls":
        raise invalid_argument("pool", f"{path} is a classifier fine-tuned with global pooling: it has no final norm, "
                               "so no cls-token feature; use pool='mean' (its own pooling, through its trained fc_norm)")
    chosen = pool if pool is not None else ("mean" if fine_tuned else "cls")
    return VisionTransformer.from_pretrained(data, classifier_for_pool(chosen, base), trust=trust, device=device,
                                             head="file" if fine_tuned else "fresh",
                                             allow_nonfinite=allow_nonfinite).eval()


def model_name(config: ViTConfig) -> str:
    """`vit_large_patch16` for the official sizes, else a name spelling out the shape."""
    return config.architecture_name


def extract_features(
    model: VisionTransformer,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 32,
    size: int | Size2D | None = None,
    crop: Crop = "eval",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    layer: int | None = None,
    workers: int = 0,
    indices: Sequence[int] | None = None,
    compile: bool | CompileOptions = False,
) -> Iterator[FeatureResult | ImageFailure]:
    """One pooled feature vector per image, in batches; yields a result or a failure per path, in order.

    The pooling is the model's (`model.global_pool`; build it with `classifier_for_pool`). `layer` takes the
    tokens of that block instead of the last (counted from 0, negative from the end; for probing by depth),
    pooled the same way through the same final norm (`pooled_at_layer`); the blocks after it are not run. Images are
    preprocessed by the official evaluation transform (`load_image`, `crop="eval"`: resize to size x 256/224, centre
    crop; `"resize"` is the demo's squash) at `size`, which defaults to the model's `img_size` and must equal it.
    The model is not moved.
    Each batch runs in eval mode under `torch.inference_mode` (a model left in train mode would drop
    paths at random), and the mode is restored afterwards. At one `batch_size` a row is the same bits
    whatever batch it lands in, the number of `workers` and of processes at one thread count (a short batch is
    padded to the batch size); another batch size changes the CPU products' sums, hence the last bits (up to
    4.8e-6 at ViT-L between batch 16 and 64). Vectors are float32 on the CPU; `dtype=torch.bfloat16` runs the forward
    pass under autocast. A row that is not finite (NaN or infinite values: a damaged checkpoint loaded
    with `allow_nonfinite=True`, or an overflow in low precision) is yielded as an `ImageFailure` saying
    so, never as a result.

    Images are decoded by `data.image_loader`: in this process (`workers=0`) or in `workers` processes ahead of
    the forward pass (pinned memory on CUDA); the rows are the same either way. `FeatureResult.index` is the
    position in `paths`.

    Args:
        model: the feature extractor (`load_feature_encoder`, or a model built with `classifier_for_pool`).
        paths: the image files; one that cannot be read is yielded as an `ImageFailure` in its place.
        batch_size: images per forward pass, a positive integer.
        size: the input size, (H, W) or one int; default the model's `img_size`, and any other is refused.
        crop: `eval` (the official evaluation transform), `resize` (the demo's squash) or `center`.
        dtype: the forward pass's precision: `torch.float32`, or a lower one run under autocast.
        device: where the batches go (default: the model's), checked by `resolve_device` (one this machine lacks is a
            `DeviceError`).
        layer: the block whose tokens are pooled (counted from 0, negative from the end; default the last).
        workers: processes decoding images ahead (0: in this process).
        indices: the positions of `paths` to embed, in that order (default: all; one rank's share, or what a resumed
            run has left).
        compile: run the encoder's blocks through `torch.compile` (`layers.compile_blocks`: a graph per block shape,
            static shapes; every batch is padded to `batch_size`, so one graph serves the run; undone at the end). Rows
            equal the eager ones to float rounding (fused kernels sum in another order), not bit for bit; the first
            batch pays the compile time.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:  # before any image
        raise invalid_argument("batch_size", f"batch size must be a positive integer, got batch_size={batch_size!r}")
    check_crop(crop)
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise invalid_argument("layer", f"layer must be a block index (an integer), got {layer!r}")
        take_indices(model.config.depth, [layer], "layer")  # out of range: fail before any image is read
    model_size = model.config.img_size
    size = model_size if size is None else to_2tuple(size, "size")
    if size != model_size:
        raise invalid_argument("size", f"size {size[0]}x{size[1]} differs from the model's img_size "
                               f"{model_size[0]}x{model_size[1]}; build the model at that size "
                               "(from_pretrained(..., img_size=...)) instead")
    options = compile_options(compile)
    target = resolve_device(device) if device is not None else next(model.parameters()).device
    run = pooling(model, layer)
    loader = image_loader(paths, size, crop, batch_size, indices=indices, workers=workers,
                          pin_memory=target.type == "cuda")
    undo = compile_blocks(model, options) if options is not None else None
    try:
        yield from _embed(model, run, loader_batches(loader, target), target, dtype, batch_size)
    finally:
        if undo is not None:
            undo()


def _embed(model: VisionTransformer, run: Callable[[torch.Tensor], torch.Tensor], batches: Iterator[Any],
           target: torch.device, dtype: torch.dtype, batch_size: int) -> Iterator[FeatureResult | ImageFailure]:
    for batch in batches:
        feats = _forward(model, run, batch.images, target, dtype, batch_size) if batch.images is not None else None
        bad = (~torch.isfinite(feats)).sum(dim=1) if feats is not None else None  # non-finite values per row
        row = 0
        for index, path, failure in batch.items:
            if failure is not None:
                yield failure
                continue
            assert feats is not None and bad is not None
            if bad[row]:
                yield ImageFailure(path, _nonfinite_reason(path, int(bad[row]), feats.shape[1], dtype))
            else:
                yield FeatureResult(path, index, feats[row].clone())  # clone: a row must not keep the batch alive
            row += 1


def _nonfinite_reason(path: Path, bad: int, dim: int, dtype: torch.dtype) -> str:
    """One sentence for an image whose feature vector is not finite: what, and what to try."""
    return (f"{path}: its feature vector is not finite ({bad} of its {dim} values are NaN or infinite), so it was not "
            f"kept; {nonfinite_fix(dtype)}")


def pooled_at_layer(model: VisionTransformer, imgs: torch.Tensor, layer: int) -> torch.Tensor:
    """(N, D): the tokens after block `layer`, pooled as `forward_features` pools the last block's: the mean
    patch token through `fc_norm` (global pool), or the cls token through `norm`. At the last block it is
    `forward_features`."""
    patches, prefix = model.forward_intermediates(imgs, [layer], return_prefix_tokens=True, stop_early=True,
                                                  output_fmt="NLC", intermediates_only=True)[0]
    if model.global_pool:
        return model.fc_norm(patches.mean(dim=1))  # (N, L, D) -> (N, D)
    return model.norm(prefix[:, 0])  # (N, 1, D) -> (N, D); a LayerNorm acts on each token alone


def pooling(model: VisionTransformer, layer: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function from images to pooled features (N, D): `forward_features`, or `pooled_at_layer` at `layer`."""
    if layer is None:
        return model.forward_features
    return functools.partial(pooled_at_layer, model, layer=layer)


def _forward(model: VisionTransformer, run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
             device: torch.device, dtype: torch.dtype, pad_to: int = 0) -> torch.Tensor:
    """Pooled features (N, D) of one batch of images (N, 3, H, W), float32 on the CPU, computed in eval mode (the
    mode is restored). A batch of fewer than `pad_to` images (a rank's last one, one with failed files) is padded
    with zero images whose rows are dropped: every forward then multiplies matrices of the same shapes, and a row's
    bits do not depend on how many images its batch holds."""
    n = images.shape[0]
    if n < pad_to:
        images = torch.cat([images, images.new_zeros(pad_to - n, *images.shape[1:])])  # (pad_to, 3, H, W)
    imgs = images.to(device, non_blocking=True)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast_context(device, dtype):
            feats = run(imgs)
    finally:
        model.train(was_training)
    return feats[:n].float().cpu()
