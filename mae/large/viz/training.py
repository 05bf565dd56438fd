"""Figures of a training run: what the model reconstructs of fixed images as it learns, and its loss curves.

`preview_figure`: a row per image, columns original | masked | reconstruction (+ visible), with the epoch and each
image's loss; `loss_figure`: the training loss per step (raw, and an exponential moving average) and the held-out
losses per epoch. Drawn on a bare `Figure` (no pyplot); the caller saves them (`figures.save_figure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from .figures import drawable_text
from .panels import ReconstructionPanels

__all__ = ["loss_figure", "preview_figure", "smoothed"]

_CELL_IN = 1.9  # one panel, inches


def preview_figure(rows: Sequence[ReconstructionPanels], losses: Sequence[float], *, epoch: int, title: str = "",
                   note: str | None = None) -> Figure:
    """A row per image: original, masked (the run's fixed mask), reconstruction, reconstruction + visible."""
    if not rows or len(rows) != len(losses):
        raise ValueError(f"preview_figure needs one loss per row, got {len(rows)} rows and {len(losses)} losses")
    columns = ("original", "masked", "reconstruction", "reconstruction + visible")
    fig = Figure(figsize=(_CELL_IN * len(columns), _CELL_IN * len(rows) + 0.7))
    grid = fig.add_gridspec(len(rows), len(columns), left=0.02, right=0.98, bottom=0.02, top=1 - 0.7 / fig.get_figheight(),
                            hspace=0.18, wspace=0.04)
    for r, (panels, loss) in enumerate(zip(rows, losses)):
        for c, image in enumerate(panels.as_list()):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(image.clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(f"loss {loss:.3f}", fontsize=8)
    head = f"{title + ': ' if title else ''}epoch {epoch}" + (f" ({note})" if note else "")
    fig.suptitle(drawable_text(head), fontsize=10)
    return fig


def smoothed(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """The exponential moving average TensorBoard draws (`weight` of the past), debiased at the start."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def loss_figure(step_epochs: Sequence[float], step_losses: Sequence[float], epochs: Sequence[int],
                heldout: dict[str, Sequence[float]], *, title: str = "") -> Figure:
    """The training loss against the fractional epoch (faint raw, smoothed on top) and each held-out series per epoch
    (markers; at the end of its epoch)."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    if step_losses:
        ax.plot(step_epochs, step_losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train loss (per step)")
        ax.plot(step_epochs, smoothed(step_losses), color="tab:blue", linewidth=1.6, label="train loss (smoothed)")
    markers = iter(("o", "s", "^", "D"))
    for name, values in heldout.items():
        points = [(e + 1, v) for e, v in zip(epochs, values) if v is not None and math.isfinite(v)]
        if points:
            ax.plot(*zip(*points), marker=next(markers, "o"), linewidth=1.2, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(drawable_text(title), fontsize=10)
    fig.tight_layout()
    return fig
