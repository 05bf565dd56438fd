"""`mae-large reconstruct IMAGE...`: the official demo's four-panel figure for each image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    DEFAULT_CHECKPOINT,
    AllowNonfiniteOpt,
    BatchSizeOpt,
    CropOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaskRatioOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    TrustOpt,
    check_output_folder,
    check_size_budget,
    collect_inputs,
    err,
    failures_summary,
    handle_errors,
    load_model,
    out,
    parse_dtype,
    parse_size,
    print_json,
)
from cli.render import escape
from cli.sharded import run_sharded
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

PANEL_FILES = ("original", "masked", "reconstruction", "reconstruction_visible")


@handle_errors
def reconstruct_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help=f"Full ({catalog.FULL.num_tensors}-key) checkpoint.")] = DEFAULT_CHECKPOINT,
    mask_ratio: MaskRatioOpt = 0.75,
    seed: SeedOpt = 2,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")] = Path("outputs"),
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 8,
    norm_pix: Annotated[bool, typer.Option(
        "--norm-pix", help="The checkpoint predicts per-patch normalised pixels (trained with --norm_pix_loss); "
        "the prediction is un-normalised with the visible patches' statistics.")] = False,
    crop: CropOpt = "resize",
    size: SizeOpt = None,
    save_panels: Annotated[bool, typer.Option("--save-panels", help="Also write each panel as its own PNG.")] = False,
    allow_random_decoder: Annotated[bool, typer.Option(
        "--allow-random-decoder", help="Draw even with an encoder-only checkpoint (the decoder is then random).")] = False,
    dtype: DtypeOpt = "float32",
    recursive: RecursiveOpt = False,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Mask each image, reconstruct it, and save the four-panel figure (original, masked, reconstruction,
    reconstruction + visible) with its loss.

    Under torchrun each process reconstructs its own share of the images and writes their figures;
    rank 0 gathers the rows and prints the summary."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=True, mask_ratio=mask_ratio)
    check_output_folder(out_dir)
    torch_dtype = parse_dtype(dtype)

    from mae.large.image import ImageFailure
    from mae.large.pipeline import require_decoder, resolve_device

    paths, failures = collect_inputs(images, "reconstruct", recursive=recursive, quiet=json_)
    # Named from every input, so each rank names its figures as one process would.
    names = _output_names(paths, out_dir, save_panels)

    def setup(ctx, quiet: bool):
        model = load_model(checkpoint, size=hw, device=str(ctx.device), trust=trust, norm_pix_loss=norm_pix, quiet=quiet,
                           allow_nonfinite=allow_nonfinite)
        require_decoder(model, allow_random_decoder)
        return model

    def work(model, local: list[Path], ctx):
        from mae.large.figures import make_panels, reconstruction_figure, save_figure, save_panel
        from mae.large.pipeline import reconstruct_files

        random_decoder = model.load_report is not None and model.load_report.decoder_random
        note = ", ".join(n for n in ("random decoder" if random_decoder else "",
                                     "norm-pix prediction un-normalised with visible-patch statistics"
                                     if norm_pix else "") if n) or None
        for item in reconstruct_files(model, local, mask_ratio=mask_ratio, seed=seed, crop=crop,  # type: ignore[arg-type]
                                      batch_size=batch_size, dtype=torch_dtype):
            if isinstance(item, ImageFailure):
                if not json_ and not ctx.is_distributed:  # distributed: rank 0 lists them all below
                    err.print(f"[red]skipped[/] {escape(item.reason)}")
                yield {"image": str(item.path), "error": item.reason}
                continue
            panels = make_panels(model, item.image[None], item.pred[None], item.mask[None], norm_pix=norm_pix)[0]
            fig = reconstruction_figure(panels, title=item.path.name, loss=item.loss, note=note)
            stem = names[item.path]
            figure_path = save_figure(fig, out_dir / f"{stem}.png")
            written = [str(figure_path)]
            if save_panels:
                for label, panel in zip(PANEL_FILES, panels.as_list()):
                    written.append(str(save_panel(panel, out_dir / f"{stem}.{label}.png")))
            yield {"image": str(item.path), "loss": item.loss, "output": str(figure_path), "files": written, "note": note}

    started = time.perf_counter()
    run = run_sharded(paths, resolve_device(device), label="reconstructing", quiet=json_, setup=setup, work=work)
    if run.results is None:  # not rank 0: rank 0 reports for every process
        return
    model = run.state
    rows: list[dict] = [{"image": str(f.path), "error": f.reason} for f in failures] + run.results
    failures += [ImageFailure(Path(r["image"]), r["error"]) for r in run.results if "error" in r]
    if run.ctx.is_distributed and not json_:
        for r in run.results:
            if "error" in r:
                err.print(f"[red]skipped[/] {escape(r['error'])}")
    seconds = time.perf_counter() - started
    ok = [r for r in rows if "error" not in r]
    if json_:
        print_json({"checkpoint": str(checkpoint), "kind": model.load_report.kind if model.load_report else "random-init",
                    "mask_ratio": mask_ratio, "seed": seed, "norm_pix": norm_pix, "dtype": dtype,
                    "seconds": round(seconds, 3), "images": rows, "failed": len(failures)})
    else:
        out.print(_summary_table(rows, mask_ratio, seed))
    if failures:
        if not json_:
            err.print(f"[red]{failures_summary(len(failures), len(ok))}")
        raise typer.Exit(1)


def _output_names(paths: list[Path], out_dir: Path, save_panels: bool) -> dict[Path, str]:
    """A file stem per input: `cat.jpg` -> `cat`, then `cat_2`, `cat_3` ... until none of its files
    (`stem.png`, plus `stem.<panel>.png` with --save-panels) clashes with another input's files or is
    an input image itself, so nothing is overwritten even when --out is the input folder."""
    inputs = {p.resolve() for p in paths}
    taken: set[str] = set()
    names: dict[Path, str] = {}
    for path in paths:
        n = 1
        while True:
            stem = path.stem if n == 1 else f"{path.stem}_{n}"
            files = [f"{stem}.png"] + ([f"{stem}.{label}.png" for label in PANEL_FILES] if save_panels else [])
            if not any(f in taken or (out_dir / f).resolve() in inputs for f in files):
                break
            n += 1
        taken.update(files)
        names[path] = stem
    return names


def _summary_table(rows: list[dict], mask_ratio: float, seed: int) -> Table:
    table = Table(title=f"reconstructions (mask ratio {mask_ratio}, seed {seed})")
    table.add_column("image", overflow="fold")
    table.add_column("loss", justify="right")
    table.add_column("output", overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(escape(r["image"]), "[red]failed[/]", escape(r["error"]))
        else:
            table.add_row(escape(r["image"]), f"{r['loss']:.4f}", escape(r["output"]))
    return table
