"""`mae-large features INPUT...`: one pooled encoder feature vector per image, saved as safetensors.

Inputs: image files and folders, one list file (one path per line), or one ImageFolder tree (`root/CLASS/img`:
the sorted class names become integer labels). Images are decoded by `--workers` processes ahead of the model.

Output: `--out x.safetensors`, one file (rank 0 gathers the rows), or `--out DIR`, a shard folder: each rank
writes shards of at most `--shard-size` rows as soon as they are complete, rank 0 writes `index.json` last;
`--resume` continues an interrupted run. Runs as one process, or as several under torchrun
(`torchrun --nproc-per-node N -m cli features ...`): each rank embeds a disjoint round-robin share; only rank 0
prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import (
    AllowNonfiniteOpt,
    BatchSizeOpt,
    CropOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SizeOpt,
    TrustOpt,
    check_output_folder,
    check_size_budget,
    collect_inputs,
    err,
    failures_summary,
    handle_errors,
    optional_choice,
    out,
    parse_dtype,
    parse_size,
    print_json,
    report_details,
)
from cli.render import escape
from cli.sharded import run_sharded
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

if TYPE_CHECKING:  # pragma: no cover
    from mae.large import VisionTransformer
    from mae.large.data.loader import Source

DEFAULT_FEATURES_CHECKPOINT = catalog.ENCODER_ONLY.default_path
DEFAULT_FEATURES_OUT = Path("features.safetensors")


@handle_errors
def features_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help="MAE checkpoint; only the encoder is used (encoder-only or full).",
    )] = DEFAULT_FEATURES_CHECKPOINT,
    out_path: Annotated[Path, typer.Option(
        "--out", "-o", help="A .safetensors file ('features' (N, D) float32, names and labels in its metadata), or a "
        "folder (an existing one, or a name without .safetensors) of shards plus index.json, for data sets; under "
        "multi-node torchrun it must be on a filesystem every node sees.",
    )] = DEFAULT_FEATURES_OUT,
    pool: Annotated[str | None, typer.Option(
        "--pool", callback=optional_choice("--pool", catalog.POOLS), show_default=False,
        help="cls (default; main_linprobe.py's feature): the cls token after the encoder's trained final norm. "
        "mean: mean patch token + fc_norm (official global pool: a fresh, plain LayerNorm for a pre-training file). "
        "Default for a fine-tuned classifier: its own pooling (mean) through its trained fc_norm.")] = None,
    layer: Annotated[int | None, typer.Option(
        "--layer", show_default=False,
        help="Take the tokens of this block (0-based, negative from the end) instead of the last, pooled as --pool "
        "through the same final norm (probing by depth); recorded in the file's metadata.")] = None,
    batch_size: BatchSizeOpt = 32,
    size: SizeOpt = None,
    crop: CropOpt = "eval",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    recursive: RecursiveOpt = False,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, show_default=False,
        help="Processes decoding images ahead of the model (0: in the main process). Default: on a GPU one core "
        "left for the main process, at most 8; on the CPU 0 (the forward pass needs every core).")] = None,
    shard_size: Annotated[int, typer.Option(
        "--shard-size", min=1, help="With --out DIR: rows per shard file (each written as soon as it is full).",
    )] = 10_000,
    resume: Annotated[bool, typer.Option(
        "--resume", help="With --out DIR: keep the complete shards of an interrupted run and do the rest (same "
        "settings and number of processes; the result is the same as an uninterrupted run).")] = False,
) -> None:
    """Embed each image with the MAE encoder and save the pooled feature vectors, in input order."""
    sharded = out_path.is_dir() or out_path.suffix.lower() != ".safetensors"
    if resume and not sharded:
        raise typer.BadParameter("--resume continues a shard folder; give --out a folder (no .safetensors suffix)",
                                 param_hint="--resume")
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=False)
    check_output_folder(out_path if sharded else out_path.parent)
    torch_dtype = parse_dtype(dtype)

    from mae.large.data.images import ImageFailure
    from mae.large.data.loader import default_workers
    from mae.large.evaluate.features import FeatureResult, extract_features
    from mae.large.utils.device import resolve_device

    source = _inputs(images, recursive, json_)
    paths, failures = source.paths, list(source.failures)
    if not sharded and out_path.resolve() in {p.resolve() for p in paths}:
        raise typer.BadParameter(f"{out_path} is one of the input images; choose another output file", param_hint="--out")
    n_workers = default_workers(device_type=resolve_device(device).type) if workers is None else workers
    held: dict[str, Any] = {}
    started = time.perf_counter()

    def setup(ctx: Any, quiet: bool) -> VisionTransformer:
        held["model"] = _load_encoder(checkpoint, hw, pool, ctx.device, trust=trust, quiet=quiet,
                                      allow_nonfinite=allow_nonfinite)
        return held["model"]

    def sink(ctx: Any) -> ShardSink:
        held["sink"] = ShardSink(ctx, out_path, source, _settings(held["model"], checkpoint, crop, torch_dtype, layer,
                                                                  ctx.world_size, shard_size, source),
                                 dim=held["model"].config.embed_dim, shard_size=shard_size, resume=resume,
                                 batch_size=batch_size)
        return held["sink"]

    def work(model: VisionTransformer, local: list[int], ctx: Any) -> Any:
        start = held["sink"].start if sharded else 0
        return extract_features(model, paths, batch_size=batch_size, crop=crop,  # type: ignore[arg-type]
                                dtype=torch_dtype, device=ctx.device, layer=layer, workers=n_workers,
                                indices=local[start:])

    run = run_sharded(range(len(paths)), resolve_device(device), label="embedding", quiet=json_, setup=setup,
                      work=work, **({"sink": sink, "record": False} if sharded else {}))
    if run.results is None:  # not rank 0: rank 0 writes and reports
        return
    seconds = time.perf_counter() - started
    model, merged, world_size = run.state, run.results, run.ctx.world_size
    pool = "mean" if model.global_pool else "cls"
    dim = model.config.embed_dim
    written: Path | None = None
    extra: dict[str, Any] = {}
    if sharded:
        index = held["sink"].index
        count = index["rows"]
        failed = failures_json(failures) + merged  # merged: every rank's failures, in input order
        written = out_path
        extra = {"shards": len(index["shards"]), "resumed_inputs": held["sink"].resumed}
    else:
        rows = [r for r in merged if isinstance(r, FeatureResult)]
        failures += [r for r in merged if isinstance(r, ImageFailure)]
        count = len(rows)
        if rows:
            written = _save(out_path, rows, model, checkpoint, pool, crop, dtype, layer, source)
        failed = failures_json(failures)
    if json_:
        print_json({"output": str(written) if written else None, "count": count, "dim": dim, "pool": pool,
                    "layer": (model.config.depth - 1) if layer is None else layer % model.config.depth,
                    "size": list(model.config.img_size), "checkpoint": str(checkpoint), "failed": failed,
                    "world_size": world_size, "workers": n_workers, "labels": source.classes is not None,
                    "seconds": round(seconds, 3), **extra})
    else:
        for f in failed:
            err.print(f"[red]skipped[/] {escape(f['error'])}")
        if written is not None:
            procs = f", {world_size} processes" if world_size > 1 else ""
            h, w = model.config.img_size
            where = f"{extra['shards']} shard(s) in {escape(str(written))}" if sharded else escape(str(written))
            out.print(f"wrote {count} feature vectors of dim {dim} (pool {pool}, {h}x{w}) to {where} in "
                      f"{seconds:.1f} s{procs}")
        else:
            err.print("[red]no feature vector[/]: every image failed, nothing was written")
    if failed:
        if not json_ and count:
            err.print(f"[red]{failures_summary(len(failed), count)}")
        raise typer.Exit(1)


def failures_json(failures: list) -> list[dict[str, str]]:
    return [{"image": str(f.path), "error": f.reason} for f in failures]


def _inputs(images: list[Path], recursive: bool, quiet: bool) -> Source:
    """The inputs as a `data.Source`: a list file, an ImageFolder tree (labelled), or files and folders."""
    from mae.large.data.loader import Source, image_folder, list_file, source_form
    from mae.large.errors import ImageError

    form = source_form(images, recursive=recursive)
    if form == "files":
        paths, failures = collect_inputs(images, "extract features from", recursive=recursive, quiet=quiet)
        return Source(paths, failures=failures)
    source = image_folder(images[0]) if form == "image-folder" else list_file(images[0])
    if not source.paths:
        reasons = "; ".join(f.reason for f in source.failures) or "it names no file"
        raise ImageError(f"no image to extract features from in {images[0]}: {reasons}")
    if not quiet and source.classes is not None:
        err.print(f"[dim]ImageFolder tree: {len(source.paths)} images in {len(source.classes)} classes "
                  f"({escape(', '.join(source.classes[:5]))}{' ...' if len(source.classes) > 5 else ''})[/]")
    return source


def _settings(model: VisionTransformer, checkpoint: Path, crop: str, dtype: Any, layer: int | None, world_size: int,
              shard_size: int, source: Source) -> dict[str, Any]:
    """What identifies a sharded run (a resumed run must match it): the index's fields and a digest of the inputs."""
    import hashlib

    from mae.large.evaluate.features import model_name

    digest = hashlib.sha256()
    for i, path in enumerate(source.paths):
        digest.update(f"{path}\t{source.labels[i] if source.labels else ''}\n".encode("utf-8", "surrogateescape"))
    h, w = model.config.img_size
    return {"checkpoint": str(checkpoint), "pool": "mean" if model.global_pool else "cls",
            "layer": (model.config.depth - 1) if layer is None else layer % model.config.depth, "transform": crop,
            "size": f"{h}x{w}", "dtype": str(dtype).removeprefix("torch."), "world_size": world_size,
            "shard_size": shard_size, "model": model_name(model.config), "inputs": len(source.paths),
            "inputs_sha256": digest.hexdigest()}


class ShardSink:
    """A `cli.sharded.Sink` writing this rank's rows to shard files as they come (`feature_store.ShardWriter`); its
    `close` writes the last shard, and rank 0 then writes `index.json` and gets every rank's failures."""

    def __init__(self, ctx: Any, folder: Path, source: Source, settings: dict[str, Any], *, dim: int, shard_size: int,
                 resume: bool, batch_size: int) -> None:
        from mae.large.errors import MAEError
        from mae.large.evaluate.store import ShardWriter
        from mae.large.utils.distributed import all_gather

        self.ctx, self.folder, self.source, self.settings = ctx, folder, source, settings
        self.n_local = len(range(ctx.rank, len(source.paths), ctx.world_size))
        if ctx.is_main and resume and folder.is_dir():  # a killed run's half-written shard (no rank writes yet)
            for stale in folder.glob(".mae-*.part.*"):
                stale.unlink(missing_ok=True)
        problem, writer = None, None
        try:
            writer = ShardWriter(folder, rank=ctx.rank, shard_size=shard_size, dim=dim,
                                 settings=settings, resume=resume)
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
        from mae.large.evaluate.features import FeatureResult

        local, self.count = self.count, self.count + 1
        position = self.ctx.rank + local * self.ctx.world_size
        labels = self.source.labels
        if isinstance(item, FeatureResult):
            self.writer.add(local, position, item.vector, labels[position] if labels else -1)
        else:
            self.writer.add(local, position, None, failure={"image": str(item.path), "error": item.reason,
                                                            "position": str(position)})

    def close(self) -> list[Any] | None:
        from mae.large.evaluate.store import write_index
        from mae.large.utils.distributed import all_gather

        self.writer.close(self.n_local)
        parts = all_gather(self.ctx, self.writer.failures)  # also: every rank's shards are written
        if not self.ctx.is_main:
            return None
        keys = ("checkpoint", "pool", "layer", "transform", "size", "dtype", "world_size", "shard_size", "model")
        self.index = write_index(self.folder, [str(p) for p in self.source.paths], world_size=self.ctx.world_size,
                                 labels=self.source.labels is not None, classes=self.source.classes,
                                 settings={k: self.settings[k] for k in keys})
        merged = sorted((f for part in parts for f in part), key=lambda f: int(f["position"]))
        return [{"image": f["image"], "error": f["error"]} for f in merged]



def _load_encoder(checkpoint: Path, size: tuple[int, int] | None, pool: str | None, device: Any, *, trust: bool,
                  quiet: bool, allow_nonfinite: bool = False) -> VisionTransformer:
    """The encoder of `catalog.DEFAULT_ARCHITECTURE` (ViT-L) with no head, pooled as `pool` (None: the file's
    own, `features.load_feature_encoder`)."""
    import warnings

    from mae.large import ViTConfig
    from mae.large.evaluate.features import load_feature_encoder

    config = ViTConfig.from_architecture(None, **({"img_size": size} if size else {}))
    with warnings.catch_warnings():  # the report's warnings are printed below
        warnings.simplefilter("ignore", UserWarning)
        model = load_feature_encoder(checkpoint, pool, config, trust=trust, device=device,
                                     allow_nonfinite=allow_nonfinite)
    r = model.load_report
    if not quiet and r is not None:
        err.print(f"[green]encoder[/] from {escape(str(r.path))} ({r.kind}, {r.source_format}, {r.container}): "
                  f"{r.num_loaded} tensors, {r.num_parameters / 1e6:.1f} M parameters")
        report_details(r)
        if r.kind == "fine-tuned":
            err.print("  [dim]- pool mean: the fine-tuned classifier's own pooling, through its trained fc_norm[/]")
        elif model.global_pool:
            err.print("  [dim]- pool mean: mean patch token through a fresh fc_norm, i.e. a plain LayerNorm[/]")
    return model


def _save(out_path: Path, rows: list, model: VisionTransformer, checkpoint: Path, pool: str, crop: str,
          dtype: str, layer: int | None, source: Source) -> Path:
    import torch

    from mae.large.evaluate.features import model_name
    from mae.large.evaluate.store import save_features

    features = torch.stack([r.vector for r in rows])
    size = model.config.img_size
    metadata = {"checkpoint": str(checkpoint), "pool": pool, "size": f"{size[0]}x{size[1]}",
                "model": model_name(model.config), "crop": crop, "transform": crop, "dtype": dtype, "dim": str(features.shape[1]),
                # The block the tokens come from, 0-based (the last unless --layer chose another).
                "layer": str((model.config.depth - 1) if layer is None else layer % model.config.depth)}
    labels = [source.labels[r.index] for r in rows] if source.labels is not None else None
    return save_features(out_path, features, [str(r.path) for r in rows], metadata, labels=labels,
                         classes=source.classes)
