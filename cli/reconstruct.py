"""`mae-large reconstruct IMAGE...`: the official demo's four-panel figure for each image, with masks the user
chooses, mask-ratio sweeps, an error panel, animations and a gallery (`jobs.reconstruct`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.console import err, failures_summary, out
from cli.errors import handle_errors, print_json
from cli.events import events
from cli.options import (
    DEFAULT_CHECKPOINT,
    MASK_HELP,
    AllowNonfiniteOpt,
    BatchSizeOpt,
    CompileOpt,
    CropOpt,
    DeviceOpt,
    DtypeOpt,
    ImageColumnOpt,
    JsonOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    TargetOpt,
    TrustOpt,
    as_usage_error,
    check_output_folder,
    check_size_budget,
    model_source,
    parse_dtype,
    parse_mask_option,
    parse_ratios,
    parse_size,
    resolve_target_option,
)
from cli.render import escape
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES


@handle_errors
def reconstruct_command(
    images: Annotated[list[Path], typer.Argument(
        help="Image files and/or folders of images, or a data set: parquet files (or a quoted glob, or the hub's "
        "folder), a save_to_disk folder, tar shards ('shards-{0000..0127}.tar').", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help=f"Full ({catalog.FULL.num_tensors}-key) checkpoint.")] = DEFAULT_CHECKPOINT,
    mask_ratio: Annotated[str | None, typer.Option(
        "--mask-ratio", show_default=False, help="Fraction of patches removed, default 0.75; a list such as "
        "0.25,0.5,0.75,0.9 draws one figure with a row per ratio (masks nested: the same seed's noise).")] = None,
    mask: Annotated[str, typer.Option("--mask", help=MASK_HELP)] = "random",
    seed: SeedOpt = 2,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")] = Path("outputs"),
    panels: Annotated[str, typer.Option(
        "--panels", help="Panels in order, from original, masked, reconstruction, visible, error (the squared "
        "error of each removed patch, in the loss's units).")] = "original,masked,reconstruction,visible",
    animate: Annotated[bool, typer.Option(
        "--animate", help="Also write an animation per image: masked -> reconstruction at mask ratios 0.1 to 0.95 "
        "(nested masks), or over seeds 0-11 with --animate-over seeds.")] = False,
    animate_over: Annotated[str, typer.Option("--animate-over", help="ratios or seeds.")] = "ratios",
    animate_format: Annotated[str, typer.Option("--animate-format", help="gif or webp.")] = "gif",
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 8,
    target: TargetOpt = "auto",
    norm_pix: Annotated[bool, typer.Option(
        "--norm-pix", help="Same as --target norm-pix: the checkpoint predicts per-patch normalised pixels; they are "
        "drawn with the visible patches' statistics.")] = False,
    crop: CropOpt = "resize",
    size: SizeOpt = None,
    save_panels: Annotated[bool, typer.Option("--save-panels", help="Also write each panel as its own PNG.")] = False,
    allow_random_decoder: Annotated[bool, typer.Option(
        "--allow-random-decoder", help="Draw even with an encoder-only checkpoint (the decoder is then random).")] = False,
    dtype: DtypeOpt = "float32",
    recursive: RecursiveOpt = False,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, show_default=False,
        help="Processes decoding images ahead of the model (0: in this process). Default: on a GPU one core left "
        "for the main process, at most 8; on the CPU 0 (the forward pass needs every core).")] = None,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
    image_column: ImageColumnOpt = None,
    compile_: CompileOpt = False,
) -> None:
    """Mask each image, reconstruct it, and save the official demo's figure (original, masked, reconstruction,
    reconstruction + visible) with its loss; or a row per mask ratio, an error panel, an animation.
    A folder also gets index.html, a gallery sorted by loss.

    Under torchrun each process reconstructs its own share of the images and writes their figures;
    rank 0 gathers the rows, writes the gallery and prints the summary."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    ratios = parse_ratios(mask_ratio)
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=True, mask_ratio=min(ratios or [0.75]))  # instant: before torch
    spec = parse_mask_option(mask)
    target = resolve_target_option(target, norm_pix)
    from mae.large.viz.figures import check_panel_names

    names = as_usage_error("--panels", check_panel_names, [v.strip() for v in panels.split(",") if v.strip()])
    _check(spec, ratios, mask_ratio, save_panels, animate_over, animate_format)
    check_output_folder(out_dir)

    from mae.large.jobs.reconstruct import reconstruct

    model = model_source(checkpoint, hw, trust=trust, allow_nonfinite=allow_nonfinite)
    run = reconstruct(images, model, out_dir, mask_ratios=ratios, mask=spec,
                      seed=seed, panels=names, target=target, crop=crop, batch_size=batch_size,  # type: ignore[arg-type]
                      dtype=parse_dtype(dtype), device=device, workers=workers, recursive=recursive,
                      save_panels=save_panels, animate=animate_over if animate else None,  # type: ignore[arg-type]
                      animate_format=animate_format, allow_random_decoder=allow_random_decoder,  # type: ignore[arg-type]
                      image_column=image_column, compile=compile_, events=events(json_))
    if run is None:  # not rank 0: rank 0 reports for every process
        return
    if json_:
        print_json({"checkpoint": str(checkpoint), "kind": run.kind, "mask": run.mask,
                    "mask_ratio": run.ratios if run.sweep else run.ratios[0], "seed": seed,
                    "target": run.target.target, "target_how": run.target.how, "norm_pix": run.target.norm_pix,
                    "dtype": dtype, "seconds": round(run.seconds, 3), "images": run.rows, "failed": len(run.failures),
                    "gallery": str(run.gallery) if run.gallery else None})
    else:
        out.print(_summary_table(run.rows, run.ratios, seed, run.mask))
        if run.gallery:
            err.print(f"gallery: {escape(str(run.gallery))}")
    if run.failures:
        if not json_:
            err.print(f"[red]{failures_summary(len(run.failures), len(run.ok))}")
        raise typer.Exit(1)


def _check(spec, ratios: list[float] | None, given: str | None, save_panels: bool, animate_over: str,  # noqa: ANN001
           animate_format: str) -> None:
    """The option combinations that cannot work, as usage errors naming the flag."""
    if animate_over not in ("ratios", "seeds"):
        raise typer.BadParameter(f"animate-over must be ratios or seeds, got {animate_over!r}", param_hint="--animate-over")
    if animate_format not in ("gif", "webp"):
        raise typer.BadParameter(f"animate-format must be gif or webp, got {animate_format!r}",
                                 param_hint="--animate-format")
    if spec.fixed_shape and ratios is not None and len(ratios) > 1:
        raise typer.BadParameter(f"--mask {spec.text} removes the same patches at every ratio; give one --mask-ratio "
                                 "(or none) with it", param_hint="--mask-ratio")
    if spec.ratio is not None and ratios is not None and ratios != [spec.ratio]:
        raise typer.BadParameter(f"--mask {spec.text} sets the ratio to {spec.ratio}, --mask-ratio says {given}; "
                                 "give one of them", param_hint="--mask-ratio")
    if save_panels and ratios is not None and len(ratios) > 1:
        raise typer.BadParameter("--save-panels writes the panels of one reconstruction; use it without a ratio list",
                                 param_hint="--save-panels")


def _summary_table(rows: list[dict], ratios: list[float], seed: int, mask: str) -> Table:
    shown = ",".join(f"{r:g}" for r in ratios)
    how = f"mask ratio {shown}" if mask == "random" else f"mask {mask}"
    table = Table(title=f"reconstructions ({how}, seed {seed})")
    table.add_column("image", overflow="fold")
    table.add_column("loss", justify="right")
    table.add_column("output", overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["image"]), "[red]failed[/]", escape(r["error"]))
        else:
            table.add_row(escape(r["image"]), f"{r['loss']:.4f}", escape(r["output"]))
    return table
