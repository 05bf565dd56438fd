"""`mae-large evaluate VAL --checkpoint FINETUNED`: top-1 / top-5 / loss of a fine-tuned classifier on an ImageFolder
tree, with the official evaluation transform (resize 256/224, centre crop 224), as `main_finetune.py --eval`.

Runs as one process or under torchrun (each rank evaluates a disjoint share; the counts are all-reduced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.console import err, out, progress
from cli.errors import handle_errors, print_json
from cli.options import BatchSizeOpt, DeviceOpt, ImageColumnOpt, JsonOpt, LabelColumnOpt, choice
from cli.render import escape
from mae.large import catalog

FINETUNED = catalog.CHECKPOINTS["finetuned"]


@handle_errors
def evaluate_command(
    val: Annotated[Path, typer.Argument(help="Validation ImageFolder tree (root/CLASS/image), classes in the "
                                        "classifier's order (ImageNet: the synset folders), or a labelled data set "
                                        "(parquet, a save_to_disk folder, tar shards).", show_default=False)],
    checkpoint: Annotated[Path, typer.Option(
        "--checkpoint", "-c", help="A fine-tuned classifier: the official file or a run's checkpoint-best.pth.")
    ] = FINETUNED.default_path,
    batch_size: BatchSizeOpt = 64,
    amp: Annotated[str, typer.Option("--amp", callback=choice("--amp", ("auto", "bf16", "fp16", "off")),
                                     help="auto: bf16 on a GPU, off on the CPU.")] = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Decoding processes (default: 0 on the CPU).",
                                                show_default=False)] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, help="Input size (default: the model's, 224).",
                                             show_default=False)] = None,
    device: DeviceOpt = "auto",
    json_: JsonOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
) -> None:
    """Top-1 / top-5 accuracy and mean cross-entropy of a fine-tuned classifier (official ViT-L on ImageNet val:
    top-1 85.952, top-5 97.570, loss 0.646)."""
    from mae.large.evaluate.accuracy import evaluate_checkpoint
    from mae.large.utils.device import resolve_device
    from mae.large.utils.distributed import distributed_run

    with distributed_run(resolve_device(device)) as ctx:
        state: dict = {}

        def on_batch(done: int, total: int) -> None:
            if "advance" not in state:
                state["bar"] = bar = progress(total, "evaluating", quiet=json_ or not ctx.is_main)
                state["advance"] = bar.__enter__()
            state["advance"]()

        try:
            accuracy, source = evaluate_checkpoint(val, checkpoint, batch_size=batch_size, amp=amp, workers=workers,
                                                   size=size, ctx=ctx, on_batch=on_batch, image_column=image_column,
                                                   label_column=label_column)
        finally:
            if "bar" in state:
                state["bar"].__exit__(None, None, None)
    if not ctx.is_main:
        return
    if json_:
        print_json({"checkpoint": str(checkpoint), "val": str(val), **accuracy.as_dict()})
        return
    if source.failures:
        err.print(f"[yellow]{len(source.failures)} inputs were not images and were skipped[/]")
    table = Table(title=f"{escape(checkpoint.name)} on {escape(str(val))}")
    for column in ("images", "top-1 %", "top-5 %", "loss"):
        table.add_column(column, justify="right")
    table.add_row(f"{accuracy.images:,}", f"{accuracy.top1:.3f}", f"{accuracy.top5:.3f}", f"{accuracy.loss:.3f}")
    out.print(table)
