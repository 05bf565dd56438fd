"""The `mae-large` Typer app: global options and command registration. Commands live one per module."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import common, download, features, inspect, loss, reconstruct

app = typer.Typer(
    name="mae-large",
    help="MAE ViT-Large (He et al., CVPR 2022): inspect checkpoints, reconstruct masked images, measure the loss.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from mae import __version__

        typer.echo(f"mae-large {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[bool, typer.Option(
        "--debug", help=f"Show tracebacks and log records (or set {common.DEBUG_ENV}=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """MAE ViT-Large: inspect checkpoints, reconstruct masked images, measure the loss."""
    common.STATE["debug"] = debug
    if common.debug_enabled():
        # With --debug, show the library's log records (each loading fix, the load summary).
        import logging

        from rich.logging import RichHandler

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s",
                            handlers=[RichHandler(console=common.err, show_time=False)])


app.command("inspect")(inspect.inspect_command)
app.command("reconstruct")(reconstruct.reconstruct_command)
app.command("loss")(loss.loss_command)
app.command("download")(download.download_command)
app.command("features")(features.features_command)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        common.exit_process(exc.code)
