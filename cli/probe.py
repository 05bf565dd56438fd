"""`mae-large probe TRAIN VAL --out HEAD`: a linear probe trained on cached features (a grid of heads chosen on
held-out training rows, or `--protocol official`: main_linprobe.py's recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.console import err, out, progress
from cli.errors import flags_for, handle_errors, print_json
from cli.options import JsonOpt, choice, parse_floats
from cli.render import escape

# The options that belong to one protocol only (the library refuses them under the other too).
ONLY = {"official": ("--blr", "--weight-decay", "--warmup-epochs"),
        "grid": ("--lrs", "--weight-decays", "--holdout", "--min-steps", "--refit/--no-refit")}


class _PhaseBars:
    """A progress bar per phase (the grid, then the refit; or the official epochs), opened at its first epoch."""

    def __init__(self, quiet: bool, official_epochs: int) -> None:
        self.quiet, self.official_epochs = quiet, official_epochs
        self.phase: str | None = None
        self.bar: progress | None = None
        self.advance: Any = None

    def __call__(self, record: dict[str, Any]) -> None:
        phase = record.get("phase", "official")
        if phase != self.phase:
            self.close()
            self.phase, self.bar = phase, progress(record.get("epochs", self.official_epochs), f"probe {phase} epochs",
                                                   quiet=self.quiet)
            self.advance = self.bar.__enter__()
        self.advance()
        if phase == "official" and not self.quiet:
            err.print(f"  epoch {record['epoch'] + 1}/{self.official_epochs}: loss {record['train_loss']:.4f}, top-1 "
                      f"{record['top1']:.2f}%, top-5 {record['top5']:.2f}%")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@handle_errors
def probe_command(
    train: Annotated[Path, typer.Argument(help="Training features: a file or a shard folder from `features`.",
                                          show_default=False)],
    val: Annotated[Path, typer.Argument(help="Validation features, embedded the same way.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to save the head ({'model', 'args'}).")] = Path(
        "probe_head.pth"),
    protocol: Annotated[str, typer.Option(
        "--protocol", callback=choice("--protocol", ("grid", "official")),
        help="grid: heads over learning rates x weight decays, chosen on held-out training rows; official: "
             "main_linprobe.py with all its defaults (LARS, blr 0.1, batch 16384, 90 epochs, warm-up 10).")] = "grid",
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="grid: 10, more to reach --min-steps; official: 90 (ViT-L: 50 suffice, FINETUNE.md).",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="Rows a step, capped at the rows (grid 1024, official 16384).",
        show_default=False)] = None,
    blr: Annotated[float | None, typer.Option(
        "--blr", min=0.0, help="official: base lr, lr = blr x batch / 256 (0.1).", show_default=False)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        "--weight-decay", min=0.0, help="official: LARS weight decay (0).", show_default=False)] = None,
    warmup_epochs: Annotated[float | None, typer.Option(
        "--warmup-epochs", min=0.0, help="official: linear warm-up epochs (10).", show_default=False)] = None,
    lrs: Annotated[str | None, typer.Option(
        "--lrs", help="grid: base learning rates (x batch / 256), comma-separated (1e-4 ... 1.0 in 1-2-5 steps).",
        show_default=False)] = None,
    weight_decays: Annotated[str | None, typer.Option(
        "--weight-decays", help="grid: weight decays, comma-separated (0,1e-4,1e-3,1e-2).", show_default=False)] = None,
    holdout: Annotated[float | None, typer.Option(
        "--holdout", min=0.0, max=1.0, help="grid: share of training rows held out to choose (0.2).",
        show_default=False)] = None,
    min_steps: Annotated[int | None, typer.Option(
        "--min-steps", min=0, help="grid: the fewest optimiser steps a phase makes (1000).", show_default=False)] = None,
    refit: Annotated[bool | None, typer.Option(
        "--refit/--no-refit", help="grid: train the chosen point again on all training rows (default: yes).",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Head init, shuffling, held-out rows.")] = 0,
    json_: JsonOpt = False,
) -> None:
    """A linear probe on cached features: the official head (BatchNorm1d without affine, eps 1e-6, then Linear;
    trunc-normal 0.01), saved with weights_only-loadable args.

    Default (grid, after DINOv2's linear evaluation): 52 heads, base lr 1e-4 ... 1.0 x weight decay 0 ... 1e-2,
    trained together by SGD (momentum 0.9, cosine, batch 1024, 10 epochs and at least 1000 steps) on
    standardised features; 20% of the training rows (seeded, stratified) choose the point, which is then trained
    again on all training rows. Prints every point's held-out and val top-1. --protocol official: main_linprobe.py
    (LARS, lr = blr x batch / 256, warm-up then cosine), top-1 / top-5 after every epoch; it needs thousands of
    steps and warns when a run makes fewer than 1000."""
    if out_path.is_dir():
        raise typer.BadParameter(f"{out_path} is a folder; give a file name such as probe_head.pth", param_hint="--out")
    _only_its_protocols_flags(protocol, {"--blr": blr, "--weight-decay": weight_decay, "--warmup-epochs": warmup_epochs,
                                         "--lrs": lrs, "--weight-decays": weight_decays, "--holdout": holdout,
                                         "--min-steps": min_steps, "--refit/--no-refit": refit})
    learning_rates, decays = parse_floats(lrs, "--lrs"), parse_floats(weight_decays, "--weight-decays")

    from mae.large.evaluate.probe import OFFICIAL, probe, save_probe
    from mae.large.evaluate.source import check_compatible, labels_of, named_classes
    from mae.large.evaluate.store import open_features
    from mae.large.utils.outputs import guard_output

    guard_output(out_path, [train, val])  # before the work: the head never replaces (or lands in) the features
    train_set, val_set = open_features(train), open_features(val)
    check_compatible(train_set.meta, val_set.meta, train_set.classes, val_set.classes)
    train_labels, val_labels = labels_of(train_set, "train"), labels_of(val_set, "val")
    bars = _PhaseBars(json_, epochs or OFFICIAL["epochs"])
    try:
        result = probe(train_set, train_labels, val_set, val_labels, protocol=protocol, epochs=epochs,
                       batch_size=batch_size, blr=blr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                       learning_rates=learning_rates, weight_decays=decays, holdout=holdout, min_steps=min_steps,
                       refit=refit, seed=seed, num_classes=named_classes(train_set, {"train": train_labels, "val": val_labels}),
                       on_epoch=bars)
    finally:
        bars.close()
    extra = {"train": str(train), "val": str(val), "classes": train_set.classes,
             **{f"features_{k}": str(v) for k, v in train_set.meta.items()}}
    save_probe(result, out_path, extra)
    _render(result, protocol, train_set.rows, val_set.rows, out_path, json_)


def _only_its_protocols_flags(protocol: str, given: dict[str, Any]) -> None:
    """A setting of the other protocol is a usage error naming it."""
    other = "grid" if protocol == "official" else "official"
    for flag in ONLY[other]:
        if given[flag] is not None:
            raise typer.BadParameter(f"{flag} is a setting of --protocol {other}; leave it out or pass --protocol "
                                     f"{other}", param_hint=flag)


def _render(result: Any, protocol: str, train_rows: int, val_rows: int, out_path: Path, json_: bool) -> None:
    """The warnings, the grid and the result table (or the JSON)."""
    warnings = [flags_for(message) for message in result.warnings]
    if json_:
        print_json({"head": str(out_path), "top1": result.top1, "top5": result.top5, "history": result.history,
                    "args": result.args, "protocol": protocol, "grid": result.grid, "chosen": result.chosen,
                    "warnings": warnings})
        return
    for message in warnings:
        err.print(f"[bold yellow]warning:[/] {escape(message)}")
    args = result.args
    if result.grid:
        out.print(_grid_table(result.grid, result.chosen, args))
    title = (f"linear probe (official, {args['epochs']} epochs)" if protocol == "official" else
             f"linear probe (grid: lr {args['lr']:g}, weight decay {args['weight_decay']:g}"
             f"{', refit on all training rows' if args['refit'] else ''})")
    table = Table(title=title)
    for column in ("train rows", "val rows", "top-1 %", "top-5 %", "head"):
        table.add_column(column, justify="right" if column != "head" else "left")
    table.add_row(f"{train_rows:,}", f"{val_rows:,}", f"{result.top1:.2f}", f"{result.top5:.2f}",
                  escape(str(out_path)))
    out.print(table)


def _grid_table(grid: list[dict[str, float]], chosen: int | None, args: dict[str, Any]) -> Table:
    """Val top-1 % of every grid point (held-out top-1 % in brackets): a row per lr, a column per weight decay."""
    table = Table(title=f"grid: val top-1 % (held-out top-1 % on {args['holdout_rows']:,} training rows); * chosen")
    decays = list(dict.fromkeys(point["weight_decay"] for point in grid))
    table.add_column("lr", justify="right")
    for decay in decays:
        table.add_column(f"wd {decay:g}", justify="right")
    cells: dict[float, dict[float, str]] = {}
    for index, point in enumerate(grid):
        mark = "*" if index == chosen else " "
        cells.setdefault(point["lr"], {})[point["weight_decay"]] = (
            f"{mark}{point['val_top1']:.2f} ({point['holdout_top1']:.1f})")
    for lr, row in cells.items():
        table.add_row(f"{lr:g}", *(row.get(decay, "") for decay in decays))
    return table
