"""`mae-large loss`: the requirements' noise benchmark (or the loss on real images), with a CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    DEFAULT_CHECKPOINT,
    AllowNonfiniteOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    MaskRatioOpt,
    MaxPatchesOpt,
    RecursiveOpt,
    SizeOpt,
    TargetOpt,
    TrustOpt,
    check_size_budget,
    err,
    fail,
    handle_errors,
    load_model,
    out,
    parse_dtype,
    parse_size,
    print_json,
    resolve_target_option,
)
from cli.render import escape
from mae.large.cost import DEFAULT_MAX_PATCHES


@handle_errors
def loss_command(
    images: Annotated[list[Path] | None, typer.Argument(help="Images and/or folders (instead of --noise).",
                                                        show_default=False)] = None,
    noise: Annotated[bool, typer.Option("--noise", help="Feed randn images in ImageNet-normalised space.")] = False,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Noise images to average over.")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**64 - 1,
                                      help="Seed of the noise images, masks and a random init.")] = 0,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help=f"Checkpoint; default {DEFAULT_CHECKPOINT} if it exists, else a random init.",
        show_default=False)] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Use a random init even if a checkpoint exists.")] = False,
    target: TargetOpt = "auto",
    norm_pix_loss: Annotated[bool, typer.Option(
        "--norm-pix-loss", help="Same as --target norm-pix: per-patch normalised pixel targets.")] = False,
    mask_ratio: MaskRatioOpt = 0.75,
    batch_size: BatchSizeOpt = 8,
    device: DeviceOpt = "auto",
    size: SizeOpt = None,
    dtype: DtypeOpt = "float32",
    check: Annotated[bool, typer.Option(
        "--check", help="Exit 1 if the mean is outside the tolerance of the expected value.")] = False,
    recursive: RecursiveOpt = False,
    max_patches: MaxPatchesOpt = DEFAULT_MAX_PATCHES,
    allow_nonfinite: AllowNonfiniteOpt = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Mean reconstruction loss over noise or images; compares noise losses to the expected values
    (full checkpoint ~1.0, encoder-only ~1.87, random init ~1.74)."""
    if noise == bool(images):
        raise typer.BadParameter("give either --noise or image paths (not both, not neither)")
    if random_init and checkpoint is not None:
        raise typer.BadParameter("--random-init and --checkpoint exclude each other")
    target = resolve_target_option(target, norm_pix_loss)
    hw = parse_size(size)
    check_size_budget(hw, max_patches, decoder=True, mask_ratio=mask_ratio)
    torch_dtype = parse_dtype(dtype)
    if random_init:
        chosen = None
    elif checkpoint is not None:
        chosen = checkpoint
    else:
        chosen = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT.exists() else None
        if chosen is None and not json_:
            err.print(f"[yellow]no checkpoint at {DEFAULT_CHECKPOINT}[/]: measuring a random init instead "
                      "(`mae-large download visualize` fetches the full checkpoint)")

    from mae.large.data.images import collect_images
    from mae.large.jobs.reconstruct import (
        checkpoint_kind,
        detect_target_on_files,
        detect_target_on_noise,
        image_loss,
        maskings_for,
        noise_loss,
    )
    from mae.large.models.target import resolve_target

    model = load_model(chosen, size=hw, device=device, trust=trust, quiet=json_, seed=seed,
                       allow_nonfinite=allow_nonfinite)
    kind = checkpoint_kind(model)
    choice = resolve_target(target, chosen, kind)
    if choice is None:  # a full file the catalogue does not know: measure what its decoder predicts
        choice = (detect_target_on_noise(model, seed=seed, mask_ratio=mask_ratio, dtype=torch_dtype) if noise else
                  detect_target_on_files(model, collect_images(images or [], recursive=recursive)[0],
                                         maskings_for(model, ratios=[mask_ratio], seeds=[seed])[0], dtype=torch_dtype))
    model.norm_pix_loss = choice.norm_pix
    if not json_:
        err.print(f"  [dim]- decoder target: {escape(choice.target)} ({escape(choice.how)})[/]")
    failed = 0
    if noise:
        result = noise_loss(model, kind, samples=samples, seed=seed, mask_ratio=mask_ratio, batch_size=batch_size,
                            dtype=torch_dtype)
    else:
        result, unread = image_loss(model, kind, images or [], seed=seed, mask_ratio=mask_ratio, batch_size=batch_size,
                                    dtype=torch_dtype, recursive=recursive)
        failed = len(unread)
        for f in unread:
            err.print(f"[red]skipped[/] {escape(f.reason)}")
    verdict = _verdict(result)
    if json_:
        print_json({"checkpoint": str(chosen) if chosen else None, "kind": kind, "source": result.source,
                    "samples": len(result.losses), "mean": result.mean, "std": result.std, "losses": result.losses,
                    "mask_ratio": mask_ratio, "norm_pix_loss": choice.norm_pix, "target": choice.target,
                    "target_how": choice.how, "expected": result.expected,
                    "tolerance": result.tolerance if result.expected is not None else None, "verdict": verdict,
                    "dtype": dtype})
    else:
        out.print(_table(result, chosen, verdict))
    if check:
        if result.expected is None and noise and mask_ratio == 0.75 and target == "auto" and choice.norm_pix:
            # The targets were measured for pixel decoders; a norm-pix decoder has none: report, do not gate.
            err.print("[yellow]not gated[/]: no expected noise loss is known for a decoder that predicts normalised "
                      "pixels; the value above is reported only")
        elif result.expected is None:
            fail("--check needs the noise benchmark's conditions (--noise, mask ratio 0.75, pixel targets)")
        if not result.within_tolerance:
            fail(f"mean loss {result.mean:.4f} is outside {result.expected} +- {result.tolerance} expected for a "
                 f"{kind} model")
    if failed:
        fail(f"{failed} input(s) could not be read or gave no finite loss (listed above); the loss is over the other "
             f"{len(result.losses)}")


def _verdict(result) -> str:
    if result.expected is None:
        return "no expected value (the targets are for --noise at mask ratio 0.75 without --norm-pix-loss)"
    if result.within_tolerance:
        return "as expected"
    return "OUTSIDE the expected range"


def _table(result, checkpoint, verdict: str) -> Table:
    table = Table(title=f"reconstruction loss on {result.source} (mask ratio {result.mask_ratio})")
    for col in ("checkpoint", "kind", "samples", "mean", "std", "expected", "verdict"):
        table.add_column(col, justify="right" if col in ("samples", "mean", "std") else "left")
    expected = f"~{result.expected} +- {result.tolerance}" if result.expected is not None else "-"
    style = "green" if result.within_tolerance else ("red" if result.within_tolerance is False else "")
    table.add_row(escape(str(checkpoint) if checkpoint else "(random init)"), result.kind, str(len(result.losses)),
                  f"{result.mean:.4f}", f"{result.std:.4f}", expected,
                  f"[{style}]{escape(verdict)}[/]" if style else escape(verdict))
    return table
