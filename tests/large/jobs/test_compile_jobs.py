"""The jobs' `compile=True`: the same rows as eager to float32 rounding (1e-5 relative, tests/large/models/test_compile.py
says why), a graph per block shape for a whole run (short batches padded), the compile time said.

Each job compiles its own copy of the blocks' function (`utils.compile.own_copy`), so the graphs a job makes are
counted exactly whatever ran before; inductor's cache of generated code makes the repeats cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.evaluate.features import FeatureResult, classifier_for_pool, extract_features
from mae.large.jobs.forward import ImageResult, reconstruct_files
from mae.large.jobs.loss import loss, noise_loss
from mae.large.jobs.run import Events
from mae.large.models.layers import transformer_blocks
from mae.large.models.masks import parse_mask
from mae.large.models.vit import VisionTransformer
from mae.large.utils.compile import CompileWatch
from tests.helpers import relative_error, small_config, small_model

BATCH = 2


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(3):  # 3 images in batches of 2: the last batch is short, padded when compiled
        arr = (np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
        paths.append(folder / f"im{i}.png")
    return paths


def test_noise_loss_compiled_is_one_graph_and_equals_eager(model) -> None:
    eager = noise_loss(model, "random-init", samples=5, batch_size=BATCH)
    watch = CompileWatch()
    compiled = noise_loss(model, "random-init", samples=5, batch_size=BATCH, compile=True)
    watch.poll()
    assert watch.total.graphs == 2  # encoder and decoder block; the short last batch (5 in 2s) is padded, no new graph
    assert len(compiled.losses) == 5
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)


@pytest.mark.parametrize("mask", ["random", "patches:0,1,2,3,4,5,6,7,8,9,10,11"])
def test_reconstructions_compiled_equal_eager(model, photos, mask: str) -> None:
    """A random mask, and a chosen one: same masks, same predictions; 3 images in batches of 2, one graph per block."""
    spec = None if mask == "random" else parse_mask(mask)
    eager = list(reconstruct_files(model, photos, batch_size=BATCH, mask=spec))
    watch = CompileWatch()
    compiled = list(reconstruct_files(model, photos, batch_size=BATCH, mask=spec, compile=True))
    watch.poll()
    assert watch.total.graphs == 2  # the encoder's and the decoder's block: the short last batch is padded
    assert all(isinstance(r, ImageResult) for r in eager + compiled)
    assert [r.path for r in compiled] == photos
    for a, b in zip(compiled, eager):
        assert torch.equal(a.mask, b.mask)
        assert relative_error(a.pred, b.pred) <= 1e-5
        assert a.loss == pytest.approx(b.loss, rel=1e-5)


def test_the_loss_job_says_what_compiling_cost(model) -> None:
    notes: list[str] = []
    run = loss(None, model, samples=2, batch_size=BATCH, compile=True, events=Events(note=notes.append))
    assert len(run.result.losses) == 2
    compiled = [n for n in notes if n.startswith("torch.compile:")]
    assert len(compiled) == 1 and "the masked forward pass compiled in" in compiled[0] and "(2 graphs;" in compiled[0]


def test_features_compiled_equal_eager(photos) -> None:
    torch.manual_seed(0)
    encoder = VisionTransformer(classifier_for_pool("cls", _vit())).eval()
    eager = list(extract_features(encoder, photos, batch_size=BATCH, crop="resize"))
    watch = CompileWatch()
    compiled = list(extract_features(encoder, photos, batch_size=BATCH, crop="resize", compile=True))
    assert watch.poll().graphs == 1  # one block shape, the short last batch padded
    assert all(b.compiled_forward is None for b in transformer_blocks(encoder))  # undone after the run
    assert all(isinstance(r, FeatureResult) for r in eager + compiled)
    for a, b in zip(compiled, eager):
        assert a.index == b.index and relative_error(a.vector, b.vector) <= 1e-5


def _vit():
    from mae.large.models.vit import ViTConfig

    return ViTConfig.from_mae(small_config())


def test_a_compile_is_noted_as_it_happens_and_only_then() -> None:
    from mae.large.jobs.run import noting_compile

    def double(x: torch.Tensor) -> torch.Tensor:  # a function of its own: nothing compiled it before
        return x * 2

    run = torch.compile(double, backend="eager", fullgraph=True, dynamic=False)
    notes: list[str] = []
    items = noting_compile((run(torch.ones(n)) for n in (3, 3, 4)), Events(note=notes.append), "double")
    assert [len(x) for x in items] == [3, 3, 4]
    assert len(notes) == 2 and all(n.startswith("torch.compile: double compiled in") for n in notes)  # shapes 3, 4
    quiet: list[str] = []
    list(noting_compile((run(torch.ones(n)) for n in (5,)), Events(note=quiet.append), "double", enabled=False))
    assert quiet == []
