"""The attention job: where the encoder's cls token looks, per head and layer, and the rollout, drawn per image.

`attention(inputs, model, out_dir, ...)` writes `<stem>.attention.png` per image (the input, the cls -> patch
attention of each chosen layer, heads and their mean, over the image; the rollout when asked; removed patches
grey) and returns each image's row: the figure, each head's entropy and the most attended patches. Under
torchrun each process draws its share; rank 0 gathers the rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.images import Crop, ImageFailure
from ..errors import invalid_argument
from ..models.mae import check_mask_ratio
from ..models.masks import MaskSpec, build_mask, parse_mask
from ..utils.device import resolve_device
from ..utils.outputs import guard_output, output_stems
from ..viz.attention import head_entropy, top_patches
from ..viz.encoder_figures import attention_figure
from ..viz.figures import save_figure
from .encoder_view import AttentionResult, attention_files
from .models import ModelSource, as_source, checkpoint_kind
from .run import QUIET, Events, JobRun, collect_inputs, run_sharded

__all__ = ["SUFFIX", "AttentionRun", "attention"]

SUFFIX = ".attention.png"


@dataclass(frozen=True, kw_only=True)
class AttentionRun(JobRun):
    """One row per input, in input order (`{"image", "output", "layers"[, "rollout_top"]}` or `{"image", "error"}`)."""

    kind: str
    mask: list[int] | None  # the removed patches, when the encoder saw a masked image


def attention(
    inputs: Sequence[str | Path],
    model: ModelSource | nn.Module | str | Path,
    out_dir: str | Path = "outputs",
    *,
    layers: Sequence[int] = (-1,),
    heads: str = "all",
    rollout: bool = False,
    mask_ratio: float = 0.0,
    mask: str | MaskSpec | None = None,
    seed: int = 2,
    top_k: int = 5,
    crop: Crop = "resize",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    recursive: bool = False,
    events: Events = QUIET,
) -> AttentionRun | None:
    """Draw the encoder's attention for every image of `inputs` into `out_dir`.

    Args:
        inputs: image files and folders (`recursive`: their sub-folders too).
        model: a full or encoder-only checkpoint (only the encoder is used), a `ModelSource`, or a masked autoencoder.
        out_dir: the folder for `<stem>.attention.png`.
        layers: the blocks drawn (negative: from the end).
        heads: `all` (every head and their mean, a row per layer) or `mean` (the head mean of each layer in one row).
        rollout: add the attention rollout through every block.
        mask_ratio, mask, seed: the encoder sees only the visible patches of this mask (default: the whole image).
        top_k: the most attended patches listed per layer.
        crop, batch_size, dtype, device: how the images are read and run (`encoder_view.attention_files`).
        events: what to report while it runs (`run.Events`).

    Returns the rows on rank 0 (None on the other ranks of a torchrun run)."""
    spec = parse_mask(mask) if isinstance(mask, str) else mask
    source, out_dir = as_source(model), Path(out_dir)
    paths, failures = collect_inputs(inputs, "draw attention for", recursive=recursive, events=events)
    guard_output(out_dir, [*inputs, *source.inputs()], argument="out_dir")
    stems = output_stems(paths, out_dir, SUFFIX)

    def setup(ctx: Any, ev: Events) -> tuple[nn.Module, torch.Tensor | None]:
        net = source.mae(ctx.device)
        ev.loaded(net)
        removed = None
        if spec is not None or mask_ratio > 0:
            ratio = mask_ratio if mask_ratio > 0 else 0.75
            if spec is None or (spec.kind in ("random", "block") and spec.ratio is None):  # the ratio is mask_ratio's
                check_mask_ratio(ratio, net.config.num_patches)
            removed = build_mask(spec if spec is not None else parse_mask("random"), net.config.img_size,
                                 net.config.patch_size, ratio=ratio, seed=seed)
            if not bool(removed.any()):
                raise invalid_argument("mask", f"mask {spec.text if spec else 'random'} removes no patch of the "
                                               f"{removed.numel()}; choose a mask that removes at least one")
        return net, removed

    def work(state: Any, local: list[Path], ctx: Any, ev: Events):
        net, removed = state
        for item in attention_files(net, local, layers=layers, rollout=rollout, mask=removed, batch_size=batch_size,
                                    crop=crop, dtype=dtype, device=ctx.device):
            if isinstance(item, ImageFailure):
                if not ctx.is_distributed:
                    ev.failure(item)
                yield {"image": str(item.path), "error": item.reason}
            else:
                yield _draw(item, out_dir / f"{stems[item.path]}{SUFFIX}", heads, top_k, removed)

    started = time.perf_counter()
    where = resolve_device(device) if device is not None else source.device or resolve_device("auto")
    run = run_sharded(paths, where, label="attention", events=events, setup=setup, work=work)
    if run.results is None:  # not rank 0
        return None
    net, removed = run.state
    if run.ctx.is_distributed:
        for r in run.results:
            if "error" in r:
                events.failure(ImageFailure(Path(r["image"]), r["error"]))
    rows = [{"image": str(f.path), "error": f.reason} for f in failures] + run.results
    mask = None if removed is None else [int(i) for i in removed.nonzero().flatten().tolist()]
    return AttentionRun(rows=rows, kind=checkpoint_kind(net), mask=mask, seconds=time.perf_counter() - started, model=net)


def _draw(item: AttentionResult, path: Path, heads: str, top_k: int, removed: torch.Tensor | None) -> dict[str, Any]:
    """Draw and save one image's figure; its row (per layer: each head's entropy, the top patches)."""
    maps = item.maps
    note = None if removed is None else f"{int(removed.sum())} of {removed.numel()} patches removed (grey)"
    written = save_figure(attention_figure(item.image, maps, heads=heads, title=item.path.name, note=note), path)
    layers = {}
    for layer in maps.layers:
        weights, where = top_patches(maps, layer, top_k)
        layers[str(layer)] = {"entropy": [round(float(e), 5) for e in head_entropy(maps, layer)[0]],
                              "top": [{"patch": int(p), "weight": round(float(w), 6)} for w, p in zip(weights[0], where[0])]}
    row: dict[str, Any] = {"image": str(item.path), "output": str(written), "layers": layers}
    if maps.rollout is not None:
        values, order = maps.rollout[0, 1:].topk(min(top_k, maps.patches.shape[1]))
        row["rollout_top"] = [{"patch": int(maps.patches[0, i]), "weight": round(float(v), 6)}
                              for v, i in zip(values, order)]
    return row
