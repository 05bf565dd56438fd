"""`mae-large knn TRAIN VAL`: cosine k-NN accuracy of cached features (the weighted vote of Wu et al. 2018 / DINO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.console import out
from cli.errors import handle_errors, print_json
from cli.options import JsonOpt


@handle_errors
def knn_command(
    train: Annotated[Path, typer.Argument(help="Training features: a file or a shard folder from `features`.",
                                          show_default=False)],
    val: Annotated[Path, typer.Argument(help="Validation features, embedded the same way.", show_default=False)],
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours that vote.")] = 20,
    temperature: Annotated[float, typer.Option(
        "--temperature", min=1e-6, help="Softmax vote: each neighbour weighs exp(similarity / T).")] = 0.07,
    weighting: Annotated[str, typer.Option(
        "--weighting", help="softmax (DINO's weighted vote) or uniform (one vote each).")] = "softmax",
    chunk_rows: Annotated[int, typer.Option(
        "--chunk-rows", min=1, help="Training rows compared at once (memory, not results).")] = 4096,
    json_: JsonOpt = False,
) -> None:
    """k-NN top-1 / top-5 of VAL by TRAIN on L2-normalised features, chunked: the full similarity matrix is
    never held (1.28 M x 50 k runs in bounded memory). Both sets need labels (an ImageFolder tree)."""
    if weighting not in ("softmax", "uniform"):
        raise typer.BadParameter(f"weighting must be softmax or uniform, got {weighting!r}", param_hint="--weighting")

    from mae.large.evaluate.knn import knn
    from mae.large.evaluate.source import check_compatible, labels_of, named_classes
    from mae.large.evaluate.store import open_features

    train_set, val_set = open_features(train), open_features(val)
    check_compatible(train_set.meta, val_set.meta, train_set.classes, val_set.classes)
    train_labels, val_labels = labels_of(train_set, "train"), labels_of(val_set, "val")
    result = knn(train_set, train_labels, val_set, val_labels, k=k, temperature=temperature, weighting=weighting,
                 chunk_rows=chunk_rows, num_classes=named_classes(train_set, {"train": train_labels, "val": val_labels}))
    classes = train_set.classes or [str(i) for i in range(max(result.per_class, default=-1) + 1)]
    if json_:
        print_json({"train": str(train), "val": str(val), "k": k, "temperature": temperature, "weighting": weighting,
                    "train_rows": train_set.rows, "val_rows": val_set.rows, "top1": result.top1, "top5": result.top5,
                    "per_class": {classes[c] if c < len(classes) else str(c): acc
                                  for c, acc in sorted(result.per_class.items())}})
        return
    table = Table(title=f"k-NN (k {k}, {weighting}{f', T {temperature}' if weighting == 'softmax' else ''})")
    for column in ("train rows", "val rows", "top-1 %", "top-5 %"):
        table.add_column(column, justify="right")
    table.add_row(f"{train_set.rows:,}", f"{val_set.rows:,}", f"{result.top1:.2f}", f"{result.top5:.2f}")
    out.print(table)
