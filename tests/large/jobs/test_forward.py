"""jobs.forward: reconstruct_files order and masks, sweeps, failures; and the losses built on it (jobs.loss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import ImageFailure
from mae.large.errors import DeviceError, MAEError
from mae.large.jobs.forward import ImageResult, mask_noise, reconstruct_files
from mae.large.jobs.loss import image_loss, noise_loss
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


# ---- results that are not finite are failures, never results -----------------------------------------
def _overflowing(monkeypatch, name: str) -> None:
    """The image file `name` loads as values of 1e38: finite, so the model accepts it, but they overflow in it."""
    from mae.large.data import images as image_module

    original = image_module.load_image  # the batches of every job load through mae.large.data.images

    def load(path, **kwargs):
        image = original(path, **kwargs)
        return torch.full_like(image, 1e38) if Path(path).name == name else image

    monkeypatch.setattr(image_module, "load_image", load)


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("overlap", [True, False])
def test_an_image_whose_reconstruction_is_not_finite_is_a_failure(tmp_path: Path, monkeypatch, batch_size: int,
                                                                    overlap: bool) -> None:
    paths = _images(tmp_path, 3)
    reference = [i.loss for i in reconstruct_files(small_model(), [paths[0], paths[2]], batch_size=1)]
    _overflowing(monkeypatch, "im1.png")
    items = list(reconstruct_files(small_model(), paths, batch_size=batch_size, overlap=overlap))
    assert [type(i) for i in items] == [ImageResult, ImageFailure, ImageResult]
    reason = items[1].reason
    assert items[1].path == paths[1] and str(paths[1]) in reason and "not finite" in reason, reason
    assert "\n" not in reason
    assert [items[0].loss, items[2].loss] == pytest.approx(reference, rel=1e-6)
    assert all(torch.isfinite(i.pred).all() for i in (items[0], items[2]))


def test_nonfinite_weights_make_every_image_a_failure(tmp_path: Path) -> None:
    model = small_model()
    with torch.no_grad():
        model.decoder_pred.bias[3] = float("nan")  # as a damaged file loaded with allow_nonfinite=True
    items = list(reconstruct_files(model, _images(tmp_path, 2), batch_size=2))
    assert all(isinstance(i, ImageFailure) for i in items)
    # one output of decoder_pred per patch: 16 patches x 192 values per patch
    assert "16 of its 3072 predicted values are NaN or infinite" in items[0].reason


def test_a_low_precision_failure_suggests_float32(tmp_path: Path, monkeypatch) -> None:
    _overflowing(monkeypatch, "im0.png")
    [item] = list(reconstruct_files(small_model(), _images(tmp_path, 1), dtype=torch.bfloat16))
    assert isinstance(item, ImageFailure) and "dtype=torch.float32" in item.reason


def test_image_loss_returns_nonfinite_images_among_the_failures(tmp_path: Path, monkeypatch) -> None:
    paths = _images(tmp_path, 3)
    _overflowing(monkeypatch, "im2.png")
    result, failures = image_loss(small_model(), "full", paths, batch_size=2)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert [f.path for f in failures] == [paths[2]] and "not finite" in failures[0].reason


def test_image_loss_with_no_finite_loss_raises(tmp_path: Path, monkeypatch) -> None:
    paths = _images(tmp_path, 1)
    _overflowing(monkeypatch, "im0.png")
    with pytest.raises(MAEError, match="no image gave a loss.*not finite"):
        image_loss(small_model(), "full", paths)


def test_noise_loss_refuses_a_loss_that_is_not_finite() -> None:
    model = small_model()
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[0, 0] = float("inf")
    with pytest.raises(MAEError, match="loss on noise is not finite for 3 of 3 samples") as info:
        noise_loss(model, "full", samples=3)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_reconstruct_files_on_cuda_without_cuda_is_a_device_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="no CUDA device is available") as info:
        reconstruct_files(small_model(), _images(tmp_path, 1), device="cuda")
    assert info.value.argument == "device"


# ---- sweeps and chosen masks ------------------------------------------------------------------------------
def test_a_sweep_equals_separate_runs_and_its_masks_are_nested(tmp_path: Path) -> None:
    from mae.large.jobs.forward import maskings_for, sweep_files

    model = small_model()
    paths = _images(tmp_path, 3)
    ratios = [0.25, 0.5, 0.75]
    swept = list(sweep_files(model, paths, maskings_for(model, ratios=ratios, seeds=[7]), batch_size=2))
    for k, ratio in enumerate(ratios):
        alone = list(reconstruct_files(model, paths, mask_ratio=ratio, seed=7, batch_size=2))
        for s, a in zip(swept, alone):
            assert torch.equal(s.preds[k], a.pred) and torch.equal(s.masks[k], a.mask) and s.losses[k] == a.loss
    for s in swept:
        for lower, higher in zip(s.masks, s.masks[1:]):
            assert bool((higher >= lower).all())


def test_maskings_refuse_what_cannot_be_swept() -> None:
    from mae.large.jobs.forward import maskings_for
    from mae.large.models.masks import parse_mask

    model = small_model()
    with pytest.raises(ValueError, match="fixed-shape"):
        maskings_for(model, ratios=[0.25, 0.5], mask=parse_mask("right"))
    with pytest.raises(ValueError, match="own ratio"):
        maskings_for(model, ratios=[0.25, 0.5], mask=parse_mask("block:0.5"))
    with pytest.raises(ValueError, match="not both"):
        maskings_for(model, ratios=[0.25, 0.5], seeds=[1, 2])
    seeds = maskings_for(model, ratios=[0.5], seeds=[0, 1, 2])
    assert [m.label for m in seeds] == ["seed 0", "seed 1", "seed 2"]
    blocks = maskings_for(model, ratios=[0.25, 0.5], mask=parse_mask("block"))
    assert [int(m.mask.sum()) for m in blocks] == [4, 8]


def test_reconstruct_files_with_a_chosen_mask(tmp_path: Path) -> None:
    from mae.large.models.masks import half_mask, parse_mask

    model = small_model()
    path = _images(tmp_path, 1)[0]
    result = next(iter(reconstruct_files(model, [path], mask=parse_mask("left"))))
    assert torch.equal(result.mask, half_mask((4, 4), "left").float())
