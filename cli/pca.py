"""`mae-large pca IMAGE...`: the patch-feature map (first three principal components of a layer's patch tokens,
as RGB) beside each image; a folder gets one joint PCA, so its images share one colour space."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.attention import CheckpointOpt
from cli.console import err, failures_summary, out, report_encoder_view
from cli.errors import handle_errors, print_json
from cli.events import events
from cli.options import (
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
    model_source,
    parse_dtype,
    parse_size,
)
from cli.render import escape
from mae.large.cost import DEFAULT_MAX_PATCHES


@handle_errors
def pca_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: CheckpointOpt = None,
    layer: Annotated[int, typer.Option("--layer", help="The block whose patch tokens are used (negative: from the "
                                       "end; -1 is the encoder's output).")] = -1,
    joint: Annotated[bool | None, typer.Option(
        "--joint/--per-image", show_default=False,
        help="One PCA over all images (one colour space), or one per image. Default: joint when a folder is "
        "given, else per image.")] = None,
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Add a panel with the foreground alone: the side of the first component's sign holding "
        "fewer of the image's patches.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")] = Path("outputs"),
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = 8,
    crop: CropOpt = "resize",
    size: SizeOpt = None,
    dtype: DtypeOpt = "float32",
    recursive: RecursiveOpt = False,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Draw each image's patch-feature map: the first three principal components of a layer's patch tokens as
    RGB (as in the DINO / DINOv2 papers). A folder gets one PCA over all its images (streamed: a covariance
    pass, then a projection pass), so colours mean the same in every figure. Runs as one process."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=False)
    check_output_folder(out_dir)
    torch_dtype = parse_dtype(dtype)

    from mae.large.jobs.models import encoder_view_checkpoint
    from mae.large.jobs.pca import pca

    checkpoint, note = encoder_view_checkpoint(checkpoint)
    if note and not json_:
        err.print(f"[dim]{escape(note)}[/]")
    model = model_source(checkpoint, hw, trust=trust, allow_nonfinite=allow_nonfinite)
    run = pca(images, model, out_dir, layer=layer, joint=joint,
              foreground=foreground, crop=crop, batch_size=batch_size, dtype=torch_dtype, device=device,  # type: ignore[arg-type]
              recursive=recursive, events=events(json_, loaded=report_encoder_view))
    bad = [r for r in run.rows if "error" in r]
    ok = [r for r in run.rows if "error" not in r]
    if json_:
        print_json({"checkpoint": str(checkpoint), "layer": ok[0]["layer"] if ok else layer, "joint": run.joint,
                    "variance": run.variance, "explained": run.explained, "seconds": round(run.seconds, 3),
                    "images": run.rows, "failed": len(bad)})
    else:
        table = Table(title=f"patch-feature maps ({'joint PCA' if run.joint else 'a PCA per image'})")
        table.add_column("image", overflow="fold")
        table.add_column("output", overflow="fold")
        for r in run.rows:
            table.add_row(escape(r["image"]), f"[red]failed[/] {escape(r['error'])}" if "error" in r else escape(r["output"]))
        out.print(table)
        for r in ok:
            if r.get("warning"):
                err.print(f"[yellow]warning:[/] {escape(Path(r['image']).name)}: {escape(r['warning'])}")
    if bad:
        if not json_:
            err.print(f"[red]{failures_summary(len(bad), len(ok))}")
        raise typer.Exit(1)
