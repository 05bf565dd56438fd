"""`mae-large features INPUT...`: one pooled encoder feature vector per image, saved as safetensors.

The job is `jobs.features`. Inputs: image files and folders, one list file (one path per line), one
ImageFolder tree (`root/CLASS/img`: the sorted class names become integer labels), or a data set's files (parquet,
a `save_to_disk` folder, WebDataset tar shards; `--image-column` / `--label-column`). Images are decoded by
`--workers` processes ahead of the model.

Output: `--out x.safetensors`, one file (rank 0 gathers the rows), or `--out DIR`, a shard folder: each rank
writes shards of at most `--shard-size` rows as soon as they are complete, rank 0 writes `index.json` last;
`--resume` continues an interrupted run. Runs as one process, or as several under torchrun
(`torchrun --nproc-per-node N -m cli features ...`): each rank embeds a disjoint round-robin share; only rank 0
prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import err, failures_summary, out, report_encoder
from cli.errors import handle_errors, print_json
from cli.events import events
from cli.options import (
    AllowNonfiniteOpt,
    BatchSizeOpt,
    CompileOpt,
    CropOpt,
    DeviceOpt,
    DtypeOpt,
    ImageColumnOpt,
    JsonOpt,
    LabelColumnOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SizeOpt,
    TrustOpt,
    check_output_folder,
    check_size_budget,
    model_source,
    optional_choice,
    parse_dtype,
    parse_size,
)
from cli.render import escape
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

DEFAULT_FEATURES_CHECKPOINT = catalog.ENCODER_ONLY.default_path
DEFAULT_FEATURES_OUT = Path("features.safetensors")


@handle_errors
def features_command(
    images: Annotated[list[Path], typer.Argument(
        help="Image files and/or folders, a list file, an ImageFolder tree, or a data set: parquet files (or a quoted "
        "glob, or the hub's folder), a save_to_disk folder, tar shards ('shards-{0000..0127}.tar').",
        show_default=False)],
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
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    compile_: CompileOpt = False,
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

    from mae.large.jobs.features import features

    model = model_source(checkpoint, hw, trust=trust, allow_nonfinite=allow_nonfinite)
    run = features(images, model, out_path, pool=pool, layer=layer,
                   batch_size=batch_size, crop=crop, dtype=torch_dtype, device=device, workers=workers,  # type: ignore[arg-type]
                   recursive=recursive, shard_size=shard_size, resume=resume, image_column=image_column,
                   label_column=label_column, compile=compile_,
                   events=events(json_, loaded=report_encoder, failures=False))
    if run is None:  # not rank 0: rank 0 writes and reports
        return
    if json_:
        extra = {"shards": run.shards, "resumed_inputs": run.resumed_inputs} if run.shards is not None else {}
        print_json({"output": str(run.output) if run.output else None, "count": run.count, "dim": run.dim,
                    "pool": run.pool, "layer": run.layer, "size": list(run.size), "checkpoint": str(checkpoint),
                    "failed": run.failed, "world_size": run.world_size, "workers": run.workers, "labels": run.labels,
                    "seconds": round(run.seconds, 3), **extra})
    else:
        _report(run)
    if run.failed:
        if not json_ and run.count:
            err.print(f"[red]{failures_summary(len(run.failed), run.count)}")
        raise typer.Exit(1)


def _report(run) -> None:  # noqa: ANN001 - a jobs.features.FeaturesRun
    for f in run.failed:
        err.print(f"[red]skipped[/] {escape(f['error'])}")
    if run.output is None:
        err.print("[red]no feature vector[/]: every image failed, nothing was written")
        return
    procs = f", {run.world_size} processes" if run.world_size > 1 else ""
    h, w = run.size
    where = f"{run.shards} shard(s) in {escape(str(run.output))}" if run.shards is not None else escape(str(run.output))
    out.print(f"wrote {run.count} feature vectors of dim {run.dim} (pool {run.pool}, {h}x{w}) to {where} in "
              f"{run.seconds:.1f} s{procs}")
