"""`mae-large export-onnx --checkpoint CKPT --out model.onnx --what features|mae`: an ONNX file, checked.

`features`: image -> pooled feature, as `mae-large features` computes it (the file's own pooling). `mae`: image and
noise -> loss, pred, mask (the noise decides the mask, as in PyTorch). The file is run with onnxruntime on random
inputs and compared with PyTorch before it is written; the table shows the opset and the check's result. Needs
the optional packages: `pip install 'mae-large[onnx]'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.console import err, out, report_encoder, report_load
from cli.errors import handle_errors, print_json
from cli.events import events
from cli.options import (
    DEFAULT_CHECKPOINT,
    AllowNonfiniteOpt,
    JsonOpt,
    MaxPatchesOpt,
    SizeOpt,
    TrustOpt,
    check_output_folder,
    check_size_budget,
    choice,
    model_source,
    parse_size,
)
from cli.render import escape
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.jobs.onnx import OnnxReport

WHATS = ("features", "mae")  # mae.large.jobs.onnx.WHATS, spelled here so `--help` needs no torch


@handle_errors
def export_onnx_command(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", show_default=False,
        help=f"MAE checkpoint. Default: {catalog.ENCODER_ONLY.default_path} for features, {DEFAULT_CHECKPOINT} "
        "for mae.")] = None,
    what: Annotated[str, typer.Option(
        "--what", callback=choice("--what", WHATS),
        help="features: image -> pooled feature, as `mae-large features` (the file's own pooling). mae: image and "
        "noise (B, L) -> loss, pred, mask; the smallest noise values are the kept patches.")] = "features",
    size: SizeOpt = None,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="Any batch size (the first dimension is named batch); default a batch of 1.")] = False,
    mask_ratio: Annotated[float, typer.Option(
        "--mask-ratio", min=0.0, max=0.99, help="With --what mae: the fraction of patches removed, fixed in the file.",
    )] = 0.75,
    target: Annotated[str, typer.Option(
        "--target", callback=choice("--target", catalog.TARGETS),
        help="With --what mae: what the loss compares the prediction with: pixels, norm-pix (per-patch normalised "
        "pixels, the *_full.pth pre-training files), or auto (the catalogue's entry for the file, else pixels).",
    )] = "auto",
    allow_random_decoder: Annotated[bool, typer.Option(
        "--allow-random-decoder", help="With --what mae: export an encoder-only file with the official random "
        "decoder init.")] = False,
    opset: Annotated[int | None, typer.Option(
        "--opset", min=18, show_default=False, help="ONNX opset (default: the exporter's).")] = None,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
) -> None:
    """Export the feature extractor or the masked autoencoder to ONNX, checked with onnxruntime against PyTorch."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=what == "mae", mask_ratio=mask_ratio if what == "mae" else 0.0)
    if out_path.is_dir():
        raise typer.BadParameter(f"{out_path} is a folder; give the .onnx file to write", param_hint="--out")
    if out_path.exists() and not force:
        raise typer.BadParameter(f"{out_path} exists; choose another path, or pass --force to replace it",
                                 param_hint="--out")
    check_output_folder(out_path.parent)

    from mae.large.jobs.onnx import export_onnx, require_onnx

    require_onnx()  # a missing extra is said before the model is read
    source = checkpoint or (catalog.ENCODER_ONLY.default_path if what == "features" else DEFAULT_CHECKPOINT)
    if not json_:
        err.print(f"[dim]exporting {what} (torch.onnx, dynamo) and checking it with onnxruntime ...[/]")
    model = model_source(source, hw, trust=trust, allow_nonfinite=allow_nonfinite)
    report = export_onnx(model, out_path, what, size=hw, dynamic_batch=dynamic_batch,  # type: ignore[arg-type]
                         mask_ratio=mask_ratio, target=target, opset=opset, trust=trust, allow_nonfinite=allow_nonfinite,
                         allow_random_decoder=allow_random_decoder, overwrite=force,
                         events=events(json_, loaded=report_encoder if what == "features" else report_load))
    if json_:
        print_json({**report.to_dict(), "checkpoint": str(source)})
    else:
        out.print(_table(report))


def _shape(shape: tuple[int | str, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if shape else "() scalar"


def _table(report: OnnxReport) -> Table:
    """The file, its opset, inputs and outputs, and the check's result."""
    table = Table(title="ONNX export", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    written = escape(str(report.path))
    if report.data_path is not None:
        written += f" (weights in {escape(str(report.data_path))})"
    h, w = report.img_size
    table.add_row("file", written)
    table.add_row("graph", f"{report.what}, {h}x{w}, batch {'dynamic' if report.dynamic_batch else 1}")
    if report.mask_ratio is not None:
        table.add_row("masking", f"ratio {report.mask_ratio:g} fixed; the noise input decides which patches "
                      f"(smallest kept); loss against {report.target} ({escape(report.target_how or '')}; --target chooses)")
    table.add_row("opset", str(report.opset))
    for label, tensors in (("input", report.inputs), ("output", report.outputs)):
        for t in tensors:
            table.add_row(label, f"{escape(t.name)} {_shape(t.shape)} {escape(t.dtype)}")
    if report.checked and report.max_abs_error is not None:
        batches = ", ".join(map(str, report.check_batches))
        table.add_row("check", f"[green]passed[/]: onnxruntime vs PyTorch on random inputs (batch {batches}), max abs "
                      f"diff {report.max_abs_error:.2e} <= {report.tolerance:g}")
        if report.masks_identical is not None:
            table.add_row("masks", "[green]identical[/]" if report.masks_identical else "[red]different[/]")
    table.add_row("time", f"{report.seconds:.1f} s")
    return table
