"""TensorBoard scalars in the run folder, as the official scripts write them, when `tensorboard` is installed.

The official engines write, at each update (`(data_iter_step + 1) % accum_iter == 0`), the step's all-reduced loss and
lr against `epoch_1000x = int((data_iter_step / len(data_loader) + epoch) * 1000)`: `train_loss` and `lr` in
`engine_pretrain.py`, `loss` and `lr` in `engine_finetune.py`; `main_finetune.py` adds `perf/test_acc1`,
`perf/test_acc5` and `perf/test_loss` against the epoch. The same tags are written here, into the run folder's
`tensorboard/` (the official `--log_dir` defaults to its `--output_dir`; a folder of its own keeps the run's files
apart: `tensorboard --logdir RUN` finds it), plus this tool's held-out numbers under `heldout/` (the official
scripts have none). Rank 0 writes. Without `tensorboard` (`pip install mae-large[tensorboard]`) nothing is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

Progress = Callable[[str, dict[str, Any]], None]
FOLDER = "tensorboard"

# Per update: tag -> the "step" event's entry.
STEP_TAGS: Mapping[str, Mapping[str, str]] = {
    "pretrain": {"train_loss": "loss", "lr": "lr"},
    "finetune": {"loss": "loss", "lr": "lr"},
}
# Per epoch: tag -> the epoch record's entry (written where the record has it).
EPOCH_TAGS: Mapping[str, Mapping[str, str]] = {
    "pretrain": {"heldout/loss": "val_loss", "heldout/pixel_loss": "val_pixel_loss",
                 "heldout/baseline_pixel_loss": "val_baseline_pixel_loss", "heldout/knn_top1": "knn_top1"},
    "finetune": {"perf/test_acc1": "val_top1", "perf/test_acc5": "val_top5", "perf/test_loss": "val_loss"},
}


def available() -> bool:
    """Whether `tensorboard` (which `torch.utils.tensorboard` writes with) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def epoch_1000x(epoch: int, step: int, steps: int) -> int:
    """The official x-axis: thousandths of an epoch at the step's start (`engine_pretrain.py`)."""
    return int((step / steps + epoch) * 1000)


@contextlib.contextmanager
def scalars(out_dir: Path, recipe: str, accum: int, notify: Progress, *, enabled: bool) -> Iterator[Progress]:
    """`notify` wrapped to also write the recipe's scalars (`STEP_TAGS`, `EPOCH_TAGS`) into `out_dir / FOLDER`; `notify` itself
    where `enabled` is False (another rank) or `tensorboard` is not installed. The writer is flushed each epoch and
    closed on leaving, whatever ends the run."""
    if not (enabled and available()):
        yield notify
        return
    from torch.utils.tensorboard import SummaryWriter

    # Opened at the run's "start" (when config.json is written), not before: a run refused while it is being set up
    # leaves no events file behind (nor a folder holding only one).
    writers: list[Any] = []
    step_tags, epoch_tags = STEP_TAGS[recipe], EPOCH_TAGS[recipe]

    def writer() -> Any:
        if not writers:
            writers.append(SummaryWriter(log_dir=str(out_dir / FOLDER)))
        return writers[0]

    def listen(event: str, info: dict[str, Any]) -> None:
        if event == "start":
            writer()
        elif event == "step" and (info["step"] + 1) % accum == 0:
            x = epoch_1000x(info["epoch"], info["step"], info["steps"])
            for tag, key in step_tags.items():
                writer().add_scalar(tag, info[key], x)
        elif event == "epoch":
            for tag, key in epoch_tags.items():
                if info.get(key) is not None:
                    writer().add_scalar(tag, info[key], info["epoch"])
            writer().flush()
        notify(event, info)

    try:
        yield listen
    finally:
        for opened in writers:
            opened.close()
