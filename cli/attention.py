"""`mae-large attention IMAGE...`: where the encoder's cls token looks, per head and layer, and the rollout.

One PNG per image (`<stem>.attention.png`): the input, the cls -> patch attention of each chosen layer (the
heads and their mean) over the image, and the rollout with `--rollout`; removed patches grey. Under torchrun
each process draws its share; rank 0 prints the summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

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
    MaskRatioOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SeedOpt,
    SizeOpt,
    TrustOpt,
    check_output_folder,
    check_size_budget,
    choice,
    model_source,
    parse_dtype,
    parse_layers,
    parse_mask_option,
    parse_size,
)
from cli.render import escape
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

HEAD_CHOICES = ("all", "mean")  # = encoder_figures.HEADS (a test keeps them equal; this module stays torch-free)
CheckpointOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", show_default=False,
    help="MAE checkpoint, full or encoder-only (only the encoder is used). Default: the first present of "
    + ", ".join(str(e.default_path) for e in catalog.ENCODER_VIEW) + ".")]


@handle_errors
def attention_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.", show_default=False)],
    checkpoint: CheckpointOpt = None,
    layer: Annotated[str, typer.Option(
        "--layer", help="Blocks to draw: -1 (the last), or a list such as 0,11,23 (negative: from the end).")] = "-1",
    heads: Annotated[str, typer.Option(
        "--heads", callback=choice("--heads", HEAD_CHOICES),
        help="all: every head and their mean, a row per layer; mean: the head average of each layer in one row.")] = "all",
    rollout: Annotated[bool, typer.Option(
        "--rollout", help="Add the attention rollout (Abnar & Zuidema 2020) through every block.")] = False,
    mask_ratio: MaskRatioOpt = 0.0,
    mask: Annotated[str | None, typer.Option(
        "--mask", show_default=False, help="A mask as in reconstruct (random, block:0.75, box:..., left, file:M.png, "
        "patches:...); the encoder sees only the visible patches.")] = None,
    seed: SeedOpt = 2,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="With --json: the k most attended patches.")] = 5,
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
    """Draw where the encoder's cls token attends: for each image, the heads and their mean at the chosen
    layers, overlaid on the image, and optionally the attention rollout. --json adds each head's entropy and the
    most attended patches."""
    # Everything that can be checked is checked before torch is imported and the checkpoint read.
    layers = parse_layers(layer)
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=False)
    spec = parse_mask_option(mask)
    check_output_folder(out_dir)
    torch_dtype = parse_dtype(dtype)

    from mae.large.jobs.attention import attention
    from mae.large.jobs.models import encoder_view_checkpoint

    checkpoint, note = encoder_view_checkpoint(checkpoint)
    if note and not json_:
        err.print(f"[dim]{escape(note)}[/]")
    model = model_source(checkpoint, hw, trust=trust, allow_nonfinite=allow_nonfinite)
    run = attention(images, model, out_dir, layers=layers, heads=heads,
                    rollout=rollout, mask_ratio=mask_ratio, mask=spec, seed=seed, top_k=top_k, crop=crop,  # type: ignore[arg-type]
                    batch_size=batch_size, dtype=torch_dtype, device=device, recursive=recursive,
                    events=events(json_, loaded=report_encoder_view))
    if run is None:  # not rank 0
        return
    bad = [r for r in run.rows if "error" in r]
    ok = [r for r in run.rows if "error" not in r]
    if json_:
        print_json({"checkpoint": str(checkpoint), "kind": run.kind,
                    "layers": [int(k) for k in ok[0]["layers"]] if ok else layers, "heads": heads, "rollout": rollout,
                    "mask": run.mask, "seconds": round(run.seconds, 3), "images": run.rows, "failed": len(bad)})
    else:
        out.print(_table(run.rows))
    if bad:
        if not json_:
            err.print(f"[red]{failures_summary(len(bad), len(ok))}")
        raise typer.Exit(1)


def _table(rows: list[dict]) -> Table:
    table = Table(title="attention maps")
    table.add_column("image", overflow="fold")
    table.add_column("output", overflow="fold")
    for r in rows:
        table.add_row(escape(r["image"]), f"[red]failed[/] {escape(r['error'])}" if "error" in r else escape(r["output"]))
    return table
