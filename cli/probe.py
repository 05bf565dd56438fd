"""`mae-large probe TRAIN VAL --out HEAD`: the official linear probe, trained on cached features."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.console import err, out, progress
from cli.errors import handle_errors, print_json
from cli.options import JsonOpt
from cli.render import escape


@handle_errors
def probe_command(
    train: Annotated[Path, typer.Argument(help="Training features: a file or a shard folder from `features`.",
                                          show_default=False)],
    val: Annotated[Path, typer.Argument(help="Validation features, embedded the same way.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to save the head ({'model', 'args'}).")] = Path(
        "probe_head.pth"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="ViT-L: 50 suffice (FINETUNE.md).")] = 50,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="Effective batch (official 16384), capped at the training set size.")] = 16384,
    blr: Annotated[float, typer.Option("--blr", min=0.0, help="Base lr: lr = blr x batch / 256.")] = 0.1,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="LARS weight decay.")] = 0.0,
    warmup_epochs: Annotated[float, typer.Option("--warmup-epochs", min=0.0, help="Linear warm-up.")] = 10.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Head init and shuffling.")] = 0,
    json_: JsonOpt = False,
) -> None:
    """The official linear-probe head (BatchNorm1d without affine, eps 1e-6, then Linear; trunc-normal 0.01) and
    optimiser (LARS, lr = blr x batch / 256, cosine schedule with warm-up), trained on cached features.
    The official recipe trains on augmented images through the frozen encoder; cached features are the
    standard fast approximation. Prints top-1 / top-5 after every epoch and saves the head."""
    if out_path.is_dir():
        raise typer.BadParameter(f"{out_path} is a folder; give a file name such as probe_head.pth", param_hint="--out")

    from mae.large.evaluate.probe import probe, save_probe
    from mae.large.evaluate.source import check_compatible, labels_of, named_classes
    from mae.large.evaluate.store import open_features

    train_set, val_set = open_features(train), open_features(val)
    check_compatible(train_set.meta, val_set.meta, train_set.classes, val_set.classes)
    train_labels, val_labels = labels_of(train_set, "train"), labels_of(val_set, "val")
    with progress(epochs, "probe epochs", quiet=json_) as advance:
        def on_epoch(epoch) -> None:
            advance()
            if not json_:
                err.print(f"  epoch {epoch['epoch'] + 1}/{epochs}: loss {epoch['train_loss']:.4f}, top-1 "
                          f"{epoch['top1']:.2f}%, top-5 {epoch['top5']:.2f}%")

        result = probe(train_set, train_labels, val_set, val_labels, epochs=epochs, batch_size=batch_size, blr=blr,
                       weight_decay=weight_decay, warmup_epochs=warmup_epochs, seed=seed,
                       num_classes=named_classes(train_set, {"train": train_labels, "val": val_labels}),
                       on_epoch=on_epoch)
    extra = {"train": str(train), "val": str(val), "classes": train_set.classes,
             **{f"features_{k}": str(v) for k, v in train_set.meta.items()}}
    save_probe(result, out_path, extra)
    if json_:
        print_json({"head": str(out_path), "top1": result.top1, "top5": result.top5, "history": result.history,
                    "args": result.args})
        return
    table = Table(title=f"linear probe ({epochs} epochs)")
    for column in ("train rows", "val rows", "top-1 %", "top-5 %", "head"):
        table.add_column(column, justify="right" if column != "head" else "left")
    table.add_row(f"{train_set.rows:,}", f"{val_set.rows:,}", f"{result.top1:.2f}", f"{result.top5:.2f}",
                  escape(str(out_path)))
    out.print(table)
