"""What features are worth: cosine k-NN, on cached features, in bounded memory (the linear
probe is `probe.py`).

Both take feature sources (`source.py`: an (N, D) tensor or an object streaming (<= size, D)
blocks, as `store.open_features` returns) and labels as int64 tensors; `check_compatible` refuses
train and val features that do not come from the same checkpoint, layer, pool and transform.

`knn` never builds the (Nval, Ntrain) similarity matrix: it keeps a running top-k per validation row while
the training set streams past once per block of `val_block_rows` validation rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import invalid_argument
from ..utils.device import resolve_device
from .source import (
    FeatureSource,
    as_source,
    check_labels,
    check_same_classes,
    iter_rows,
    resolve_classes,
)

WEIGHTINGS = ("softmax", "uniform")
_BLOCK_ELEMENTS = 1 << 24  # a similarity block of val rows x train rows holds at most max(this, chunk_rows ** 2)


@dataclass(frozen=True)
class KnnResult:
    """Accuracies in percent; `per_class` and `counts` are keyed by the classes present in the val labels."""

    top1: float
    top5: float
    per_class: dict[int, float]
    predictions: torch.Tensor  # (Nval,) int64
    counts: dict[int, int] = field(default_factory=dict)  # val rows per class
    k: int = 20


def _topk_first(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of each row, ties broken towards the lower column, ordered by (value desc, column asc).

    `torch.topk` picks among equal values arbitrarily; a row whose (k+1)-th value equals its k-th is
    redone exactly, so the choice never depends on how the training set was cut into chunks.
    """
    if k == sims.shape[1]:
        values, index = sims, torch.arange(k, device=sims.device).expand_as(sims)
        ambiguous = index.new_empty(0)
    else:
        values, index = sims.topk(k + 1, dim=1)
        ambiguous = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        values, index = values[:, :k], index[:, :k].contiguous()
    if ambiguous.numel():
        sub, cut = sims[ambiguous], values[ambiguous, k - 1:]
        above, tied = sub > cut, sub == cut
        room = k - above.sum(1, keepdim=True)
        take = above | (tied & (tied.cumsum(1) <= room))
        index[ambiguous] = take.nonzero()[:, 1].view(-1, k)
    index = index.sort(1).values
    values = sims.gather(1, index)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, order), index.gather(1, order)


def _merge(best_v: torch.Tensor, best_i: torch.Tensor, new_v: torch.Tensor, new_i: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of two ordered candidate lists; every index in `new_i` is larger than those in `best_i`,
    so a stable sort keeps equal values in ascending index order."""
    values, index = torch.cat([best_v, new_v], 1), torch.cat([best_i, new_i], 1)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return values.gather(1, order), index.gather(1, order)


def knn(
    train: torch.Tensor | FeatureSource, train_labels: torch.Tensor, val: torch.Tensor | FeatureSource,
    val_labels: torch.Tensor, *,
    k: int = 20,
    temperature: float = 0.07,
    weighting: str = "softmax",
    num_classes: int | None = None,
    chunk_rows: int = 4096,
    val_block_rows: int = 65536,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> KnnResult:
    """Cosine k-NN classification of `val` by `train`, on L2-normalised features.

    `weighting="softmax"` is the weighted vote of Wu et al. 2018 as DINO's `eval_knn.py` computes it: each
    of the k nearest training rows votes for its class with weight exp(similarity / temperature).
    `"uniform"` gives each neighbour one vote. Ties: among equally similar training rows the earlier row
    is the neighbour; among classes with equal votes the lower class index ranks first (so a uniform
    vote tie goes to the smallest class, as scikit-learn's does). Top-5 is the true class among the first
    min(5, k) classes of the vote ranking.

    Memory: the training set streams in chunks of `chunk_rows`; `val_block_rows` validation rows are held
    at once (the training set streams once per such block) with their running top-k; a similarity block
    holds at most max(chunk_rows ** 2, 2 ** 24) values (64 MiB in float32 with the default 4096).

    Args:
        train, val: the features, an (N, D) tensor or a feature source (`store.open_features`); the same D.
        train_labels, val_labels: one class per row, non-negative integers (int64 tensors).
        k: how many nearest training rows vote, from 1 to the number of training rows.
        temperature: the softmax vote's temperature, > 0 (0.07 as DINO's).
        weighting: `softmax` or `uniform` (above).
        num_classes: the number of classes (default one more than the largest label); must cover every label.
        chunk_rows: training rows per streamed chunk (at least 1).
        val_block_rows: validation rows held at once (at least 1).
        dtype: the precision of the computation (float32; float64 for reference comparisons).
        device: where it is computed (`resolve_device`).

    Returns a `KnnResult` (top-1 / top-5 over the val rows, per-class accuracy, the predictions)."""
    train, val = as_source(train), as_source(val)
    check_same_classes(getattr(train, "classes", None), getattr(val, "classes", None))
    if train.dim != val.dim:
        raise invalid_argument("val", f"the train features have {train.dim} dimensions and the val features {val.dim}; "
                               "embed both with the same model and pool")
    if weighting not in WEIGHTINGS:
        raise invalid_argument("weighting", f"weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}; pick one")
    if not 1 <= k <= train.rows:
        raise invalid_argument("k", f"k={k} must be between 1 and the {train.rows} training rows; pass a smaller k")
    if not temperature > 0:
        raise invalid_argument("temperature", f"temperature={temperature} must be > 0; the usual value is 0.07")
    if val_block_rows < 1:
        raise invalid_argument("val_block_rows", f"val_block_rows={val_block_rows} must be at least 1; pass a positive number")
    train_y = check_labels(train_labels, train.rows, "train_labels")
    val_y = check_labels(val_labels, val.rows, "val_labels")
    classes = resolve_classes(num_classes, train_y, val_y)
    device = resolve_device(device)
    train_y_dev = train_y.to(device)
    ranked = min(5, k, classes)
    rows_per_block = max(chunk_rows, _BLOCK_ELEMENTS // chunk_rows)

    rankings = []
    for block in iter_rows(val, val_block_rows):
        queries = F.normalize(block.to(device, dtype), dim=1)
        best_v = torch.empty(queries.shape[0], 0, dtype=dtype, device=device)
        best_i = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=device)
        offset = 0
        for chunk in iter_rows(train, chunk_rows):
            keys = F.normalize(chunk.to(device, dtype), dim=1)
            take = min(k, keys.shape[0])
            parts_v, parts_i = [], []
            for start in range(0, queries.shape[0], rows_per_block):
                sims = queries[start:start + rows_per_block] @ keys.T
                values, index = _topk_first(sims, take)
                parts_v.append(values)
                parts_i.append(index + offset)
            best_v, best_i = _merge(best_v, best_i, torch.cat(parts_v), torch.cat(parts_i), k)
            offset += keys.shape[0]
        weights = (best_v / temperature).exp() if weighting == "softmax" else torch.ones_like(best_v)
        neighbour_y = train_y_dev[best_i]
        votes = torch.zeros(queries.shape[0], classes, dtype=dtype, device=device)
        for j in range(k):  # one vote per row at a time: a fixed summation order on every device
            votes.scatter_add_(1, neighbour_y[:, j:j + 1], weights[:, j:j + 1])
        rankings.append(votes.sort(dim=1, descending=True, stable=True).indices[:, :ranked].cpu())

    ranking = torch.cat(rankings) if rankings else torch.empty(0, ranked, dtype=torch.int64)
    predictions = ranking[:, 0].contiguous() if ranking.shape[1] else torch.empty(0, dtype=torch.int64)
    hit1 = predictions == val_y
    hit5 = (ranking == val_y[:, None]).any(1)
    per_class, counts = {}, {}
    for c in val_y.unique().tolist():
        rows = val_y == c
        counts[c] = int(rows.sum())
        per_class[c] = 100.0 * float(hit1[rows].double().mean())
    total = max(val.rows, 1)
    return KnnResult(top1=100.0 * float(hit1.sum()) / total, top5=100.0 * float(hit5.sum()) / total,
                     per_class=per_class, predictions=predictions, counts=counts, k=k)


__all__ = ["KnnResult", "knn"]
