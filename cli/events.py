"""The job events of a command (`jobs.run.Events`) drawn on the consoles: notes in the CLI's words, failed inputs,
the progress bar, the loaded model's report, each result kept for a `--json` report of a run that stops early."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cli.console import err, progress, report_load
from cli.errors import flags_for, record_result
from cli.render import escape

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.jobs.run import Events


def events(quiet: bool, *, loaded: Callable[[Any], None] = report_load, failures: bool | None = None) -> Events:
    """The job events of a command: notes (in the CLI's words: API arguments become flags), failures as
    `skipped` lines, a progress bar, the loaded model's report, and each result kept for a `--json` failure report.
    `quiet` (`--json`) keeps stderr to errors; `failures` (default: not quiet) lists failed inputs as they come."""
    from mae.large.jobs.run import Events, no_progress

    show_failures = not quiet if failures is None else failures
    return Events(
        note=(lambda text: None) if quiet else (lambda text: err.print(f"[dim]note: {escape(flags_for(text))}[/]")),
        failure=(lambda f: err.print(f"[red]skipped[/] {escape(f.reason)}")) if show_failures else (lambda f: None),
        progress=no_progress if quiet else (lambda total, label: progress(total, label, quiet=False)),
        loaded=(lambda model: None) if quiet else loaded,
        result=record_result,
    )
