"""`mae-large inspect CKPT`: what a checkpoint holds and whether it loads, without building the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import out
from cli.errors import handle_errors, print_json
from cli.options import JsonOpt, TrustOpt


@handle_errors
def inspect_command(
    checkpoint: Annotated[Path, typer.Argument(help="A .pth or .safetensors checkpoint, or a transformers model folder.",
                                               show_default=False)],
    all_keys: Annotated[bool, typer.Option("--all", help="List every key instead of one row per block tensor.")] = False,
    json_: JsonOpt = False,
    trust: TrustOpt = False,
) -> None:
    """Summarise a checkpoint: format, kind (full / encoder-only), tensors, and a verdict. Exit 1 if not loadable."""
    from cli import render
    from mae.large.jobs.inspect import group_tensors, summarize

    summary = summarize(checkpoint, trust=trust)
    if json_:
        print_json(summary.to_dict())
    else:
        out.print(render.summary_panel(summary))
        groups = [_as_group(t) for t in summary.tensors] if all_keys else group_tensors(summary.tensors)
        out.print(render.tensor_table(groups, folded=not all_keys))
        out.print(render.verdict_panel(summary))
    if not summary.loadable:
        raise typer.Exit(1)


def _as_group(t):  # a TensorInfo shown as a one-member group row
    from mae.large.jobs.inspect import TensorGroup

    return TensorGroup(t.name, t.shape, t.dtype, 1, t.numel, t.part)
