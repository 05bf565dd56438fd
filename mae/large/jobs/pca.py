"""The PCA job: each image's patch-feature map (the first three principal components of a layer's patch tokens,
as RGB) beside the image; one joint PCA over all images gives them one colour space. Each figure says how much
of the variance the components explain; a near-uniform image gets a warning, in its figure and in its row
(`viz.pca.uniform_warning`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.images import Crop, ImageFailure
from ..utils.device import resolve_device
from ..utils.outputs import guard_output, output_stems
from ..viz.encoder_figures import pca_figure
from ..viz.figures import save_figure
from ..viz.pca import explained_share, uniform_warning
from .encoder_view import PCAResult, pca_files
from .models import ModelSource, as_source
from .run import QUIET, Events, JobRun, collect_inputs

__all__ = ["SUFFIX", "PCARun", "pca"]

SUFFIX = ".pca.png"


@dataclass(frozen=True, kw_only=True)
class PCARun(JobRun):
    """One row per input, in input order (`{"image", "output", "layer"[, "foreground_fraction", "variance",
    "explained", "warning"]}` or `{"image", "error"}`), and the joint PCA's variance and the share of the total it
    explains (per image in the rows instead when each image has its own PCA)."""

    joint: bool
    variance: list[float] | None
    explained: list[float] | None = None


def pca(
    inputs: Sequence[str | Path],
    model: ModelSource | nn.Module | str | Path,
    out_dir: str | Path = "outputs",
    *,
    layer: int = -1,
    joint: bool | None = None,
    foreground: bool = False,
    crop: Crop = "resize",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    recursive: bool = False,
    events: Events = QUIET,
) -> PCARun:
    """Draw every image's patch-feature map into `out_dir` (`<stem>.pca.png`), as one process.

    Args:
        inputs: image files and folders (`recursive`: their sub-folders too).
        model: a full or encoder-only checkpoint (only the encoder is used), a `ModelSource`, or a masked autoencoder.
        out_dir: the folder for the figures.
        layer: the block whose patch tokens are used (-1: the encoder's output).
        joint: one PCA over all images (a covariance pass, then a projection pass) or one per image; default: joint
            when a folder is among the inputs.
        foreground: add the foreground panel (the side of the first component's sign holding fewer patches).
        crop, batch_size, dtype, device: how the images are read and run (`encoder_view.pca_files`).
        events: what to report while it runs (`run.Events`)."""
    joint = any(Path(i).is_dir() for i in inputs) if joint is None else joint
    source, out_dir = as_source(model), Path(out_dir)
    paths, failures = collect_inputs(inputs, "draw patch features for", recursive=recursive, events=events)
    guard_output(out_dir, [*inputs, *source.inputs()], argument="out_dir")
    stems = output_stems(paths, out_dir, SUFFIX)
    net = source.mae(resolve_device(device) if device is not None else source.device or resolve_device("auto"))
    events.loaded(net)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = [{"image": str(f.path), "error": f.reason} for f in failures]
    variance = explained = None
    with events.progress(len(paths), "patch features") as advance:
        for item in pca_files(net, paths, layer=layer, joint=joint, with_foreground=foreground, batch_size=batch_size,
                              crop=crop, dtype=dtype):
            if isinstance(item, ImageFailure):
                events.failure(item)
                rows.append({"image": str(item.path), "error": item.reason})
            else:
                rows.append(_draw(item, out_dir / f"{stems[item.path]}{SUFFIX}", joint))
                variance = [round(float(v), 6) for v in item.basis.variance] if joint else None
                explained = _shares(item) if joint else None
            events.result(rows[-1])
            advance()
    return PCARun(rows=rows, joint=joint, variance=variance, explained=explained, seconds=time.perf_counter() - started,
                  model=net)


def _draw(item: PCAResult, path: Path, joint: bool) -> dict[str, Any]:
    note = f"joint PCA of {item.basis.count} patches" if joint else None
    warning = uniform_warning(item.image)
    fig = pca_figure(item.image, item.rgb, layer=item.layer, foreground=item.foreground, title=item.path.name, note=note,
                     explained=explained_share(item.basis).tolist(), warning=warning)
    row: dict[str, Any] = {"image": str(item.path), "output": str(save_figure(fig, path)), "layer": item.layer}
    if item.foreground is not None:
        row["foreground_fraction"] = round(float(item.foreground.float().mean()), 4)
    if not joint:
        row["variance"] = [round(float(v), 6) for v in item.basis.variance]
        row["explained"] = _shares(item)
    if warning:
        row["warning"] = warning
    return row


def _shares(item: PCAResult) -> list[float] | None:
    """The share of the variance each component explains, rounded (None when unknown)."""
    shares = explained_share(item.basis)
    return None if bool(shares.isnan().any()) else [round(float(v), 6) for v in shares]
