"""Feature sources for the evaluations (`evaluate.knn`, `probe.probe`): tensors or streamed blocks, their labels,
the check that train and val features come from the same embedding, and shuffled batches gathered from a source.

A *feature source* is a `torch.Tensor` (N, D), or any object with `rows: int`, `dim: int` and
`chunks(size) -> Iterator[Tensor]` yielding (<= size, D) float blocks in row order (what
`store.open_features` returns for a file or a shard directory). Labels travel separately as int64
tensors (`labels_of` takes them from a source that carries them, or says why it cannot).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from ..errors import MAEError, invalid_argument, short_list

COMPATIBILITY_KEYS = ("checkpoint", "layer", "pool", "transform")


@runtime_checkable
class FeatureSource(Protocol):
    """Rows of features read block by block, in row order."""

    rows: int
    dim: int

    def chunks(self, size: int) -> Iterator[torch.Tensor]: ...


class TensorSource:
    """A feature source over an in-memory (N, D) tensor (`as_source` makes one)."""

    labels: torch.Tensor | None = None
    classes: list[str] | None = None

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise invalid_argument("features", f"features must be a floating-point (N, D) tensor, got {tuple(tensor.shape)} "
                                   f"{tensor.dtype}; pass one row per sample")
        self.tensor = tensor
        self.rows, self.dim = tensor.shape
        self.meta: dict[str, object] = {}

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.rows, size):
            yield self.tensor[start:start + size]


def as_source(features: torch.Tensor | FeatureSource) -> FeatureSource:
    """A tensor wrapped as a `TensorSource`; a source returned as it is; anything else refused."""
    if isinstance(features, torch.Tensor):
        return TensorSource(features)
    if all(hasattr(features, name) for name in ("rows", "dim", "chunks")):
        return features
    raise invalid_argument("features", f"{type(features).__name__} is not a feature source; pass an (N, D) tensor or "
                           "an object with rows, dim and chunks(size)")


def iter_rows(source: FeatureSource, size: int) -> Iterator[torch.Tensor]:
    """The source's blocks, checked: each (<= size, D), and together exactly `rows` rows."""
    if size < 1:
        raise invalid_argument("chunk_rows", f"chunk_rows={size} must be at least 1; pass a positive number of rows")
    seen = 0
    for block in source.chunks(size):
        if block.ndim != 2 or block.shape[1] != source.dim or not 0 < block.shape[0] <= size:
            raise MAEError(f"the feature source gave a block of shape {tuple(block.shape)} for chunks of at most {size} "
                           f"rows of dimension {source.dim}; it is damaged, so write the features again")
        finite = torch.isfinite(block).all(dim=1)  # (n,)
        if not bool(finite.all()):
            row = seen + int((~finite).nonzero()[0])
            raise MAEError(f"the features hold NaN or infinite values (row {row} of {source.rows}"
                           f"{_name_of(source, row)}), which no accuracy can be computed on; embed the images again")
        seen += block.shape[0]
        yield block
    if seen != source.rows:
        raise MAEError(f"the feature source gave {seen} rows but says it has {source.rows}; it is damaged, so write "
                       "the features again")


def _name_of(source: object, row: int) -> str:
    names = getattr(source, "names", None)
    return f": {names[row]}" if isinstance(names, list) and row < len(names) else ""


def labels_of(features: object, which: str = "train") -> torch.Tensor:
    """The int64 labels a feature source carries (`labels`), or an error saying how to get some."""
    labels = getattr(features, "labels", None)
    if labels is None:
        raise invalid_argument(which, f"the {which} features have no labels; embed an ImageFolder-style tree "
                               "(root/CLASS/image) so that each row gets its class")
    return torch.as_tensor(labels, dtype=torch.int64)


def check_compatible(train_meta: Mapping[str, object], val_meta: Mapping[str, object],
                     train_classes: Sequence[str] | None = None, val_classes: Sequence[str] | None = None) -> None:
    """Refuse train and val features from a different checkpoint, layer, pool or transform, or labelled with other
    classes.

    A key recorded on neither side is fine; recorded on one side only, or with different values
    (compared as text), it is a mismatch. Class names (an ImageFolder tree's folders), when both sides have them,
    must be the same list: label 3 must be the same class on both sides (`check_same_classes`).
    """
    for key in COMPATIBILITY_KEYS:
        train_value, val_value = train_meta.get(key), val_meta.get(key)
        if train_value is None and val_value is None:
            continue
        if key == "checkpoint" and train_value is not None and val_value is not None and _same_file(train_value,
                                                                                                  val_value):
            continue
        if train_value is None or val_value is None or str(train_value) != str(val_value):
            shown = ["not recorded" if v is None else repr(str(v)) for v in (train_value, val_value)]
            raise invalid_argument("val", f"the train and val features differ in {key} (train {shown[0]}, val {shown[1]}); "
                                   "embed both with the same checkpoint, layer, pool and transform")
    check_same_classes(train_classes, val_classes)


def _same_file(a: object, b: object) -> bool:
    """Two recorded checkpoint paths name one file (given relative and absolute, or through a link)."""
    try:
        return os.path.samefile(str(a), str(b))
    except OSError:  # one is not here (embedded elsewhere): only the text can be compared
        return os.path.normpath(str(a)) == os.path.normpath(str(b))


def check_same_classes(train_classes: Sequence[str] | None, val_classes: Sequence[str] | None) -> None:
    """Refuse val features whose class names are not the training features' (in label order): their accuracy, and
    a per-class table under the training names, would be about other classes."""
    if train_classes is None or val_classes is None or list(train_classes) == list(val_classes):
        return
    train_classes, val_classes = list(train_classes), list(val_classes)
    differ = next((i for i, (a, b) in enumerate(zip(train_classes, val_classes)) if a != b),
                  min(len(train_classes), len(val_classes)))
    shown = [repr(c[differ]) if differ < len(c) else "none" for c in (train_classes, val_classes)]
    raise invalid_argument("val", f"the train and val features are labelled with other classes (label {differ}: train "
                           f"{shown[0]}, val {shown[1]}; {len(train_classes)} against {len(val_classes)} classes); embed "
                           "trees with the same class folders, so that each label means one class")


def check_labels(labels: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    """`labels` as an int64 (rows,) tensor of non-negative classes, else a refusal naming `name`."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise invalid_argument(name, f"{name} must hold integer classes, got {labels.dtype}; pass an int64 tensor")
    labels = labels.to(torch.int64).reshape(-1) if labels.ndim <= 1 else labels
    if labels.ndim != 1 or labels.numel() != rows:
        raise invalid_argument(name, f"{name} has shape {tuple(labels.shape)} but the features have {rows} rows; "
                               "pass one label per row")
    if rows and int(labels.min()) < 0:
        raise invalid_argument(name, f"{name} holds a negative class {int(labels.min())}; classes are 0, 1, 2, ...")
    return labels.cpu()


def named_classes(features: object, labels: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes the train features name (`classes`, from the folders of their tree), checked against
    the labels of each set (`{"train": ..., "val": ...}`): a label outside them refuses, naming the set (its value is
    the `num_classes` of `knn` and `probe`). None when the features name no classes."""
    classes = getattr(features, "classes", None)
    if not classes:
        return None
    for which, values in labels.items():
        largest = int(values.max()) if values.numel() else -1
        if largest >= len(classes):
            raise invalid_argument(which, f"the {which} features hold class {largest} but the train features name "
                                   f"{len(classes)} classes ({short_list(list(classes))}); embed both from trees with "
                                   "the same class folders")
    return len(classes)


def resolve_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    """`num_classes`, or one more than the largest label; refuses a label outside it."""
    largest = max((int(x.max()) for x in labels if x.numel()), default=-1)
    if num_classes is None:
        return max(largest + 1, 1)
    if num_classes < 1 or largest >= num_classes:
        raise invalid_argument("num_classes", f"num_classes={num_classes} does not cover the largest label {largest}; "
                               f"pass at least {largest + 1} or leave it out")
    return num_classes


def batches_in_order(source: FeatureSource, order: torch.Tensor, batch: int, budget_rows: int,
                     chunk_rows: int) -> Iterator[torch.Tensor]:
    """The rows `order[i * batch:(i + 1) * batch]` for each whole batch i, in order (`order` may be any subset of
    the rows, in any order; a last incomplete batch is dropped).

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
