"""`mae-large convert SRC --to FORMAT --out PATH`: write a checkpoint for another ecosystem (official, safetensors,
a transformers folder, timm), atomically, read back bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from cli.console import out
from cli.errors import handle_errors, print_json
from cli.options import AllowNonfiniteOpt, JsonOpt, TargetOpt, TrustOpt, choice
from cli.render import escape, human_bytes

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.jobs.convert import ConvertReport

# What --to accepts (`checkpoints.save.FORMATS`, spelled here so that --help does not import torch).
FORMATS: tuple[str, ...] = ("official", "safetensors", "hf", "timm")


@handle_errors
def convert_command(
    source: Annotated[Path, typer.Argument(
        help="A checkpoint of any layout inspect reads (official .pth, safetensors, transformers, timm).",
        show_default=False)],
    to: Annotated[str, typer.Option(
        "--to", callback=choice("--to", FORMATS), show_default=False,
        help="official (torch.save({'model': ...}), official key order), safetensors (official names), hf (a folder "
        "transformers' ViTMAEForPreTraining / ViTMAEModel loads) or timm (the encoder as vit_large_patch16_224.mae, "
        "safetensors).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The file to write (a folder for hf).", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    target: TargetOpt = "auto",
    allow_nonfinite: AllowNonfiniteOpt = False,
    trust: TrustOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Convert a checkpoint to another format; the source is only read, the output is written atomically and read back."""
    from mae.large.jobs.convert import convert_checkpoint

    report = convert_checkpoint(source, out_path, to, target=target, overwrite=force,  # type: ignore[arg-type]
                                allow_nonfinite=allow_nonfinite, trust=trust)
    if json_:
        print_json(report.to_dict())
    else:
        out.print(convert_panel(report))


def convert_panel(r: ConvertReport) -> Panel:
    """The report: what was read, what was written, what was left out and why, and how to load the output."""
    s = r.saved
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    kind = r.kind + (f" ({r.num_classes} classes)" if r.kind == "fine-tuned" and r.num_classes else "")
    rows: list[tuple[str, str]] = [("source", escape(str(r.source))), ("layout", f"{r.source_format} ({r.container})"),
                                   ("kind", kind)]
    rows += [("read", escape(fix)) for fix in r.fixes]
    rows += [("format", s.format), ("output", escape(str(s.path))), ("size", f"{human_bytes(s.bytes)} ({s.bytes:,} bytes)"),
             ("tensors", f"{s.written} written, {r.verified} read back equal bit for bit")]
    if s.dropped:
        rows.append(("dropped", f"[yellow]{escape(r.dropped_reason or '')}[/]"))
    if r.target is not None:
        rows.append(("norm_pix_loss", f"{r.target.norm_pix} ({escape(r.target.how)})"))
    if s.nonfinite:
        rows.append(("values", f"[red]{len(s.nonfinite)} tensors hold NaN or infinite values[/] (written: --allow-nonfinite)"))
    rows += [("note", escape(note)) for note in s.notes]
    for label, value in rows:
        grid.add_row(label, value)
    return Panel(grid, title="converted", expand=False)
