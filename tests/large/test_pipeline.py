"""The jobs behind the commands: reconstruct_files order and masks, noise_loss, device choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.errors import MAEError
from mae.large.image import ImageFailure
from mae.large.pipeline import mask_noise, noise_loss, reconstruct_files, resolve_device
from tests.helpers import small_model


def _images(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        arr = (np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
        path = folder / f"im{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_results_and_failures_come_in_input_order(tmp_path: Path, batch_size: int) -> None:
    good = _images(tmp_path, 4)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    paths = [good[0], good[1], bad, good[2], good[3]]
    items = list(reconstruct_files(small_model(), paths, batch_size=batch_size))
    assert [Path(i.path).name for i in items] == [p.name for p in paths]
    assert isinstance(items[2], ImageFailure)
    losses = [i.loss for i in items if not isinstance(i, ImageFailure)]
    reference = [i.loss for i in reconstruct_files(small_model(), good, batch_size=1)]
    assert losses == pytest.approx(reference, rel=1e-6)


def test_every_image_gets_the_seed_mask(tmp_path: Path) -> None:
    items = list(reconstruct_files(small_model(), _images(tmp_path, 3), seed=7, batch_size=3))
    torch.manual_seed(7)
    official_noise = torch.rand(1, 16)  # what the official demo draws after torch.manual_seed(7)
    assert torch.equal(mask_noise(7, 16)[0], official_noise[0])
    assert all(torch.equal(i.mask, items[0].mask) for i in items)
    assert int(items[0].mask.sum()) == 12


def _official_demo_mask(seed: int, num_patches: int, mask_ratio: float) -> torch.Tensor:
    """The mask the official demo gets: torch.manual_seed(seed), then random_masking's torch.rand(1, L);
    the len_keep patches with the smallest noise are visible (0), the rest removed (1). Built by hand."""
    torch.manual_seed(seed)
    noise = torch.rand(1, num_patches)[0]
    len_keep = int(num_patches * (1 - mask_ratio))
    mask = torch.ones(num_patches)
    mask[noise.sort().indices[:len_keep]] = 0
    return mask


@pytest.mark.parametrize("batch_size", [1, 2])
def test_each_images_mask_is_its_seeds_official_mask(tmp_path: Path, batch_size: int, rng_state) -> None:
    """Every image gets the mask the official demo draws after torch.manual_seed(seed), whichever the seed,
    the batch size or the image's place in the batch; another seed, another mask."""
    paths = _images(tmp_path, 3)
    model = small_model()
    length = model.config.num_patches
    masks = {}
    for seed in (0, 7, 123):
        items = list(reconstruct_files(model, paths, seed=seed, mask_ratio=0.75, batch_size=batch_size))
        expected = _official_demo_mask(seed, length, 0.75)
        assert int(expected.sum()) == 12
        for item in items:
            assert torch.equal(item.mask, expected), (seed, item.path.name, item.mask, expected)
        masks[seed] = expected
    assert len({tuple(m.tolist()) for m in masks.values()}) == 3  # the seed decides the mask


def test_noise_loss_is_seeded_and_batch_independent() -> None:
    model = small_model()
    a = noise_loss(model, "full", samples=4, seed=1, batch_size=4)
    b = noise_loss(model, "full", samples=4, seed=1, batch_size=1)
    c = noise_loss(model, "full", samples=4, seed=2)
    assert a.losses == pytest.approx(b.losses, rel=1e-6) and a.losses != c.losses
    assert a.expected == 1.0 and a.std > 0


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(MAEError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.parametrize("name", ["cuda:abc", "meta", "gpu"])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(MAEError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_index_without_cuda() -> None:
    with pytest.raises(MAEError, match="no CUDA device"):
        resolve_device("cuda:0")
