"""`mae-large reconstruct IMAGE...`: the official demo's four-panel figure for each image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from cli.common import (
    DEFAULT_CHECKPOINT,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaskRatioOpt,
    SizeOpt,
    TrustOpt,
    collect_inputs,
    err,
    handle_errors,
    load_model,
    out,
    parse_dtype,
    parse_size,
    print_json,
)
from cli.render import escape

PANEL_FILES = ("original", "masked", "reconstruction", "reconstruction_visible")


@handle_errors
def reconstruct_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Full (398-key) checkpoint.")] = DEFAULT_CHECKPOINT,
    mask_ratio: MaskRatioOpt = 0.75,
    seed: Annotated[int, typer.Option("--seed", help="Masking seed; the same seed gives the same mask (official demo: 2).")] = 2,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")] = Path("outputs"),
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 8,
    norm_pix: Annotated[bool, typer.Option(
        "--norm-pix", help="The checkpoint predicts per-patch normalised pixels (trained with --norm_pix_loss); "
        "the prediction is un-normalised with the visible patches' statistics.")] = False,
    crop: Annotated[str, typer.Option(
        "--crop", help="resize (official demo: squash to the size) or center (keep aspect, crop).")] = "resize",
    size: SizeOpt = "224",
    save_panels: Annotated[bool, typer.Option("--save-panels", help="Also write each panel as its own PNG.")] = False,
    allow_random_decoder: Annotated[bool, typer.Option(
        "--allow-random-decoder", help="Draw even with an encoder-only checkpoint (the decoder is then random).")] = False,
    dtype: DtypeOpt = "float32",
    json_: JsonOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Mask each image, reconstruct it, and save the four-panel figure (original, masked, reconstruction,
    reconstruction + visible) with its loss.

    Under torchrun each process reconstructs its own share of the images and writes their figures;
    rank 0 gathers the rows and prints the summary."""
    if crop not in ("resize", "center"):
        raise typer.BadParameter("crop must be resize or center", param_hint="--crop")
    hw = parse_size(size)
    torch_dtype = parse_dtype(dtype)

    from mae.large.distributed import distributed_run, gather_to_main, shard
    from mae.large.image import ImageFailure
    from mae.large.pipeline import require_decoder, resolve_device

    paths, failures = collect_inputs(images, "reconstruct")
    with distributed_run(resolve_device(device)) as ctx:
        quiet = json_ or not ctx.is_main
        model = load_model(checkpoint, size=hw, device=str(ctx.device), trust=trust, norm_pix_loss=norm_pix, quiet=quiet)
        require_decoder(model, allow_random_decoder)
        random_decoder = model.load_report is not None and model.load_report.decoder_random

        from mae.large.figures import make_panels, reconstruction_figure, save_figure, save_panel
        from mae.large.pipeline import reconstruct_files

        # Named from every input, so each rank names its figures as one process would.
        names = _output_names(paths, out_dir, save_panels)
        local = shard(paths, ctx.rank, ctx.world_size)
        local_rows: list[dict] = []
        crop_mode: Literal["resize", "center"] = "center" if crop == "center" else "resize"
        started = time.perf_counter()
        with _progress(len(local), quiet=quiet or len(local) < 2) as advance:
            for item in reconstruct_files(model, local, mask_ratio=mask_ratio, seed=seed, crop=crop_mode,
                                          batch_size=batch_size, dtype=torch_dtype):
                advance()
                if isinstance(item, ImageFailure):
                    local_rows.append({"image": str(item.path), "error": item.reason})
                    if not quiet and not ctx.is_distributed:  # distributed: rank 0 lists them all below
                        err.print(f"[red]skipped[/] {escape(item.reason)}")
                    continue
                panels = make_panels(model, item.image[None], item.pred[None], item.mask[None], norm_pix=norm_pix)[0]
                note = ", ".join(n for n in ("random decoder" if random_decoder else "",
                                             "norm-pix prediction un-normalised with visible-patch statistics"
                                             if norm_pix else "") if n) or None
                fig = reconstruction_figure(panels, title=item.path.name, loss=item.loss, note=note)
                stem = names[item.path]
                figure_path = save_figure(fig, out_dir / f"{stem}.png")
                written = [str(figure_path)]
                if save_panels:
                    for label, panel in zip(PANEL_FILES, panels.as_list()):
                        written.append(str(save_panel(panel, out_dir / f"{stem}.{label}.png")))
                local_rows.append({"image": str(item.path), "loss": item.loss, "output": str(figure_path),
                                   "files": written, "note": note})
        gathered = gather_to_main(ctx, local_rows)
    if gathered is None:  # not rank 0: rank 0 reports for every process
        return
    position = {str(p): i for i, p in enumerate(paths)}
    rows: list[dict] = [{"image": str(f.path), "error": f.reason} for f in failures]
    rows += sorted(gathered, key=lambda r: position[r["image"]])  # input order, failures in their place
    failures += [ImageFailure(Path(r["image"]), r["error"]) for r in gathered if "error" in r]
    if ctx.is_distributed and not json_:
        for r in gathered:
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
            err.print(f"[red]{len(failures)} of {len(failures) + len(ok)} inputs failed[/]; the others were written")
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


class _progress:
    """A rich progress bar on stderr for several images; a no-op otherwise."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.bar = None

    def __enter__(self):
        if self.quiet:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("reconstructing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task("images", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
