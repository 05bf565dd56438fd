"""The linear probe as `mae/large/evaluate/probe.py` had it at commit 0e3da7d, before the grid protocol: kept
verbatim (less `save_probe`, imports made absolute) as the code path `probe(protocol="official")` must reproduce
exactly. Not part of the library."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mae.large.errors import invalid_argument
from mae.large.evaluate.source import FeatureSource, TensorSource, as_source, check_labels, iter_rows, resolve_classes
from mae.large.utils.device import resolve_device
from mae.large.utils.optim import LARS, cosine_lr, set_lr

Epoch = dict[str, float]


@dataclass(frozen=True)
class ProbeResult:
    """The trained head (official key names), one dict per epoch (epoch, lr of its last step, mean train
    loss, val top1 / top5 in percent) and the settings it ran with (`args`, plain values)."""

    head_state: dict[str, torch.Tensor]
    history: list[Epoch]
    args: dict[str, object]

    @property
    def top1(self) -> float:
        return self.history[-1]["top1"] if self.history else float("nan")

    @property
    def top5(self) -> float:
        return self.history[-1]["top5"] if self.history else float("nan")


def build_head(dim: int, classes: int, generator: torch.Generator | None = None) -> torch.nn.Sequential:
    """The official probe head: BatchNorm1d without affine parameters, then a Linear (trunc-normal 0.01, bias 0)."""
    linear = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        torch.nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
        linear.bias.zero_()
    return torch.nn.Sequential(torch.nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def _batches(source: FeatureSource, order: torch.Tensor, batch: int, budget_rows: int,
             chunk_rows: int) -> Iterator[torch.Tensor]:
    """The rows `order[i * batch:(i + 1) * batch]` for each i, in order.

    A `TensorSource` is indexed. Anything else is gathered a group of batches at a time: one sequential pass
    over the source per `budget_rows` rows picks the rows of the group, so the shuffle is global and exact
    while memory holds at most one group.
    """
    steps = order.numel() // batch
    if isinstance(source, TensorSource):
        for step in range(steps):
            yield source.tensor[order[step * batch:(step + 1) * batch]]
        return
    group = max(1, budget_rows // batch)
    slot = torch.full((source.rows,), -1, dtype=torch.int64)
    for first in range(0, steps, group):
        wanted = order[first * batch:min(first + group, steps) * batch]
        slot.fill_(-1)
        slot[wanted] = torch.arange(wanted.numel())
        rows = torch.empty(wanted.numel(), source.dim, dtype=torch.float32)
        offset = 0
        for block in iter_rows(source, chunk_rows):
            where = slot[offset:offset + block.shape[0]]
            hit = where >= 0
            rows[where[hit]] = block[hit].float()
            offset += block.shape[0]
        for step in range(wanted.numel() // batch):
            yield rows[step * batch:(step + 1) * batch]


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


def probe(
    train: torch.Tensor | FeatureSource,
    train_labels: torch.Tensor,
    val: torch.Tensor | FeatureSource,
    val_labels: torch.Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 16384,
    blr: float = 0.1,
    weight_decay: float = 0.0,
    warmup_epochs: float = 10,
    momentum: float = 0.9,
    min_lr: float = 0.0,
    seed: int = 0,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    memory_bytes: int = 4 << 30,
    chunk_rows: int = 8192,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> ProbeResult:
    """Train the official linear-probe head on cached features; evaluate on `val` after every epoch.

    The official recipe trains on augmented images through the frozen encoder; cached features (one
    embedding per image, evaluation transform) are the standard fast approximation of it. Defaults are
    the official ones for ViT-L (FINETUNE.md: 50 epochs suffice, 76.0% top-1 on ImageNet with augmentation).

    With `warmup_epochs` >= `epochs` the learning rate only rises, as the official schedule would do.
    Deterministic given `seed` (a `torch.Generator` draws the head init and each epoch's shuffle). A
    tensor `train` is indexed; another source is materialised when it fits in `memory_bytes`, else each
    epoch gathers its shuffled batches in sequential passes over the source, `memory_bytes` at a time.

    Args:
        train, val: the features, an (N, D) tensor or a feature source (`store.open_features`); the same D, and at
            least 2 training rows (batch norm).
        train_labels, val_labels: one class per row, non-negative integers (int64 tensors).
        epochs: training epochs, at least 1 (50: the official ViT-L probe).
        batch_size: rows per step, at least 2, capped at the training rows; lr = blr x this batch / 256.
        blr: the base learning rate, > 0 (official 0.1).
        weight_decay: LARS weight decay (official 0; never applied to the bias).
        warmup_epochs: epochs of linear warmup before the half-cycle cosine, >= 0 (official 10; may be fractional).
        momentum: LARS momentum.
        min_lr: the learning rate the cosine ends at.
        seed: draws the head's init and each epoch's shuffle.
        num_classes: the head's classes (default one more than the largest label); must cover every label.
        device: where the head trains (`resolve_device`).
        memory_bytes: how much float32 training data may be held at once (above).
        chunk_rows: rows per block read from a source (the val features are always read in such blocks).
        on_epoch: called with each epoch's record (epoch, lr, train_loss, top1, top5) as soon as it is done.

    Returns a `ProbeResult`: the head in official key names, the per-epoch history and the settings."""
    train, val = as_source(train), as_source(val)
    if train.dim != val.dim:
        raise invalid_argument("val", f"the train features have {train.dim} dimensions and the val features {val.dim}; "
                               "embed both with the same model and pool")
    for name, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 2), ("chunk_rows", chunk_rows, 1)):
        if value < least:
            raise invalid_argument(name, f"{name}={value} must be at least {least}; pass a larger number")
    if not warmup_epochs >= 0:
        raise invalid_argument("warmup_epochs", f"warmup_epochs={warmup_epochs} must be >= 0; the official value is 10")
    if not blr > 0:
        raise invalid_argument("blr", f"blr={blr} must be > 0; the official value is 0.1")
    if train.rows < 2:
        raise invalid_argument("train", f"the probe needs at least 2 training rows (batch norm), got {train.rows}")
    train_y = check_labels(train_labels, train.rows, "train_labels")
    val_y = check_labels(val_labels, val.rows, "val_labels")
    classes = resolve_classes(num_classes, train_y, val_y)
    device = resolve_device(device)

    batch = min(batch_size, train.rows)
    steps = train.rows // batch
    lr = blr * batch / 256
    budget_rows = max(batch, memory_bytes // (4 * train.dim))
    if not isinstance(train, TensorSource) and train.rows <= budget_rows:
        train = TensorSource(torch.cat([b.float() for b in iter_rows(train, chunk_rows)]))

    generator = torch.Generator().manual_seed(seed)
    head = build_head(train.dim, classes, generator).to(device)
    optimizer = LARS(head.parameters(), lr=lr, weight_decay=weight_decay, momentum=momentum)
    history: list[Epoch] = []
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(train.rows, generator=generator)
        losses = torch.zeros((), dtype=torch.float64, device=device)
        step_lr = 0.0
        for step, rows in enumerate(_batches(train, order, batch, budget_rows, chunk_rows)):
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
    args = {"epochs": epochs, "batch_size": batch, "blr": blr, "lr": lr, "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs, "min_lr": min_lr, "momentum": momentum, "seed": seed,
            "num_classes": classes, "dim": train.dim, "train_rows": train.rows, "steps_per_epoch": steps,
            "optimizer": "LARS", "features": "cached"}
    return ProbeResult(head_state=state, history=history, args=args)
