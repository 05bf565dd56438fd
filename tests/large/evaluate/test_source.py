"""evaluate.source: feature sources, their checked blocks, labels, and the train / val compatibility check."""

from __future__ import annotations

import pytest
import torch

from mae.large.errors import InvalidArgumentError, MAEError
from mae.large.evaluate.source import (
    TensorSource,
    as_source,
    check_compatible,
    check_labels,
    iter_rows,
    labels_of,
    resolve_classes,
)


class _Blocks:
    """A streamed source whose blocks can be made wrong."""

    def __init__(self, blocks: list[torch.Tensor], rows: int, dim: int) -> None:
        self.blocks, self.rows, self.dim = blocks, rows, dim

    def chunks(self, size: int):
        yield from self.blocks


def test_a_tensor_is_a_source_read_in_order() -> None:
    x = torch.arange(20.0).reshape(10, 2)
    source = as_source(x)
    assert isinstance(source, TensorSource) and (source.rows, source.dim) == (10, 2)
    assert torch.equal(torch.cat(list(iter_rows(source, 4))), x)
    assert [b.shape[0] for b in iter_rows(source, 4)] == [4, 4, 2]


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(3, 2, dtype=torch.int64)])
def test_a_tensor_that_is_not_float_rows_is_refused(bad: torch.Tensor) -> None:
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        as_source(bad)


def test_an_object_without_the_interface_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="not a feature source"):
        as_source([1, 2, 3])


def test_a_streamed_source_is_checked_block_by_block() -> None:
    too_wide = _Blocks([torch.zeros(2, 3)], rows=2, dim=2)
    with pytest.raises(MAEError, match="block of shape"):
        list(iter_rows(too_wide, 4))
    too_few = _Blocks([torch.zeros(2, 2)], rows=3, dim=2)
    with pytest.raises(MAEError, match="gave 2 rows but says it has 3"):
        list(iter_rows(too_few, 4))
    with pytest.raises(InvalidArgumentError, match="at least 1"):
        list(iter_rows(too_few, 0))


def test_labels_are_int64_one_per_row_and_never_negative() -> None:
    assert check_labels(torch.tensor([0, 2, 1], dtype=torch.int32), 3, "labels").dtype == torch.int64
    with pytest.raises(InvalidArgumentError, match="integer classes"):
        check_labels(torch.tensor([0.0, 1.0]), 2, "labels")
    with pytest.raises(InvalidArgumentError, match="one label per row"):
        check_labels(torch.tensor([0, 1]), 3, "labels")
    with pytest.raises(InvalidArgumentError, match="negative class -1"):
        check_labels(torch.tensor([0, -1]), 2, "labels")
    with pytest.raises(InvalidArgumentError, match="no labels"):
        labels_of(TensorSource(torch.zeros(2, 2)))


def test_classes_cover_every_label() -> None:
    assert resolve_classes(None, torch.tensor([0, 4]), torch.tensor([2])) == 5
    assert resolve_classes(7, torch.tensor([0, 4])) == 7
    with pytest.raises(InvalidArgumentError, match="does not cover the largest label 4"):
        resolve_classes(4, torch.tensor([0, 4]))


def test_train_and_val_must_share_checkpoint_layer_pool_and_transform() -> None:
    meta = {"checkpoint": "a.pth", "layer": "23", "pool": "cls", "transform": "eval"}
    check_compatible(meta, dict(meta))
    check_compatible({}, {})  # recorded on neither side
    for key in ("checkpoint", "layer", "pool", "transform"):
        with pytest.raises(InvalidArgumentError, match=f"differ in {key}"):
            check_compatible(meta, {**meta, key: "other"})
    with pytest.raises(InvalidArgumentError, match="not recorded"):
        check_compatible(meta, {k: v for k, v in meta.items() if k != "pool"})
