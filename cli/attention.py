"""`mae-large attention IMAGE...`: where the encoder's cls token looks, per head and layer, and the rollout.

One PNG per image (`<stem>.attention.png`): the input, the cls -> patch attention of each chosen layer (the
heads and their mean) over the image, and the rollout with `--rollout`; removed patches grey. Under torchrun
each process draws its share; rank 0 prints the summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
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
    collect_inputs,
    encoder_view_checkpoint,
    err,
    failures_summary,
    handle_errors,
    load_encoder_view,
    out,
    output_stems,
    parse_dtype,
    parse_layers,
    parse_size,
    print_json,
)
from cli.render import escape
from cli.sharded import run_sharded
from mae.large import catalog
from mae.large.cost import DEFAULT_MAX_PATCHES

HEAD_CHOICES = ("all", "mean")  # = attention_figures.HEADS (a test keeps them equal; this module stays torch-free)
SUFFIX = ".attention.png"
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
    spec = _mask_spec(mask)
    check_output_folder(out_dir)
    torch_dtype = parse_dtype(dtype)

    from mae.large.data.images import ImageFailure
    from mae.large.utils.device import resolve_device

    paths, failures = collect_inputs(images, "draw attention for", recursive=recursive, quiet=json_)
    checkpoint = encoder_view_checkpoint(checkpoint, quiet=json_)
    stems = output_stems(paths, out_dir, SUFFIX)

    def setup(ctx, quiet: bool):
        from mae.large.models.masks import build_mask

        model = load_encoder_view(checkpoint, size=hw, device=str(ctx.device), trust=trust,
                                  allow_nonfinite=allow_nonfinite, quiet=quiet)
        removed = None
        if spec is not None or mask_ratio > 0:
            kind = spec if spec is not None else _mask_spec("random")
            removed = build_mask(kind, model.config.img_size, model.config.patch_size,
                                 ratio=mask_ratio if mask_ratio > 0 else 0.75, seed=seed)
        return model, removed

    def work(state, local: list[Path], ctx):
        from mae.large.jobs.encoder_view import attention_files

        model, removed = state
        for item in attention_files(model, local, layers=layers, rollout=rollout, mask=removed,
                                    batch_size=batch_size, crop=crop, dtype=torch_dtype, device=ctx.device):  # type: ignore[arg-type]
            if isinstance(item, ImageFailure):
                if not json_ and not ctx.is_distributed:
                    err.print(f"[red]skipped[/] {escape(item.reason)}")
                yield {"image": str(item.path), "error": item.reason}
                continue
            yield _render(item, out_dir / f"{stems[item.path]}{SUFFIX}", heads, top_k, removed)

    started = time.perf_counter()
    run = run_sharded(paths, resolve_device(device), label="attention", quiet=json_, setup=setup, work=work)
    if run.results is None:  # not rank 0
        return
    model, removed = run.state
    rows = [{"image": str(f.path), "error": f.reason} for f in failures] + run.results
    bad = [r for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    if run.ctx.is_distributed and not json_:
        for r in run.results:
            if "error" in r:
                err.print(f"[red]skipped[/] {escape(r['error'])}")
    if json_:
        print_json({"checkpoint": str(checkpoint), "kind": model.load_report.kind if model.load_report else "random-init",
                    "layers": [int(k) for k in ok[0]["layers"]] if ok else layers, "heads": heads, "rollout": rollout,
                    "mask": None if removed is None else [int(i) for i in removed.nonzero().flatten().tolist()],
                    "seconds": round(time.perf_counter() - started, 3), "images": rows, "failed": len(bad)})
    else:
        out.print(_table(rows))
    if bad:
        if not json_:
            err.print(f"[red]{failures_summary(len(bad), len(ok))}")
        raise typer.Exit(1)


def _mask_spec(value: str | None):  # -> MaskSpec | None
    if value is None:
        return None
    from mae.large.models.masks import parse_mask

    try:
        return parse_mask(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mask") from None


def _render(item, path: Path, heads: str, top_k: int, removed) -> dict:
    """Draw and save one image's figure; its JSON row (per layer: each head's entropy, the top patches)."""
    from mae.large.viz.attention import head_entropy, top_patches
    from mae.large.viz.encoder_figures import attention_figure
    from mae.large.viz.figures import save_figure

    maps = item.maps
    note = None if removed is None else f"{int(removed.sum())} of {removed.numel()} patches removed (grey)"
    written = save_figure(attention_figure(item.image, maps, heads=heads, title=item.path.name, note=note), path)
    layers = {}
    for layer in maps.layers:
        weights, where = top_patches(maps, layer, top_k)
        layers[str(layer)] = {"entropy": [round(float(e), 5) for e in head_entropy(maps, layer)[0]],
                              "top": [{"patch": int(p), "weight": round(float(w), 6)} for w, p in zip(weights[0], where[0])]}
    row = {"image": str(item.path), "output": str(written), "layers": layers}
    if maps.rollout is not None:
        values, order = maps.rollout[0, 1:].topk(min(top_k, maps.patches.shape[1]))
        row["rollout_top"] = [{"patch": int(maps.patches[0, i]), "weight": round(float(v), 6)}
                              for v, i in zip(values, order)]
    return row


def _table(rows: list[dict]) -> Table:
    table = Table(title="attention maps")
    table.add_column("image", overflow="fold")
    table.add_column("output", overflow="fold")
    for r in rows:
        table.add_row(escape(r["image"]), f"[red]failed[/] {escape(r['error'])}" if "error" in r else escape(r["output"]))
    return table
