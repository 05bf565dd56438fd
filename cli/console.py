"""What the CLI shows: the two consoles, progress bars, load reports.

Tables and JSON go to stdout; messages, warnings and progress to stderr (`--json | jq` works). `events(quiet)` is
what `cli.events` draws the job events with. Torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cli.render import escape
from mae.large import catalog

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.checkpoints.load import LoadReport

# Piped or captured output gets 120 columns (not rich's default 80) so key names are not cut.
_PIPED = not sys.stdout.isatty() and "COLUMNS" not in os.environ
out = Console(width=120 if _PIPED else None, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)  # a file name or byte string is never an emoji code
STATE: dict[str, Any] = {"debug": False, "json": False, "json_printed": False, "written_from": 0}


def failures_summary(failed: int, written: int) -> str:
    """`2 of 5 inputs failed[/]; the other 3 were written`, or that nothing was written (rich markup)."""
    if not written:
        return f"{'the input' if failed == 1 else f'all {failed} inputs'} failed[/]; nothing was written"
    return f"{failed} of {failed + written} inputs failed[/]; the other {written} were written"


def report_load(model: Any, seed: int = 0) -> None:
    """The masked autoencoder's load report (kind, tensors, layout), or the random init it is (`seed`)."""
    r = model.load_report
    if r is None:
        err.print(f"[yellow]random init[/]: no checkpoint, every weight is random (official init, seed {seed})")
        return
    colour = "green" if r.kind == "full" else "yellow"
    err.print(f"[{colour}]{r.kind}[/] checkpoint {escape(str(r.path))}: {r.num_loaded}/{r.num_expected} tensors "
              f"({r.source_format}, {r.container})")
    report_details(r)


def report_encoder(model: Any) -> None:
    """A feature extractor's load report, and the pooling it uses."""
    r = model.load_report
    if r is None:
        return
    _encoder_line(r, f"{r.num_parameters / 1e6:.1f} M parameters")
    report_details(r)
    if r.kind == "fine-tuned":
        err.print("  [dim]- pool mean: the fine-tuned classifier's own pooling, through its trained fc_norm[/]")
    elif model.global_pool:
        err.print("  [dim]- pool mean: mean patch token through a fresh fc_norm, i.e. a plain LayerNorm[/]")


def _encoder_line(r: LoadReport, tail: str, sep: str = ", ") -> None:
    err.print(f"[green]encoder[/] from {escape(str(r.path))} ({r.kind}, {r.source_format}, {r.container}): "
              f"{r.num_loaded} tensors{sep}{tail}")


ENCODER_ONLY_NOTE = catalog.random_decoder_warning(0).split("(")[0].rstrip()


def report_encoder_view(model: Any) -> None:
    """A masked autoencoder used for its encoder alone: one summary line, no word about the decoder."""
    r = model.load_report
    if r is None:
        return
    _encoder_line(r, "only the encoder is used", sep="; ")
    for fix in r.fixes:
        err.print(f"  [dim]- {escape(fix)}[/]")
    for message in r.warnings:
        if not message.startswith(ENCODER_ONLY_NOTE):  # the random decoder is not used here
            err.print(f"[bold yellow]warning:[/] {escape(message)}")


def report_details(r: LoadReport) -> None:
    """A load report's fixes (dim) and warnings (yellow), under its one-line summary."""
    for fix in r.fixes:
        err.print(f"  [dim]- {escape(fix)}[/]")
    for message in r.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(message)}")


class progress:
    """A rich progress bar on stderr over `total` items, as a context giving the `advance()` to call per
    item; a no-op when quiet or for a single item."""

    def __init__(self, total: int, label: str, *, quiet: bool) -> None:
        self.total, self.label, self.quiet = total, label, quiet or total < 2
        self.bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if self.quiet:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(escape(self.label)), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task("items", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
