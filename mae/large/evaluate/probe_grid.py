"""The default linear probe: a grid of linear heads, one per (learning rate, weight decay), trained together on
cached features, the one to keep chosen on training rows held out for that (never on val).

After DINOv2's linear evaluation (facebookresearch/dinov2 `dinov2/eval/linear.py`, written from its
description, not copied): many linear heads trained at once in one pass over the features, one per learning rate
of a grid scaled by batch / 256, SGD with momentum 0.9, a cosine schedule per iteration down to 0 without warm-up,
the loss of every head summed (each head's gradient is its own). What differs, and why:

* the choice: DINOv2 keeps the head that scores best on the evaluation set; here a seeded, stratified `holdout`
  share of the *training* rows (20%) is set aside, the grid trains on the rest, and the held-out top-1 chooses
  (ties: the lower held-out cross-entropy, then the earlier point); val is scored, never consulted;
* the grid: 13 learning rates, 1e-4 ... 1.0 in 1-2-5 steps, times 4 weight decays, 0, 1e-4, 1e-3, 1e-2 (DINOv2:
  1e-5 ... 0.1, weight decay 0): 52 heads, as many as DINOv2's default trains. Weight decay is what lets a small
  set reach a regularised optimum (what scikit-learn's `LogisticRegression` finds); on a large one the held-out
  rows are free to pick 0;
* the features are standardised by the mean and variance of the rows trained on (what the official head's
  `BatchNorm1d(affine=False, eps=1e-6)` does at evaluation), so the head keeps the official `head.0` / `head.1`
  layout and one grid fits any encoder's feature scale; the Linear starts as the official one (trunc-normal
  std 0.01, bias 0), the same draw for every head;
* the length: `epochs` (10; with batch 1024 on ImageNet-1k that is DINOv2's 12,500 iterations), but at least
  `min_steps` (1000) optimiser steps, so a small set runs more epochs; batch 1024, capped at the rows;
* `refit`: the chosen point is trained again, from the same init, on all training rows (statistics included), and
  that head is the one returned (with `refit=False`, the chosen grid head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import invalid_argument
from ..utils.keyed import derive_seed
from ..utils.optim import cosine_lr
from .source import FeatureSource, batches_in_order, iter_rows

LEARNING_RATES = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)  # x batch / 256
WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
EPS = 1e-6  # the official head's BatchNorm1d eps
LOGIT_BYTES = 64 << 20  # evaluation blocks: at most this much of logits at once


@dataclass(frozen=True)
class Heads:
    """G linear heads over standardised features: logits[:, :, g] = ((x - mean) / sqrt(var + eps)) @ weight[:, g].T +
    bias[:, g]. Classes come before heads so the softmax runs over a strided dimension (far faster on a CPU)."""

    weight: torch.Tensor  # (C, G, D)
    bias: torch.Tensor  # (C, G)
    mean: torch.Tensor  # (D,)
    var: torch.Tensor  # (D,)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.var + EPS).sqrt()

    def logits(self, x: torch.Tensor, standardised: bool = False) -> torch.Tensor:
        """(N, C, G) logits of (N, D) features (already standardised when `standardised`)."""
        classes, groups, dim = self.weight.shape
        z = x if standardised else self.standardise(x)
        return (z @ self.weight.reshape(classes * groups, dim).T).view(-1, classes, groups) + self.bias


@dataclass(frozen=True)
class GridOutcome:
    """What `grid_probe` returns: the kept head (one of `Heads`), its per-epoch history, every grid point's scores,
    the chosen index, val top-1 / top-5 of the kept head, and the settings it ran with."""

    head: Heads
    history: list[dict[str, Any]]
    grid: list[dict[str, float]]
    chosen: int
    top1: float
    top5: float
    args: dict[str, Any]


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows to train on, rows held out), each sorted: per class a seeded draw of round(fraction x its rows) is held
    out, never a whole class (a class of one row stays in training)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", "holdout"))
    held = torch.zeros(labels.numel(), dtype=torch.bool)
    by_class = torch.argsort(labels, stable=True)  # each class's rows in row order, one class after another
    for rows in torch.split(by_class, torch.bincount(labels).tolist()):
        take = min(math.floor(fraction * rows.numel() + 0.5), rows.numel() - 1)
        held[rows[torch.randperm(rows.numel(), generator=generator)[:take]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def _selected(source: FeatureSource, rows: torch.Tensor | None, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(block of the chosen rows, their row numbers) for every block of the source; all rows when `rows` is None. The
    blocks are the source's own, whatever its kind, so a tensor and a stream of it give the same sums."""
    keep = None
    if rows is not None:
        keep = torch.zeros(source.rows, dtype=torch.bool)
        keep[rows] = True
    offset = 0
    for block in iter_rows(source, size):
        where = torch.arange(offset, offset + block.shape[0])
        offset += block.shape[0]
        if keep is not None:
            block, where = block[keep[where]], where[keep[where]]
        if where.numel():
            yield block, where


def feature_stats(source: FeatureSource, rows: torch.Tensor | None, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance per dimension of `rows` (all when None), float64, in one pass (block moments
    merged as Chan et al. do)."""
    count, mean, m2 = 0, torch.zeros(source.dim, dtype=torch.float64), torch.zeros(source.dim, dtype=torch.float64)
    for block, _ in _selected(source, rows, chunk_rows):
        part = block.double()
        n, part_mean = part.shape[0], part.mean(0)
        delta, total = part_mean - mean, count + n
        mean += delta * (n / total)
        m2 += ((part - part_mean) ** 2).sum(0) + delta ** 2 * (count * n / total)
        count = total
    return mean, m2 / max(count, 1)


def train_heads(source: FeatureSource, labels: torch.Tensor, rows: torch.Tensor, points: Sequence[tuple[float, float]],
                *, init: torch.Tensor, epochs: int, batch: int, momentum: float, seed: int,
                phase: str, device: torch.device, budget_rows: int, chunk_rows: int,
                on_epoch: Callable[[dict[str, object]], None] | None) -> tuple[Heads, torch.Tensor, list[float]]:
    """One head per (learning rate, weight decay) point, the lr scaled by batch / 256, trained together on `rows` by
    SGD with momentum (`mu = momentum * mu + grad + wd * w`, `w -= lr * mu`; no decay on the bias) under a cosine
    schedule per iteration; the cross-entropy gradient is written out (softmax - one-hot). Returns the heads, each
    epoch's mean loss per head (epochs, G) and each epoch's last lr factor of the schedule."""
    mean, var = feature_stats(source, rows, chunk_rows)
    groups, (classes, dim) = len(points), init.shape
    heads = Heads(init.to(device, torch.float32)[:, None].expand(classes, groups, dim).clone(),
                  torch.zeros(classes, groups, device=device), mean.float().to(device), var.float().to(device))
    lrs = torch.tensor([lr for lr, _ in points], dtype=torch.float32, device=device) * (batch / 256)
    decays = torch.tensor([wd for _, wd in points], dtype=torch.float32, device=device)[None, :, None]
    mu_w, mu_b = torch.zeros_like(heads.weight), torch.zeros_like(heads.bias)
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", phase, "shuffle"))
    steps = rows.numel() // batch
    losses, factors = torch.zeros(epochs, groups, dtype=torch.float64), []
    for epoch in range(epochs):
        order = rows[torch.randperm(rows.numel(), generator=generator)]
        factor, epoch_loss = 0.0, torch.zeros(groups, dtype=torch.float64, device=device)
        for step, x in enumerate(batches_in_order(source, order, batch, budget_rows, chunk_rows)):
            factor = cosine_lr(epoch + step / steps, lr=1.0, epochs=epochs, warmup_epochs=0)
            target = labels[order[step * batch:(step + 1) * batch]].to(device)
            z = heads.standardise(x.to(device, torch.float32))
            log_p = heads.logits(z, standardised=True).log_softmax(1)  # (B, C, G)
            picked = target[:, None, None].expand(-1, 1, groups)
            epoch_loss -= log_p.gather(1, picked).squeeze(1).double().mean(0)
            grad = log_p.exp_().scatter_add_(1, picked, torch.full_like(picked, -1.0, dtype=log_p.dtype)) / batch
            grad_w = (grad.reshape(batch, classes * groups).T @ z).view(classes, groups, dim)
            mu_w.mul_(momentum).add_(grad_w).add_(decays * heads.weight)
            mu_b.mul_(momentum).add_(grad.sum(0))
            step_lr = lrs * factor
            heads.weight.sub_(step_lr[None, :, None] * mu_w)
            heads.bias.sub_(step_lr[None, :] * mu_b)
        losses[epoch] = epoch_loss.cpu() / steps
        factors.append(factor)
        if on_epoch is not None:
            on_epoch({"phase": phase, "epoch": epoch, "epochs": epochs})
    return heads, losses, factors


@torch.no_grad()
def score_heads(heads: Heads, source: FeatureSource, labels: torch.Tensor, rows: torch.Tensor | None,
                chunk_rows: int, device: torch.device) -> tuple[list[float], list[float], list[float]]:
    """Top-1 and top-5 (percent) and mean cross-entropy of every head on `rows` of `source` (all when None)."""
    classes, groups, _ = heads.weight.shape
    size = max(1, min(chunk_rows, LOGIT_BYTES // (4 * groups * classes)))
    hit1 = torch.zeros(groups, dtype=torch.int64)
    hit5 = torch.zeros(groups, dtype=torch.int64)
    loss = torch.zeros(groups, dtype=torch.float64)
    total = 0
    for block, where in _selected(source, rows, size):
        logits = heads.logits(block.to(device, torch.float32))
        target = labels[where].to(device)
        top = logits.topk(min(5, classes), dim=1).indices  # (N, k, G)
        hit1 += (top[:, 0] == target[:, None]).sum(0).cpu()
        hit5 += (top == target[:, None, None]).any(1).sum(0).cpu()
        picked = target[:, None, None].expand(-1, 1, groups)
        loss -= logits.log_softmax(1).gather(1, picked).squeeze(1).double().sum(0).cpu()
        total += where.numel()
    total = max(total, 1)
    return (100.0 * hit1.double() / total).tolist(), (100.0 * hit5.double() / total).tolist(), (loss / total).tolist()


def grid_probe(train: FeatureSource, train_y: torch.Tensor, val: FeatureSource, val_y: torch.Tensor, *,
               classes: int, epochs: int, batch_size: int, min_steps: int, learning_rates: Sequence[float],
               weight_decays: Sequence[float], holdout: float, refit: bool, momentum: float, seed: int,
               device: torch.device, budget_rows: int, chunk_rows: int,
               on_epoch: Callable[[dict[str, object]], None] | None) -> GridOutcome:
    """The grid protocol of this module's docstring (`probe.probe` checks the arguments and calls it)."""
    fit, held = holdout_split(train_y, holdout, seed)
    if held.numel() == 0 or fit.numel() < 2:
        raise invalid_argument("holdout", f"holdout={holdout} of {train.rows} training rows holds out no row (a class "
                               f"needs at least {math.ceil(0.5 / holdout) + 1} rows to lend one); pass more rows, a "
                               "larger holdout, or protocol='official'")
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", "init"))
    init = torch.nn.init.trunc_normal_(torch.empty(classes, train.dim), std=0.01, generator=generator)
    common = {"init": init, "momentum": momentum, "seed": seed, "device": device, "budget_rows": budget_rows,
              "chunk_rows": chunk_rows, "on_epoch": on_epoch}

    def plan(rows: int) -> tuple[int, int]:  # (batch, epochs): whole batches, at least min_steps of them
        batch = min(batch_size, rows)
        return batch, max(epochs, math.ceil(min_steps / (rows // batch)))

    points = [(float(lr), float(wd)) for wd in weight_decays for lr in learning_rates]
    batch, grid_epochs = plan(fit.numel())
    heads, losses, factors = train_heads(train, train_y, fit, points, epochs=grid_epochs, batch=batch, phase="grid",
                                         **common)
    held_top1, _, held_loss = score_heads(heads, train, train_y, held, chunk_rows, device)
    val_top1, val_top5, _ = score_heads(heads, val, val_y, None, chunk_rows, device)
    chosen = min(range(len(points)), key=lambda g: (-held_top1[g], held_loss[g], g))
    grid = [{"lr": lr, "weight_decay": wd, "lr_scaled": lr * batch / 256, "holdout_top1": held_top1[g],
             "holdout_loss": held_loss[g], "val_top1": val_top1[g], "val_top5": val_top5[g]}
            for g, (lr, wd) in enumerate(points)]
    lr, wd = points[chosen]
    keep, phase, top1, top5, kept_batch = chosen, "grid", val_top1[chosen], val_top5[chosen], batch
    refit_epochs = 0
    if refit:
        kept_batch, refit_epochs = plan(train.rows)
        heads, losses, factors = train_heads(train, train_y, torch.arange(train.rows), [(lr, wd)], epochs=refit_epochs,
                                             batch=kept_batch, phase="refit", **common)
        (top1,), (top5,), _ = score_heads(heads, val, val_y, None, chunk_rows, device)
        keep, phase = 0, "refit"
    head = Heads(heads.weight[:, keep:keep + 1].cpu(), heads.bias[:, keep:keep + 1].cpu(), heads.mean.cpu(),
                 heads.var.cpu())
    history: list[dict[str, Any]] = [
        {"phase": phase, "epoch": e, "lr": lr * kept_batch / 256 * factors[e], "train_loss": float(losses[e, keep])}
        for e in range(len(factors))]
    args = {"protocol": "grid", "learning_rates": [float(v) for v in learning_rates],
            "weight_decays": [float(v) for v in weight_decays], "lr": lr, "weight_decay": wd,
            "lr_scaled": lr * kept_batch / 256, "epochs": grid_epochs, "batch_size": batch,
            "steps": (fit.numel() // batch) * grid_epochs, "min_steps": min_steps, "holdout": holdout,
            "fit_rows": fit.numel(), "holdout_rows": held.numel(), "refit": refit, "refit_epochs": refit_epochs,
            "refit_batch_size": kept_batch if refit else 0, "optimizer": "SGD", "schedule": "cosine",
            "momentum": momentum}
    return GridOutcome(head, history, grid, chosen, top1, top5, args)
