"""The `mae-large` Typer app: global options and command registration. Commands live one per module."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import (
    attention,
    console,
    convert,
    download,
    errors,
    evaluate,
    export_onnx,
    features,
    finetune,
    inspect,
    interrupt,
    knn,
    loss,
    pca,
    pretrain,
    probe,
    reconstruct,
)


class JsonAwareGroup(TyperGroup):
    """Usage errors (exit 2) of a command run with `--json` also print `{"error", "exit_code"}` on stdout,
    so a script reads one JSON document whatever the outcome; the usual usage text still goes to stderr."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        ctx.meta["mae_large.json"] = "--json" in args
        console.STATE["json_printed"] = False
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # A usage error (click's UsageError interface: format_message, exit_code 2), raised while the
            # command's options are parsed or by the command itself (typer.BadParameter).
            usage = callable(getattr(exc, "format_message", None)) and getattr(exc, "exit_code", None) == 2
            if usage and ctx.meta.get("mae_large.json") and not console.STATE.get("json_printed"):
                errors.print_json({"error": " ".join(exc.format_message().split()),  # type: ignore[attr-defined]
                                   "exit_code": 2, "written": []})
            raise


app = typer.Typer(
    cls=JsonAwareGroup,
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
        "--debug", help=f"Show tracebacks and log records (or set {errors.DEBUG_ENV}=1).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """MAE ViT-Large: inspect checkpoints, reconstruct masked images, measure the loss."""
    console.STATE["debug"] = debug
    # Warnings of the libraries underneath (matplotlib's missing glyphs, torch's notices) become log records:
    # shown with --debug, never printed raw otherwise. The command prints what the user needs to know.
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.propagate = errors.debug_enabled()
    if not py_warnings.handlers:
        py_warnings.addHandler(logging.NullHandler())
    if errors.debug_enabled():
        # With --debug, show the library's log records (each loading fix, the load summary).
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s",
                            handlers=[RichHandler(console=console.err, show_time=False)])


# Each command is the `<name>_command` function of the module of its name (`-` spelled `_`), in `--help` order.
COMMANDS = (inspect, reconstruct, loss, download, features, attention, pca, knn, probe, export_onnx, convert, pretrain,
            finetune, evaluate)
for module in COMMANDS:
    name = module.__name__.rpartition(".")[2]
    app.command(name.replace("_", "-"))(getattr(module, f"{name}_command"))


def main() -> None:
    """The console script: signals first (so no interrupt is ever lost), then the app, then a fast exit."""
    interrupt.install()
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt as exc:  # before a command's own handler could take it (start-up, parsing)
        signum = interrupt.signum_of(exc)
        sys.stderr.write(f"interrupted by {interrupt.describe(signum)}; nothing was written\n")
        code = interrupt.exit_code(signum)
    signum = interrupt.received()
    if signum is not None and code in (0, 1, None):
        # The interrupt was swallowed on the way (a library's cleanup); the run still did not finish as asked.
        sys.stderr.write(f"interrupted by {interrupt.describe(signum)}\n")
        code = interrupt.exit_code(signum)
    errors.exit_process(code)
