"""`reconstruct_files` computes the next batch in a worker thread while the caller draws (overlap=True)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import ImageFailure
from mae.large.errors import MAEError
from mae.large.jobs.forward import _run_ahead, reconstruct_files
from tests.helpers import small_model


@pytest.fixture
def paths(tmp_path):
    rng = np.random.default_rng(0)
    found = []
    for i in range(7):
        path = tmp_path / f"img{i}.png"
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(path)
        found.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    return found[:3] + [broken] + found[3:]


def _workers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "mae-reconstruct-ahead"]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_overlap_gives_the_same_results_in_the_same_order(paths, batch_size: int) -> None:
    model = small_model()
    serial = list(reconstruct_files(model, paths, batch_size=batch_size, overlap=False))
    ahead = list(reconstruct_files(model, paths, batch_size=batch_size))
    assert [type(r) for r in ahead] == [type(r) for r in serial]
    assert [r.path for r in ahead] == [r.path for r in serial] == list(paths)
    assert isinstance(ahead[3], ImageFailure)
    for a, b in zip(serial, ahead):
        if not isinstance(a, ImageFailure):
            assert torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask) and a.loss == b.loss
    assert not _workers()


def test_stopping_early_ends_the_worker(paths) -> None:
    results = reconstruct_files(small_model(), paths, batch_size=2)
    next(results)
    results.close()
    assert not _workers()


def test_errors_reach_the_caller() -> None:
    with pytest.raises(MAEError, match="batch size"):
        list(reconstruct_files(small_model(), [], batch_size=0))

    def failing():
        yield 1
        raise RuntimeError("boom")

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for item in _run_ahead(failing(), depth=4):
            got.append(item)
    assert got == [1]
    assert not _workers()
