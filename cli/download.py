"""`mae-large download NAME...`: fetch the published checkpoints, resumably, keeping only verified files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from cli.console import err, out
from cli.errors import handle_errors, print_json
from cli.options import JsonOpt
from cli.render import escape
from mae.large import catalog

NAMES = ", ".join([*catalog.CHECKPOINTS, catalog.ALL])
FULL_NAMES = " or ".join(n for n, c in catalog.CHECKPOINTS.items() if c.kind == "full")
ENCODER_NAMES = " and ".join(n for n, c in catalog.CHECKPOINTS.items() if c.kind == "encoder-only")

if TYPE_CHECKING:  # pragma: no cover
    from mae.large.jobs.download import CheckpointSpec, DownloadResult


@handle_errors
def download_command(
    names: Annotated[list[str] | None, typer.Argument(
        help=f"Checkpoints to fetch: {NAMES} (see --list).", show_default=False)] = None,
    dest: Annotated[Path, typer.Option("--dest", help="Folder to save into.")] = Path("data"),
    list_: Annotated[bool, typer.Option("--list", help="List the known checkpoints and what each is for.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Fetch again even if a verified copy is present.")] = False,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", envvar="MAE_LARGE_BASE_URL", show_default=False,
        help="A mirror holding the files flat: each is fetched from BASE_URL/<file name>.")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, max=3600.0, help="Seconds to wait to connect and per read.")] = 30.0,
    json_: JsonOpt = False,
) -> None:
    """Download Meta's MAE ViT-Large checkpoints; an interrupted download resumes, a wrong file is never kept."""
    # The library module pulls in torch (through the mae.large package): import it only when run.
    from mae.large.jobs.download import REGISTRY, resolve_names

    if list_:
        _list(list(REGISTRY.values()), json_)
        return
    if not names:
        raise typer.BadParameter(f"give checkpoint names ({NAMES}), or --list",
                                 param_hint="NAMES")
    specs = resolve_names(names)
    rows = []
    for spec in specs:
        result = _fetch(spec, dest, force=force, base_url=base_url, timeout=timeout)
        rows.append({"name": spec.name, "path": str(result.path), "status": result.status, "kind": result.kind,
                     "num_tensors": result.num_tensors, "bytes_fetched": result.bytes_fetched,
                     "seconds": round(result.seconds, 3), "url": result.url})
    if json_:
        print_json(rows)
        return
    table = Table(title="downloads")
    for column in ("name", "path", "status", "kind"):
        table.add_column(column)
    for row in rows:
        colour = "green" if row["kind"] == "full" else "yellow"
        table.add_row(row["name"], escape(row["path"]), row["status"], f"[{colour}]{row['kind']}[/]")
    out.print(table)


def _fetch(spec: CheckpointSpec, dest: Path, *, force: bool, base_url: str | None, timeout: float) -> DownloadResult:
    """One download with a progress bar on stderr (so `--json` on stdout stays clean)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from mae.large.jobs.download import download

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    # No bar when stderr is not a terminal (logs, CI): it would only leave blank lines behind.
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(escape(spec.filename), total=spec.size)

        def on_progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total if total is not None else spec.size)

        result = download(spec, dest, base_url=base_url, force=force, timeout=timeout, progress=on_progress)
    if result.status == "present":
        err.print(f"[green]present[/] {escape(str(result.path))} (verified; --force fetches it again)")
    else:
        err.print(f"[green]{result.status}[/] {escape(str(result.path))}: {result.bytes_fetched:,} bytes in "
                  f"{result.seconds:.1f} s, verified ({result.num_tensors} tensors, {result.kind})")
    return result


def _list(specs: list[CheckpointSpec], json_: bool) -> None:
    if json_:
        print_json([{"name": s.name, "file": s.filename, "url": s.url, "size": s.size, "md5_prefix": s.md5_prefix,
                     "kind": s.kind, "num_tensors": s.num_tensors, "purpose": s.purpose} for s in specs])
        return
    table = Table(title="MAE ViT-Large checkpoints", box=box.SIMPLE_HEAD)
    # Names, sizes and kinds stay whole; on a narrow terminal the file name and the purpose fold rather
    # than end in an ellipsis, so nothing is hidden (the footer repeats the one thing that matters).
    table.add_column("name", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("tensors", justify="right", no_wrap=True)
    table.add_column("purpose", overflow="fold", ratio=1)
    for s in specs:
        colour = "green" if s.kind == "full" else "yellow"
        size = f"{s.size / 1e9:.2f} GB" if s.size else "unknown"
        table.add_row(s.name, s.filename, size, f"[{colour}]{s.kind}[/]", str(s.num_tensors), escape(s.purpose))
    out.print(table)
    out.print(f"Reconstruction (`mae-large reconstruct`) needs a [green]full[/] checkpoint: {FULL_NAMES}. "
              f"{ENCODER_NAMES} holds the [yellow]encoder only[/]: for fine-tuning / features; its decoder would be random.")
