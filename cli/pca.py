"""`mae-large pca IMAGE...`: the patch-feature map (first three principal components of a layer's patch tokens,
as RGB) beside each image; a folder gets one joint PCA, so its images share one colour space."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.attention import CheckpointOpt
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
    encoder_view_checkpoint,
    err,
    failures_summary,
    handle_errors,
    load_encoder_view,
    out,
    output_stems,
    parse_dtype,
    parse_size,
    print_json,
)
from cli.render import escape
from mae.large.cost import DEFAULT_MAX_PATCHES

SUFFIX = ".pca.png"


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
    joint = any(Path(i).is_dir() for i in images) if joint is None else joint

    from mae.large.data.images import ImageFailure
    from mae.large.jobs.encoder_view import PCAResult, pca_files

    paths, failures = collect_inputs(images, "draw patch features for", recursive=recursive, quiet=json_)
    checkpoint = encoder_view_checkpoint(checkpoint, quiet=json_)
    stems = output_stems(paths, out_dir, SUFFIX)
    model = load_encoder_view(checkpoint, size=hw, device=device, trust=trust, allow_nonfinite=allow_nonfinite,
                              quiet=json_)
    started = time.perf_counter()
    rows: list[dict] = [{"image": str(f.path), "error": f.reason} for f in failures]
    variance = None
    for item in pca_files(model, paths, layer=layer, joint=joint, with_foreground=foreground, batch_size=batch_size,
                          crop=crop, dtype=torch_dtype):  # type: ignore[arg-type]
        if isinstance(item, ImageFailure):
            if not json_:
                err.print(f"[red]skipped[/] {escape(item.reason)}")
            rows.append({"image": str(item.path), "error": item.reason})
            continue
        assert isinstance(item, PCAResult)
        rows.append(_render(item, out_dir / f"{stems[item.path]}{SUFFIX}", joint))
        variance = [round(float(v), 6) for v in item.basis.variance] if joint else None
    bad = [r for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    if json_:
        print_json({"checkpoint": str(checkpoint), "layer": ok[0]["layer"] if ok else layer, "joint": joint,
                    "variance": variance, "seconds": round(time.perf_counter() - started, 3), "images": rows,
                    "failed": len(bad)})
    else:
        table = Table(title=f"patch-feature maps ({'joint PCA' if joint else 'a PCA per image'})")
        table.add_column("image", overflow="fold")
        table.add_column("output", overflow="fold")
        for r in rows:
            table.add_row(escape(r["image"]), f"[red]failed[/] {escape(r['error'])}" if "error" in r else escape(r["output"]))
        out.print(table)
    if bad:
        if not json_:
            err.print(f"[red]{failures_summary(len(bad), len(ok))}")
        raise typer.Exit(1)


def _render(item, path: Path, joint: bool) -> dict:
    from mae.large.viz.encoder_figures import pca_figure
    from mae.large.viz.figures import save_figure

    note = f"joint PCA of {item.basis.count} patches" if joint else None
    fig = pca_figure(item.image, item.rgb, layer=item.layer, foreground=item.foreground, title=item.path.name, note=note)
    row = {"image": str(item.path), "output": str(save_figure(fig, path)), "layer": item.layer}
    if item.foreground is not None:
        row["foreground_fraction"] = round(float(item.foreground.float().mean()), 4)
    if not joint:
        row["variance"] = [round(float(v), 6) for v in item.basis.variance]
    return row
