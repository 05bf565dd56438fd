"""The features job: one pooled encoder feature vector per image, written as one safetensors file or as a folder
of shards for a data set; resumable, as one process or as several under torchrun.

Inputs: image files and folders, one list file (one path per line), one ImageFolder tree (`root/CLASS/img`:
the sorted class names become integer labels), or a data set's own files (`data.sources`: parquet, a
`save_to_disk` folder, WebDataset tar shards; their labels and class names come with them). Every row is named by
its image's identity (a file's path, `file.parquet#row`, `shard.tar#key`) and the output records the source.
`out` ending in `.safetensors` is one file (rank 0 gathers the rows); anything else is a shard folder: each rank
writes shards of at most `shard_size` rows as soon as they are complete, rank 0 writes `index.json` last, and
`resume` continues an interrupted run with the same bits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.images import Crop, ImageFailure
from ..data.loader import Source, default_workers, image_folder, list_file, source_form
from ..data.records import ref_name
from ..data.sources import container_source
from ..errors import ImageError, MAEError, invalid_argument
from ..evaluate.features import FeatureResult, extract_features, model_name
from ..evaluate.store import ShardWriter, save_features, write_index
from ..models.vit import VisionTransformer
from ..utils.device import resolve_device
from ..utils.distributed import DistContext, all_gather
from ..utils.outputs import guard_output
from .models import ModelSource, as_source
from .run import QUIET, Events, collect_inputs, noting_compile, run_sharded

__all__ = ["FeaturesRun", "features", "is_shard_folder"]


@dataclass(frozen=True)
class FeaturesRun:
    """What a features job wrote: the output (None when every input failed), the rows, their shape and settings,
    and each failed input as `{"image", "error"}` in input order."""

    output: Path | None
    count: int
    dim: int
    pool: str
    layer: int
    size: tuple[int, int]
    failed: list[dict[str, str]]
    world_size: int
    workers: int
    labels: bool
    seconds: float
    shards: int | None = None  # a shard folder: the shards written
    resumed_inputs: int | None = None  # a resumed shard folder: the inputs its kept shards already held
    model: nn.Module | None = field(default=None, repr=False)


def is_shard_folder(out: str | Path) -> bool:
    """Whether `out` names a shard folder (an existing folder, or a name without `.safetensors`)."""
    out = Path(out)
    return out.is_dir() or out.suffix.lower() != ".safetensors"


def features(
    inputs: Sequence[str | Path],
    model: ModelSource | nn.Module | str | Path,
    out: str | Path,
    *,
    pool: str | None = None,
    layer: int | None = None,
    batch_size: int = 32,
    crop: Crop = "eval",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    workers: int | None = None,
    recursive: bool = False,
    shard_size: int = 10_000,
    resume: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    compile: bool = False,
    events: Events = QUIET,
) -> FeaturesRun | None:
    """Embed every image of `inputs` with the encoder and save the pooled vectors, in input order.

    Args:
        inputs: image files and folders, one list file, one ImageFolder tree (labelled), or a data set's files
            (`data.sources`: parquet files or a pattern of them, a `save_to_disk` folder, tar shards).
        model: a checkpoint (only the encoder is used), a `ModelSource`, or a feature extractor built by
            `features.load_feature_encoder`.
        out: `x.safetensors` (one file: `features` (N, D) float32, names and labels in its metadata) or a folder of
            shards plus `index.json`.
        pool: `cls`, `mean` or None (the file's own: mean through a fine-tuned classifier's trained `fc_norm`).
        layer: the block whose tokens are pooled (default the last).
        batch_size, crop, dtype, device: how the images run (`features.extract_features`).
        workers: processes decoding images ahead of the model (default: by device, `loader.default_workers`).
        recursive: walk the sub-folders of the folders given.
        shard_size: rows per shard of a shard folder.
        resume: keep the complete shards of an interrupted run in `out` and do the rest.
        image_column, label_column: a data set's image and label columns (tar shards: member extensions, or the
            label's `.json` key); default `image` (or the first image column) and `label` (`cls` in tars).
        compile: run the forward through `torch.compile` (`extract_features`): worth it over many batches; the first
            one pays the compile time, said in a note.
        events: what to report while it runs (`run.Events`).

    Returns what was written, on rank 0 (None on the other ranks of a torchrun run)."""
    out = Path(out)
    sharded = is_shard_folder(out)
    if resume and not sharded:
        raise invalid_argument("resume", "resume continues a shard folder; give out a folder (no .safetensors suffix)")
    source, inputs_of = as_source(model), _inputs(inputs, recursive, events, image_column, label_column)
    paths = inputs_of.paths
    listed = paths if inputs_of.form == "list" else []  # else inside the folders given
    guard_output(out, [*inputs, *listed, *inputs_of.origin.get("files", []), *source.inputs()])
    where = resolve_device(device) if device is not None else source.device or resolve_device("auto")
    n_workers = default_workers(device_type=where.type) if workers is None else workers
    held: dict[str, Any] = {}
    started = time.perf_counter()

    def setup(ctx: DistContext, ev: Events) -> VisionTransformer:
        held["model"] = source.encoder(ctx.device, pool)
        ev.loaded(held["model"])
        return held["model"]

    def sink(ctx: DistContext) -> ShardSink:
        net = held["model"]
        held["sink"] = ShardSink(ctx, out, inputs_of, _settings(net, source, crop, dtype, layer, ctx.world_size,
                                                                 shard_size, inputs_of),
                                 dim=net.config.embed_dim, shard_size=shard_size, resume=resume, batch_size=batch_size)
        return held["sink"]

    def work(net: VisionTransformer, local: list[int], ctx: DistContext, ev: Events) -> Any:
        start = held["sink"].start if sharded else 0
        rows = extract_features(net, paths, batch_size=batch_size, crop=crop, dtype=dtype, device=ctx.device,
                                layer=layer, workers=n_workers, indices=local[start:], compile=compile)
        return noting_compile(rows, ev, "the encoder's forward pass", enabled=bool(compile))

    run = run_sharded(range(len(paths)), where, label="embedding", events=events, setup=setup, work=work,
                      **({"sink": sink, "record": False} if sharded else {}))
    if run.results is None:  # not rank 0: rank 0 writes and reports
        return None
    net, merged = run.state, run.results
    pool_used = "mean" if net.global_pool else "cls"
    layer_used = (net.config.depth - 1) if layer is None else layer % net.config.depth
    failures = list(inputs_of.failures)
    settings = dict(dim=net.config.embed_dim, pool=pool_used, layer=layer_used, size=tuple(net.config.img_size),
                    world_size=run.ctx.world_size, workers=n_workers, labels=inputs_of.classes is not None, model=net)
    if sharded:
        index = held["sink"].index
        failed = _failures_json(failures) + merged  # merged: every rank's failures, in input order
        return FeaturesRun(out, index["rows"], failed=failed, seconds=time.perf_counter() - started,
                           shards=len(index["shards"]), resumed_inputs=held["sink"].resumed, **settings)
    rows = [r for r in merged if isinstance(r, FeatureResult)]
    failures += [r for r in merged if isinstance(r, ImageFailure)]
    written = _save(out, rows, net, source, pool_used, crop, dtype, layer_used, inputs_of) if rows else None
    return FeaturesRun(written, len(rows), failed=_failures_json(failures), seconds=time.perf_counter() - started,
                       **settings)


def _failures_json(failures: list[ImageFailure]) -> list[dict[str, str]]:
    return [{"image": ref_name(f.path), "error": f.reason} for f in failures]


def _inputs(inputs: Sequence[str | Path], recursive: bool, events: Events, image_column: str | None,
            label_column: str | None) -> Source:
    """The inputs as a `loader.Source`: a data set's files, a list file, an ImageFolder tree (labelled), or files and
    folders."""
    data = container_source(inputs, image_column=image_column, label_column=label_column)
    if data is not None:
        return _data_set(data, inputs, events)
    form = source_form(inputs, recursive=recursive)
    if form == "files":
        paths, failures = collect_inputs(inputs, "extract features from", recursive=recursive, events=events)
        return Source(paths, failures=failures)
    source = image_folder(inputs[0]) if form == "image-folder" else list_file(inputs[0])
    if not source.paths:
        reasons = "; ".join(f.reason for f in source.failures) or "it names no file"
        raise ImageError(f"no image to extract features from in {inputs[0]}: {reasons}")
    if source.classes is not None:
        events.note(f"ImageFolder tree: {len(source.paths)} images in {len(source.classes)} classes "
                    f"({', '.join(source.classes[:5])}{' ...' if len(source.classes) > 5 else ''})")
    return source


def _data_set(data: Source, inputs: Sequence[str | Path], events: Events) -> Source:
    """A data set's source, said in a note; labels kept only when every image has one (a feature file's labels are
    class numbers for every row)."""
    shown = " ".join(map(str, inputs))
    if not len(data.paths):
        reasons = "; ".join(f.reason for f in data.failures[:3]) or "it holds no image"
        raise ImageError(f"no image to extract features from in {shown}: {reasons}")
    files = data.origin.get("files", [])
    what = {"parquet": "parquet", "arrow": "arrow (save_to_disk)", "webdataset": "tar shards"}.get(data.form, data.form)
    labels = data.labels
    if labels is not None and any(v < 0 for v in labels):
        events.note(f"{sum(v < 0 for v in labels)} of the {len(labels)} images have no label: the features are "
                    "written without labels")
        data = dataclasses.replace(data, labels=None, classes=None)
    named = f", {len(data.classes)} named classes" if data.classes else ", labelled" if data.labels else ""
    events.note(f"{what}: {len(data.paths)} images in {len(files)} file(s){named}")
    return data


def _settings(model: VisionTransformer, source: ModelSource, crop: str, dtype: Any, layer: int | None, world_size: int,
              shard_size: int, inputs: Source) -> dict[str, Any]:
    """What identifies a sharded run (a resumed run must match it): the index's fields and a digest of the inputs."""
    digest = hashlib.sha256()
    for i, path in enumerate(inputs.paths):
        digest.update(f"{ref_name(path)}\t{inputs.labels[i] if inputs.labels else ''}\n".encode("utf-8", "surrogateescape"))
    h, w = model.config.img_size
    return {"checkpoint": _checkpoint_name(model, source), "pool": "mean" if model.global_pool else "cls",
            "layer": (model.config.depth - 1) if layer is None else layer % model.config.depth, "transform": crop,
            "size": f"{h}x{w}", "dtype": str(dtype).removeprefix("torch."), "world_size": world_size,
            "shard_size": shard_size, "model": model_name(model.config), "inputs": len(inputs.paths),
            "inputs_sha256": digest.hexdigest()}


def _checkpoint_name(model: nn.Module, source: ModelSource) -> str:
    report = getattr(model, "load_report", None)
    return str(source.checkpoint) if source.checkpoint is not None else str(report.path) if report else "(in memory)"


class ShardSink:
    """A `run.Sink` writing this rank's rows to shard files as they come (`store.ShardWriter`); its `close` writes
    the last shard, and rank 0 then writes `index.json` and gets every rank's failures."""

    def __init__(self, ctx: DistContext, folder: Path, source: Source, settings: dict[str, Any], *, dim: int,
                 shard_size: int, resume: bool, batch_size: int) -> None:
        self.ctx, self.folder, self.source, self.settings = ctx, folder, source, settings
        self.n_local = len(range(ctx.rank, len(source.paths), ctx.world_size))
        if ctx.is_main and resume and folder.is_dir():  # a killed run's half-written shard (no rank writes yet)
            for stale in folder.glob(".mae-*.part.*"):
                stale.unlink(missing_ok=True)
        problem, writer = None, None
        try:
            writer = ShardWriter(folder, rank=ctx.rank, shard_size=shard_size, dim=dim, settings=settings, resume=resume)
        except MAEError as exc:
            problem = str(exc)
        problems = [p for p in all_gather(ctx, problem) if p]  # every rank stops, or none does
        if problems:
            raise MAEError(problems[0])
        assert writer is not None
        self.writer = writer
        # Restart at the batch boundary before the first input not kept: the batches, hence the bits, are the
        # same as in an uninterrupted run; the writer drops what the kept shards already hold.
        self.start = self.n_local if writer.finished else (writer.skip // batch_size) * batch_size
        self.resumed = writer.skip if not writer.finished else self.n_local
        self.count = self.start
        self.index: dict[str, Any] = {}

    def add(self, item: Any) -> None:
        local, self.count = self.count, self.count + 1
        position = self.ctx.rank + local * self.ctx.world_size
        labels = self.source.labels
        if isinstance(item, FeatureResult):
            self.writer.add(local, position, item.vector, labels[position] if labels else -1)
        else:
            self.writer.add(local, position, None, failure={"image": ref_name(item.path), "error": item.reason,
                                                            "position": str(position)})

    def close(self) -> list[Any] | None:
        self.writer.close(self.n_local)
        parts = all_gather(self.ctx, self.writer.failures)  # also: every rank's shards are written
        if not self.ctx.is_main:
            return None
        keys = ("checkpoint", "pool", "layer", "transform", "size", "dtype", "world_size", "shard_size", "model")
        self.index = write_index(self.folder, [ref_name(p) for p in self.source.paths], world_size=self.ctx.world_size,
                                 labels=self.source.labels is not None, classes=self.source.classes,
                                 settings={**{k: self.settings[k] for k in keys}, "source": self.source.describe()})
        merged = sorted((f for part in parts for f in part), key=lambda f: int(f["position"]))
        return [{"image": f["image"], "error": f["error"]} for f in merged]


def _save(out: Path, rows: list[FeatureResult], model: VisionTransformer, source: ModelSource, pool: str, crop: str,
          dtype: torch.dtype, layer: int, inputs: Source) -> Path:
    features = torch.stack([r.vector for r in rows])
    size = model.config.img_size
    metadata = {"checkpoint": _checkpoint_name(model, source), "pool": pool, "size": f"{size[0]}x{size[1]}",
                "model": model_name(model.config), "crop": crop, "transform": crop,
                "dtype": str(dtype).removeprefix("torch."), "dim": str(features.shape[1]),
                "layer": str(layer),  # the block the tokens come from, 0-based (the last unless asked)
                "source": json.dumps(inputs.describe())}  # what was read; each row's name is its image's identity
    labels = [inputs.labels[r.index] for r in rows] if inputs.labels is not None else None
    return save_features(out, features, [ref_name(r.path) for r in rows], metadata, labels=labels,
                         classes=inputs.classes)
