"""The `mae-large` Typer app."""

import typer

app = typer.Typer(name="mae-large", help="MAE ViT-Large: inspect checkpoints, reconstruct images, measure the loss.",
                  no_args_is_help=True)


@app.callback()
def _root() -> None:
    """MAE ViT-Large: inspect checkpoints, reconstruct images, measure the loss."""


def main() -> None:
    app()
