"""`mae-large reconstruct IMAGE...`: the official demo's four-panel figure for each image, with masks the user
chooses, mask-ratio sweeps, an error panel, animations and a gallery."""

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
    MaxPatchesOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    TargetOpt,
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
    resolve_target_option,
)
from cli.render import escape
from cli.sharded import run_sharded
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

PANEL_FILES = ("original", "masked", "reconstruction", "reconstruction_visible")
MASK_HELP = ("random (the official mask at --mask-ratio and --seed), block[:R] (BEiT blocks), grid (one kept per 2x2), "
             "box:X0,Y0,X1,Y1 (pixels of the model input, or fractions 0.0-1.0), left, right, top, bottom, "
             "center[:R], file:MASK.png (white = removed), patches:I,J,... (row-major indices).")


def _ratios(value: str | None) -> list[float] | None:
    """`0.75` or `0.25,0.5,0.75,0.9` -> the ratios; None when not given (then 0.75)."""
    if value is None:
        return None
    try:
        ratios = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"mask ratio must be numbers such as 0.75 or 0.25,0.5,0.75, got {value!r}",
                                 param_hint="--mask-ratio") from None
    if not ratios or any(not 0.0 <= r <= 0.99 for r in ratios):
        raise typer.BadParameter(f"every mask ratio must be in [0, 0.99], got {value!r}", param_hint="--mask-ratio")
    return ratios


def _mask_spec(value: str):  # -> MaskSpec
    from mae.large.models.masks import parse_mask

    try:
        return parse_mask(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mask") from None


@handle_errors
def reconstruct_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
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
) -> None:
    """Mask each image, reconstruct it, and save the official demo's figure (original, masked, reconstruction,
    reconstruction + visible) with its loss; or a row per mask ratio, an error panel, an animation.
    A folder also gets index.html, a gallery sorted by loss.

    Under torchrun each process reconstructs its own share of the images and writes their figures;
    rank 0 gathers the rows, writes the gallery and prints the summary."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    ratios = _ratios(mask_ratio)
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=True, mask_ratio=min(ratios or [0.75]))  # instant: before torch
    spec = _mask_spec(mask)
    names = _panel_names(panels)
    target = resolve_target_option(target, norm_pix)
    if animate_over not in ("ratios", "seeds"):
        raise typer.BadParameter(f"animate-over must be ratios or seeds, got {animate_over!r}", param_hint="--animate-over")
    if animate_format not in ("gif", "webp"):
        raise typer.BadParameter(f"animate-format must be gif or webp, got {animate_format!r}",
                                 param_hint="--animate-format")
    if spec.fixed_shape and ratios is not None and len(ratios) > 1:
        raise typer.BadParameter(f"--mask {spec.text} removes the same patches at every ratio; give one --mask-ratio "
                                 "(or none) with it", param_hint="--mask-ratio")
    if spec.ratio is not None and ratios is not None and ratios != [spec.ratio]:
        raise typer.BadParameter(f"--mask {spec.text} sets the ratio to {spec.ratio}, --mask-ratio says {mask_ratio}; "
                                 "give one of them", param_hint="--mask-ratio")
    if save_panels and ratios is not None and len(ratios) > 1:
        raise typer.BadParameter("--save-panels writes the panels of one reconstruction; use it without a ratio list",
                                 param_hint="--save-panels")
    ratios = ratios or [spec.ratio if spec.ratio is not None else 0.75]
    check_output_folder(out_dir)
    torch_dtype = parse_dtype(dtype)

    from mae.large.data.images import ImageFailure
    from mae.large.jobs.reconstruct import require_decoder
    from mae.large.utils.device import resolve_device

    paths, failures = collect_inputs(images, "reconstruct", recursive=recursive, quiet=json_)
    # Named from every input, so each rank names its figures as one process would.
    stems = _output_names(paths, out_dir, save_panels, f".{animate_format}" if animate else None)
    mask_kind = None if spec.kind == "random" and spec.ratio is None else spec
    from mae.large.data.loader import default_workers

    n_workers = default_workers(device_type=resolve_device(device).type) if workers is None else workers

    def setup(ctx, quiet: bool):
        from mae.large.jobs.reconstruct import detect_target_on_files, maskings_for
        from mae.large.models.target import resolve_target

        model = load_model(checkpoint, size=hw, device=str(ctx.device), trust=trust, quiet=quiet,
                           allow_nonfinite=allow_nonfinite)
        require_decoder(model, allow_random_decoder)
        maskings = maskings_for(model, ratios=ratios, seeds=[seed], mask=mask_kind)
        kind = model.load_report.kind if model.load_report else "random-init"
        choice = resolve_target(target, checkpoint, kind) or detect_target_on_files(model, paths, maskings[0],
                                                                                     crop=crop, dtype=torch_dtype)
        model.norm_pix_loss = choice.norm_pix  # the loss is measured against what the decoder predicts
        if not quiet:
            err.print(f"  [dim]- decoder target: {escape(choice.target)} ({escape(choice.how)})[/]")
        return model, maskings, choice

    def work(state, local: list[Path], ctx):
        from mae.large.jobs.reconstruct import sweep_files

        model, maskings, choice = state
        note = _note(model, choice)
        for item in sweep_files(model, local, maskings, crop=crop, batch_size=batch_size, dtype=torch_dtype,  # type: ignore[arg-type]
                                workers=n_workers):
            if isinstance(item, ImageFailure):
                if not json_ and not ctx.is_distributed:  # distributed: rank 0 lists them all below
                    err.print(f"[red]skipped[/] {escape(item.reason)}")
                yield {"image": str(item.path), "error": item.reason}
                continue
            yield _render(model, item, names, stems[item.path], out_dir, note=note, nested=spec.kind == "random",
                          save_panels=save_panels, norm_pix=choice.norm_pix,
                          animation=_animation(model, item, animate_over, seed, ratios[0], mask_kind) if animate else None,
                          animation_suffix=animate_format)

    started = time.perf_counter()
    run = run_sharded(paths, resolve_device(device), label="reconstructing", quiet=json_, setup=setup, work=work)
    if run.results is None:  # not rank 0: rank 0 reports for every process
        return
    model, _, choice = run.state
    rows: list[dict] = [{"image": str(f.path), "error": f.reason} for f in failures] + run.results
    failures += [ImageFailure(Path(r["image"]), r["error"]) for r in run.results if "error" in r]
    if run.ctx.is_distributed and not json_:
        for r in run.results:
            if "error" in r:
                err.print(f"[red]skipped[/] {escape(r['error'])}")
    ok = [r for r in rows if "error" not in r]
    gallery = _gallery(out_dir, ok) if ok and any(Path(i).is_dir() for i in images) else None
    seconds = time.perf_counter() - started
    if json_:
        print_json({"checkpoint": str(checkpoint), "kind": model.load_report.kind if model.load_report else "random-init",
                    "mask": spec.text, "mask_ratio": ratios if len(ratios) > 1 else ratios[0], "seed": seed,
                    "target": choice.target, "target_how": choice.how, "norm_pix": choice.norm_pix, "dtype": dtype,
                    "seconds": round(seconds, 3), "images": rows, "failed": len(failures),
                    "gallery": str(gallery) if gallery else None})
    else:
        out.print(_summary_table(rows, ratios, seed, spec.text))
        if gallery:
            err.print(f"gallery: {escape(str(gallery))}")
    if failures:
        if not json_:
            err.print(f"[red]{failures_summary(len(failures), len(ok))}")
        raise typer.Exit(1)


def _panel_names(value: str) -> tuple[str, ...]:
    from mae.large.viz.figures import check_panel_names

    try:
        return check_panel_names([v.strip() for v in value.split(",") if v.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--panels") from None


def _note(model, choice) -> str | None:
    random_decoder = model.load_report is not None and model.load_report.decoder_random
    parts = ["random decoder" if random_decoder else "",
             "norm-pix prediction un-normalised with visible-patch statistics" if choice.norm_pix else ""]
    return ", ".join(p for p in parts if p) or None


def _render(model, item, names: tuple[str, ...], stem: str, out_dir: Path, *, note: str | None, nested: bool,
            save_panels: bool, norm_pix: bool, animation, animation_suffix: str) -> dict:
    """Draw and save one image's figure (a row per masking), its panels and animation; the JSON row."""
    from mae.large.viz.figures import SweepRow, error_map, make_panels, panels_figure, save_figure, save_panel, sweep_figure

    rows = []
    for masking, pred, mask, loss in zip(item.maskings, item.preds, item.masks, item.losses):
        panels = make_panels(model, item.image[None], pred[None], mask[None], norm_pix=norm_pix)[0]
        error = error_map(model, item.image[None], pred[None], mask[None])[0] if "error" in names else None
        rows.append(SweepRow(masking.ratio, loss, panels, error))
    if len(rows) == 1:
        fig = panels_figure(rows[0].panels, names, error=rows[0].error, title=item.path.name, loss=rows[0].loss, note=note)
    else:
        fig = sweep_figure(rows, names=names, title=item.path.name, note=note, nested=nested)
    figure_path = save_figure(fig, out_dir / f"{stem}.png")
    written = [str(figure_path)]
    if save_panels:
        for label, panel in zip(PANEL_FILES, rows[0].panels.as_list()):
            written.append(str(save_panel(panel, out_dir / f"{stem}.{label}.png")))
    if animation is not None:
        written.append(str(animation(out_dir / f"{stem}.{animation_suffix}", norm_pix)))
    masks = [[int(i) for i in mask.nonzero().flatten().tolist()] for mask in item.masks]
    row = {"image": str(item.path), "loss": item.losses[0], "output": str(figure_path), "files": written, "note": note,
           "mask": masks[0]}
    if len(rows) > 1:
        row["sweep"] = [{"mask_ratio": m.ratio, "loss": loss, "mask": removed}
                        for m, loss, removed in zip(item.maskings, item.losses, masks)]
    return row


def _animation(model, item, over: str, seed: int, ratio: float, mask_kind):
    """A function writing `item`'s animation to a path: one forward per frame, frames drawn with PIL."""

    def write(path: Path, norm_pix: bool) -> Path:
        from mae.large.jobs.reconstruct import maskings_for, sweep_files
        from mae.large.viz.animation import ANIMATION_RATIOS, save_animation
        from mae.large.viz.figures import make_panels

        if over == "seeds":
            maskings = maskings_for(model, ratios=[ratio], seeds=list(range(ANIMATION_SEEDS)), mask=mask_kind)
        else:
            usable = [r for r in ANIMATION_RATIOS if int(model.config.num_patches * (1 - r)) >= 1]
            maskings = maskings_for(model, ratios=usable, seeds=[seed], mask=mask_kind)
        swept = next(iter(sweep_files(model, [item.path], maskings, overlap=False)))
        if not hasattr(swept, "preds"):
            raise ValueError(swept.reason)
        frames = [make_panels(model, swept.image[None], pred[None], mask[None], norm_pix=norm_pix)[0]
                  for pred, mask in zip(swept.preds, swept.masks)]
        labels = [f"{m.label} | loss {loss:.4f}" for m, loss in zip(maskings, swept.losses)]
        return save_animation(frames, path, labels=labels)

    return write


ANIMATION_SEEDS = 12


def _output_names(paths: list[Path], out_dir: Path, save_panels: bool, animation: str | None = None) -> dict[Path, str]:
    """A file stem per input: `cat.jpg` -> `cat`, then `cat_2`, `cat_3` ... until none of its files
    (`stem.png`, plus `stem.<panel>.png` with --save-panels, `stem.gif` with --animate) clashes with another
    input's files or is an input image itself, so nothing is overwritten even when --out is the input folder."""
    inputs = {p.resolve() for p in paths}
    taken: set[str] = set()
    names: dict[Path, str] = {}
    for path in paths:
        n = 1
        while True:
            stem = path.stem if n == 1 else f"{path.stem}_{n}"
            files = ([f"{stem}.png"] + ([f"{stem}.{label}.png" for label in PANEL_FILES] if save_panels else [])
                     + ([f"{stem}{animation}"] if animation else []))
            if not any(f in taken or (out_dir / f).resolve() in inputs for f in files):
                break
            n += 1
        taken.update(files)
        names[path] = stem
    return names


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


def _gallery(out_dir: Path, rows: list[dict]) -> Path:
    from mae.large.viz.gallery import write_gallery

    return write_gallery(out_dir, [(Path(r["image"]).name, r["loss"], r["output"], r.get("note")) for r in rows])
