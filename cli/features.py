"""`mae-large features IMAGE...`: one pooled encoder feature vector per image, saved as safetensors.

Runs as one process, or as several under torchrun (`torchrun --nproc-per-node N -m cli features ...`):
each rank embeds a disjoint round-robin share of the images, rank 0 gathers the vectors, writes the
file in input order and prints; the other ranks stay silent.
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

DEFAULT_FEATURES_CHECKPOINT = catalog.ENCODER_ONLY.default_path
DEFAULT_FEATURES_OUT = Path("features.safetensors")


@handle_errors
def features_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help="MAE checkpoint; only the encoder is used (encoder-only or full).",
    )] = DEFAULT_FEATURES_CHECKPOINT,
    out_path: Annotated[Path, typer.Option(
        "--out", "-o", help="The safetensors file to write: 'features' (N, D) float32, the file names in its metadata.",
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
) -> None:
    """Embed each image with the MAE encoder and save the pooled feature vectors, in input order."""
    if out_path.is_dir():
        raise typer.BadParameter(f"{out_path} is a folder; give a file name such as {DEFAULT_FEATURES_OUT}",
                                 param_hint="--out")
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=False)
    check_output_folder(out_path.parent)
    torch_dtype = parse_dtype(dtype)

    from mae.large.features import FeatureResult, extract_features
    from mae.large.image import ImageFailure
    from mae.large.pipeline import resolve_device

    paths, failures = collect_inputs(images, "extract features from", recursive=recursive, quiet=json_)
    if out_path.resolve() in {p.resolve() for p in paths}:
        raise typer.BadParameter(f"{out_path} is one of the input images; choose another output file", param_hint="--out")
    started = time.perf_counter()
    run = run_sharded(
        paths, resolve_device(device), label="embedding", quiet=json_,
        setup=lambda ctx, quiet: _load_encoder(checkpoint, hw, pool, ctx.device, trust=trust, quiet=quiet,
                                               allow_nonfinite=allow_nonfinite),
        work=lambda model, local, ctx: extract_features(model, local, batch_size=batch_size, crop=crop,  # type: ignore[arg-type]
                                                        dtype=torch_dtype, device=ctx.device, layer=layer),
    )
    if run.results is None:  # not rank 0: rank 0 writes and reports
        return
    seconds = time.perf_counter() - started
    model, merged, world_size = run.state, run.results, run.ctx.world_size
    pool = "mean" if model.global_pool else "cls"

    rows = [r for r in merged if isinstance(r, FeatureResult)]
    failures += [r for r in merged if isinstance(r, ImageFailure)]
    dim = model.config.embed_dim
    written: Path | None = None
    if rows:
        written = _save(out_path, rows, model, checkpoint, pool, crop, dtype, layer)
    failed = [{"image": str(f.path), "error": f.reason} for f in failures]
    if json_:
        print_json({"output": str(written) if written else None, "count": len(rows), "dim": dim, "pool": pool,
                    "layer": (model.config.depth - 1) if layer is None else layer % model.config.depth,
                    "size": list(model.config.img_size), "checkpoint": str(checkpoint), "failed": failed,
                    "world_size": world_size, "seconds": round(seconds, 3)})
    else:
        for f in failures:
            err.print(f"[red]skipped[/] {escape(f.reason)}")
        if written is not None:
            procs = f", {world_size} processes" if world_size > 1 else ""
            h, w = model.config.img_size
            out.print(f"wrote {len(rows)} feature vectors of dim {dim} (pool {pool}, {h}x{w}) to "
                      f"{escape(str(written))} in {seconds:.1f} s{procs}")
        else:
            err.print("[red]no feature vector[/]: every image failed, nothing was written")
    if failures:
        if not json_ and rows:
            err.print(f"[red]{failures_summary(len(failures), len(rows))}")
        raise typer.Exit(1)


def _load_encoder(checkpoint: Path, size: tuple[int, int] | None, pool: str | None, device: Any, *, trust: bool,
                  quiet: bool, allow_nonfinite: bool = False) -> VisionTransformer:
    """The encoder of `catalog.DEFAULT_ARCHITECTURE` (ViT-L) with no head, pooled as `pool` (None: the file's
    own, `features.load_feature_encoder`)."""
    import warnings

    from mae.large import ViTConfig
    from mae.large.features import load_feature_encoder

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
          dtype: str, layer: int | None = None) -> Path:
    import torch

    from mae.large.features import model_name, save_features

    features = torch.stack([r.vector for r in rows])
    size = model.config.img_size
    metadata = {"checkpoint": str(checkpoint), "pool": pool, "size": f"{size[0]}x{size[1]}",
                "model": model_name(model.config), "crop": crop, "transform": crop, "dtype": dtype, "dim": str(features.shape[1]),
                # The block the tokens come from, 0-based (the last unless --layer chose another).
                "layer": str((model.config.depth - 1) if layer is None else layer % model.config.depth)}
    return save_features(out_path, features, [str(r.path) for r in rows], metadata)
