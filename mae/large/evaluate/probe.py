"""The linear probe on cached features: a grid of heads chosen on held-out training rows (the default), or the
official MAE recipe of `main_linprobe.py` (`protocol="official"`).

Both train the official head, `Sequential(BatchNorm1d(D, affine=False, eps=1e-6), Linear(D, classes))` (the state
keys `head.0.*` and `head.1.*` of the official model), and save it the same way (`save_probe`).

`protocol="grid"` (default, `probe_grid.py`, after DINOv2's linear evaluation): 52 heads, one per base learning
rate 1e-4 ... 1.0 (x batch / 256) and weight decay 0 ... 1e-2, trained together by SGD with momentum 0.9 on
standardised features, cosine schedule without warm-up, batch 1024 capped at the rows, 10 epochs but at least 1000
steps; a seeded, stratified 20% of the training rows is held out and chooses the point; the chosen point is then
trained again on all training rows. Every grid point's held-out and val scores are kept (`ProbeResult.grid`). It
works on a few hundred rows as on ImageNet.

`protocol="official"`: the recipe exactly, with its defaults (`OFFICIAL`, from `main_linprobe.py` and FINETUNE.md):
the Linear initialised trunc-normal with std 0.01 and a zero bias; LARS (`lars.py`) with lr = blr x effective
batch / 256, where the batch is capped at the training set size; the half-cycle cosine with linear warm-up, set
every iteration; cross-entropy; the last incomplete batch of an epoch dropped (`drop_last=True`); val scored
after every epoch. It assumes thousands of LARS steps (ImageNet: 78 an epoch x 90): a run with fewer than
`MIN_STEPS`, or that never leaves its warm-up, warns (`ProbeResult.warnings`).

What differs from the official recipe, on purpose: it trains on *augmented images* (RandomResizedCrop, flip)
through the frozen encoder, recomputing the features every epoch; this trains on features cached once from the
evaluation transform, the standard fast approximation (hours become seconds), which usually lands a little below
the augmented protocol. It also runs in float32 where the official code uses AMP.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import invalid_argument
from ..utils.atomic import atomic_path
from ..utils.device import resolve_device
from ..utils.optim import LARS, cosine_lr, set_lr
from .probe_grid import LEARNING_RATES, WEIGHT_DECAYS, grid_probe
from .source import FeatureSource, TensorSource, as_source, batches_in_order, check_labels, iter_rows, resolve_classes

Epoch = dict[str, Any]

PROTOCOLS = ("grid", "official")
# main_linprobe.py's argparse defaults (epochs 90, blr 0.1, weight_decay 0, warmup_epochs 10, LARS, head
# trunc-normal std 0.01) and FINETUNE.md's effective batch (512 a GPU x 32 GPUs = 16384). FINETUNE.md adds that
# 50 epochs suffice for ViT-L (`epochs=50`).
OFFICIAL: dict[str, Any] = {"epochs": 90, "batch_size": 16384, "blr": 0.1, "weight_decay": 0.0, "warmup_epochs": 10,
                            "min_lr": 0.0}
GRID: dict[str, Any] = {"epochs": 10, "batch_size": 1024, "learning_rates": LEARNING_RATES,
                        "weight_decays": WEIGHT_DECAYS, "holdout": 0.2, "min_steps": 1000, "refit": True}
MIN_STEPS = 1000  # fewer optimiser steps than this: a warning


@dataclass(frozen=True)
class ProbeResult:
    """The kept head (official key names), its training history (official: one dict per epoch with epoch, lr of its
    last step, mean train loss, val top1 / top5 in percent; grid: phase, epoch, lr, train_loss), val top-1 / top-5 of
    that head, the settings it ran with (`args`, plain values), every grid point (lr, lr_scaled, holdout_top1,
    holdout_loss, val_top1, val_top5, weight_decay; empty for the official protocol), the chosen point's index, and warnings."""

    head_state: dict[str, torch.Tensor]
    history: list[Epoch]
    args: dict[str, object]
    top1: float
    top5: float
    grid: list[dict[str, float]] = field(default_factory=list)
    chosen: int | None = None
    warnings: list[str] = field(default_factory=list)


def build_head(dim: int, classes: int, generator: torch.Generator | None = None) -> torch.nn.Sequential:
    """The official probe head: BatchNorm1d without affine parameters, then a Linear (trunc-normal 0.01, bias 0)."""
    linear = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        torch.nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
        linear.bias.zero_()
    return torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


@torch.no_grad()
def _accuracy(head: torch.nn.Module, source: FeatureSource, labels: torch.Tensor, chunk_rows: int,
              device: torch.device) -> tuple[float, float]:
    head.eval()
    hit1 = hit5 = 0
    offset = 0
    for block in iter_rows(source, chunk_rows):
        logits = head(block.to(device, torch.float32))
        target = labels[offset:offset + block.shape[0]].to(device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit1 += int((top[:, 0] == target).sum())
        hit5 += int((top == target[:, None]).any(1).sum())
        offset += block.shape[0]
    total = max(source.rows, 1)
    return 100.0 * hit1 / total, 100.0 * hit5 / total


def step_warning(protocol: str, rows: int, batch: int, epochs: int, warmup_epochs: float = 0.0) -> str | None:
    """The one-line warning for a run with too few optimiser steps for its settings, or None."""
    steps = (rows // batch) * epochs
    if protocol == "official" and warmup_epochs >= epochs:
        return (f"protocol='official' with warmup_epochs={warmup_epochs:g} >= epochs={epochs}: the learning rate never "
                "leaves its warm-up, so the head hardly moves from its init; pass more epochs than warm-up epochs, or "
                "use the default protocol='grid'")
    if steps >= MIN_STEPS:
        return None
    hint = ("LARS moves the head by a small fraction of its norm a step and the recipe expects thousands of steps "
            "(ImageNet: 78 an epoch x 90); use the default protocol='grid', or a smaller batch size and more epochs"
            if protocol == "official" else f"pass min_steps={MIN_STEPS} (the default) or more epochs")
    return (f"protocol={protocol!r} makes only {steps} optimiser steps on {rows} training rows ({rows // batch} per "
            f"epoch at batch_size={batch} x epochs={epochs}), fewer than {MIN_STEPS}: the head may be far from "
            f"converged; {hint}")


def probe(
    train: torch.Tensor | FeatureSource,
    train_labels: torch.Tensor,
    val: torch.Tensor | FeatureSource,
    val_labels: torch.Tensor,
    *,
    protocol: str = "grid",
    epochs: int | None = None,
    batch_size: int | None = None,
    blr: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    min_lr: float | None = None,
    learning_rates: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    holdout: float | None = None,
    min_steps: int | None = None,
    refit: bool | None = None,
    momentum: float = 0.9,
    seed: int = 0,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    memory_bytes: int = 4 << 30,
    chunk_rows: int = 8192,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> ProbeResult:
    """Train a linear-probe head on cached features and score it on `val` (the protocols: this module's docstring).

    Deterministic given `seed`. A tensor `train` is indexed; another source is materialised when it fits in
    `memory_bytes`, else each epoch gathers its shuffled batches in sequential passes over the source,
    `memory_bytes` at a time. Settings left at None take the protocol's default (`GRID`, `OFFICIAL`); a setting of
    the other protocol is refused. A run with too few optimiser steps warns (`warnings.warn`, and in the result).

    Args:
        train, val: the features, an (N, D) tensor or a feature source (`store.open_features`); the same D, and at
            least 2 training rows.
        train_labels, val_labels: one class per row, non-negative integers (int64 tensors).
        protocol: `grid` (default) or `official`.
        epochs: training epochs, at least 1 (grid 10, raised to reach `min_steps`; official 90, 50 suffice for ViT-L).
        batch_size: rows per step, at least 2, capped at the rows trained on (grid 1024, official 16384).
        blr: official: base learning rate, lr = blr x batch / 256 (0.1).
        weight_decay: official: LARS weight decay, on the weights, not the bias (0).
        warmup_epochs: official: epochs of linear warm-up before the half-cycle cosine, >= 0 (10; may be fractional).
        min_lr: official: the learning rate the cosine ends at (0).
        learning_rates: grid: the base learning rates, each x batch / 256 (`probe_grid.LEARNING_RATES`).
        weight_decays: grid: the weight decays, each with every learning rate (`probe_grid.WEIGHT_DECAYS`).
        holdout: grid: the share of training rows held out to choose the lr, in (0, 1) (0.2).
        min_steps: grid: the fewest optimiser steps a phase makes (1000).
        refit: grid: train the chosen lr again on all training rows and keep that head (True).
        momentum: SGD / LARS momentum (0.9).
        seed: draws the head's init, the shuffles and (grid) the held-out rows.
        num_classes: the head's classes (default one more than the largest label); must cover every label.
        device: where the heads train (`resolve_device`).
        memory_bytes: how much float32 training data may be held at once (above).
        chunk_rows: rows per block read from a source (the val features are always read in such blocks).
        on_epoch: called after every epoch; official: the epoch's record (epoch, lr, train_loss, top1, top5);
            grid: phase (`grid`, then `refit`), epoch and epochs of the phase.

    Returns a `ProbeResult`."""
    if protocol not in PROTOCOLS:
        raise invalid_argument("protocol", f"protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    given = {"epochs": epochs, "batch_size": batch_size, "blr": blr, "weight_decay": weight_decay,
             "warmup_epochs": warmup_epochs, "min_lr": min_lr, "learning_rates": learning_rates,
             "weight_decays": weight_decays, "holdout": holdout, "min_steps": min_steps, "refit": refit}
    defaults = OFFICIAL if protocol == "official" else GRID
    owner = "grid" if protocol == "official" else "official"
    for name, value in given.items():
        if value is not None and name not in defaults:
            raise invalid_argument(name, f"{name}={value!r} is a setting of protocol={owner!r}, not of "
                                   f"protocol={protocol!r}; leave it out or pass protocol={owner!r}")
    settings = {name: default if given[name] is None else given[name] for name, default in defaults.items()}
    train, val = as_source(train), as_source(val)
    if train.dim != val.dim:
        raise invalid_argument("val", f"the train features have {train.dim} dimensions and the val features {val.dim}; "
                               "embed both with the same model and pool")
    for name, value, least in (("epochs", settings["epochs"], 1), ("batch_size", settings["batch_size"], 2),
                               ("chunk_rows", chunk_rows, 1)):
        if value < least:
            raise invalid_argument(name, f"{name}={value} must be at least {least}; pass a larger number")
    if train.rows < 2:
        raise invalid_argument("train", f"the probe needs at least 2 training rows (batch norm), got {train.rows}")
    train_y = check_labels(train_labels, train.rows, "train_labels")
    val_y = check_labels(val_labels, val.rows, "val_labels")
    classes = resolve_classes(num_classes, train_y, val_y)
    device = resolve_device(device)
    budget_rows = max(min(settings["batch_size"], train.rows), memory_bytes // (4 * train.dim))
    if not isinstance(train, TensorSource) and train.rows <= budget_rows:
        train = TensorSource(torch.cat([b.float() for b in iter_rows(train, chunk_rows)]))
    run = _official if protocol == "official" else _grid
    return run(train, train_y, val, val_y, classes=classes, device=device, momentum=momentum, seed=seed,
               budget_rows=budget_rows, chunk_rows=chunk_rows, on_epoch=on_epoch, **settings)


def _warned(message: str | None) -> list[str]:
    if message is None:
        return []
    warnings.warn(message, UserWarning, stacklevel=4)
    return [message]


def _grid(train: FeatureSource, train_y: torch.Tensor, val: FeatureSource, val_y: torch.Tensor, *,
          learning_rates: Sequence[float], weight_decays: Sequence[float], holdout: float, min_steps: int, refit: bool,
          seed: int, **settings: Any) -> ProbeResult:
    for name, values, least in (("learning_rates", learning_rates, "> 0"), ("weight_decays", weight_decays, ">= 0")):
        floats = [float(v) for v in values]
        if not floats or not all(math.isfinite(v) and (v > 0 if least == "> 0" else v >= 0) for v in floats):
            raise invalid_argument(name, f"{name}={list(values)!r} must be one or more finite numbers {least}; leave "
                                   "it out for the default grid")
    if not 0 < holdout < 1:
        raise invalid_argument("holdout", f"holdout={holdout} must be a share of the training rows in (0, 1); "
                               "the default is 0.2")
    if min_steps < 0:
        raise invalid_argument("min_steps", f"min_steps={min_steps} must be >= 0; the default is 1000")
    run = grid_probe(train, train_y, val, val_y, learning_rates=learning_rates, weight_decays=weight_decays,
                     holdout=holdout, min_steps=min_steps, refit=refit, seed=seed, **settings)
    args = run.args
    notes = _warned(step_warning("grid", args["fit_rows"], args["batch_size"], args["epochs"]))
    head = run.head
    state = {"head.0.running_mean": head.mean.clone(), "head.0.running_var": head.var.clone(),
             "head.0.num_batches_tracked": torch.tensor(0), "head.1.weight": head.weight[:, 0].clone(),
             "head.1.bias": head.bias[:, 0].clone()}
    args = {**args, "seed": seed, "num_classes": settings["classes"], "dim": train.dim, "train_rows": train.rows,
            "features": "cached"}
    return ProbeResult(head_state=state, history=run.history, args=args, top1=run.top1, top5=run.top5,
                       grid=run.grid, chosen=run.chosen, warnings=notes)


def _official(train: FeatureSource, train_y: torch.Tensor, val: FeatureSource, val_y: torch.Tensor, *, classes: int,
              device: torch.device, epochs: int, batch_size: int, blr: float, weight_decay: float, warmup_epochs: float,
              momentum: float, min_lr: float, seed: int, budget_rows: int, chunk_rows: int,
              on_epoch: Callable[[Epoch], None] | None) -> ProbeResult:
    """`main_linprobe.py` on cached features, evaluated on `val` after every epoch."""
    if not warmup_epochs >= 0:
        raise invalid_argument("warmup_epochs", f"warmup_epochs={warmup_epochs} must be >= 0; the official value is 10")
    if not blr > 0:
        raise invalid_argument("blr", f"blr={blr} must be > 0; the official value is 0.1")
    if not weight_decay >= 0:
        raise invalid_argument("weight_decay", f"weight_decay={weight_decay} must be >= 0; the official value is 0")
    batch = min(batch_size, train.rows)
    steps = train.rows // batch
    lr = blr * batch / 256
    notes = _warned(step_warning("official", train.rows, batch, epochs, warmup_epochs))

    generator = torch.Generator().manual_seed(seed)
    head = build_head(train.dim, classes, generator).to(device)
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    history: list[Epoch] = []
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(train.rows, generator=generator)
        losses = torch.zeros((), dtype=torch.float64, device=device)
        step_lr = 0.0
        for step, rows in enumerate(batches_in_order(train, order, batch, budget_rows, chunk_rows)):
            step_lr = cosine_lr(epoch + step / steps, lr=lr, epochs=epochs, warmup_epochs=warmup_epochs, min_lr=min_lr)
            set_lr(optimizer, step_lr)
            target = train_y[order[step * batch:(step + 1) * batch]].to(device)
            loss = F.cross_entropy(head(rows.to(device, torch.float32)), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses += loss.detach()
        top1, top5 = _accuracy(head, val, val_y, chunk_rows, device)
        record: Epoch = {"epoch": epoch, "lr": step_lr, "train_loss": float(losses) / steps, "top1": top1, "top5": top5}
        history.append(record)
        if on_epoch is not None:
            on_epoch(dict(record))

    state = {f"head.{key}": value.detach().cpu().clone() for key, value in head.state_dict().items()}
    args = {"protocol": "official", "epochs": epochs, "batch_size": batch, "requested_batch_size": batch_size,
            "blr": blr, "lr": lr, "weight_decay": weight_decay, "warmup_epochs": warmup_epochs, "min_lr": min_lr,
            "momentum": momentum, "seed": seed, "num_classes": classes, "dim": train.dim, "train_rows": train.rows,
            "steps_per_epoch": steps, "steps": steps * epochs, "optimizer": "LARS", "features": "cached"}
    return ProbeResult(head_state=state, history=history, args=args, top1=history[-1]["top1"],
                       top5=history[-1]["top5"], warnings=notes)


def save_probe(result: ProbeResult, path: str | os.PathLike[str], extra: Mapping[str, object] | None = None) -> None:
    """Write the kept head as `{"model": head_state, "args": {...}}` atomically, loadable with `weights_only=True`.

    `extra` (plain values: str, int, float, bool, None, or lists of them, e.g. the features' checkpoint and
    class names) is added to `args`.
    """
    args = {**result.args, **dict(extra or {})}
    for key, value in args.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not isinstance(key, str) or not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise invalid_argument("extra", f"probe args must map str to plain values, got {key!r}: {value!r}")
    args = {key: list(value) if isinstance(value, tuple) else value for key, value in args.items()}
    with atomic_path(path) as tmp:
        torch.save({"model": dict(result.head_state), "args": args}, tmp)
