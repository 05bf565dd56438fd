"""Mask generators: ratio, shape, determinism, geometry on non-square inputs, the mini-syntax."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.models.masks import (
    block_mask,
    box_mask,
    build_mask,
    center_mask,
    check_mask,
    file_mask,
    grid_mask,
    half_mask,
    nested_masks,
    noise_for_mask,
    parse_mask,
    patches_mask,
    random_mask,
)


def test_random_is_the_official_rule() -> None:
    grid, seed = (14, 14), 2
    noise = torch.rand(1, 196, generator=torch.Generator().manual_seed(seed))[0]
    keep = set(torch.argsort(noise)[:49].tolist())
    mask = random_mask(grid, 0.75, seed)
    assert set(torch.nonzero(~mask).flatten().tolist()) == keep and int(mask.sum()) == 147
    assert torch.equal(mask, random_mask(grid, 0.75, seed)) and not torch.equal(mask, random_mask(grid, 0.75, 3))


@pytest.mark.parametrize(("grid", "ratio"), [((14, 14), 0.75), ((14, 14), 0.4), ((10, 15), 0.6), ((4, 4), 0.5)])
def test_block_reaches_exactly_the_target_and_is_blocky(grid, ratio) -> None:
    length = grid[0] * grid[1]
    for seed in range(5):
        mask = block_mask(grid, ratio, seed)
        assert mask.shape == (length,) and int(mask.sum()) == round(ratio * length)
        assert torch.equal(mask, block_mask(grid, ratio, seed))
    # Blocks: removed patches mostly have a removed neighbour (a random mask of the same ratio has fewer).
    def neighbours(m: torch.Tensor) -> float:
        g = m.reshape(grid).int()
        pad = torch.nn.functional.pad(g, (1, 1, 1, 1))
        n = pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
        return float((n * g).sum()) / max(1, int(g.sum()))
    if grid == (14, 14) and ratio == 0.4:
        assert neighbours(block_mask(grid, ratio, 0)) > neighbours(random_mask(grid, ratio, 0)) + 0.5


def test_grid_keeps_one_in_each_2x2() -> None:
    mask = grid_mask((14, 14)).reshape(14, 14)
    assert int(mask.sum()) == 147 and not mask[0, 0] and mask[0, 1] and mask[1, 0] and mask[1, 1] and not mask[2, 2]
    assert int(grid_mask((5, 5)).sum()) == 25 - 9  # odd grid: 9 kept, ratio 0.64


def test_box_and_halves_on_a_non_square_input() -> None:
    size, patch = (224, 320), 16  # a 14 x 20 grid
    grid = (14, 20)
    mask = box_mask(grid, patch, (0, 0, 160, 112)).reshape(grid)  # the top-left quarter in pixels
    assert int(mask.sum()) == 7 * 10 and mask[:7, :10].all()
    as_fractions = build_mask(parse_mask("box:0.0,0.0,0.5,0.5"), size, patch)
    assert torch.equal(as_fractions.reshape(grid), mask)
    # A patch counts when its centre is inside: a box edge through the middle of a patch column.
    edge = box_mask(grid, patch, (0, 0, 24, 224)).reshape(grid)  # centres at x = 8 (in), 24 (out)
    assert edge[:, 0].all() and not edge[:, 1].any()
    right = build_mask(parse_mask("right"), size, patch).reshape(grid)
    assert right[:, 10:].all() and not right[:, :10].any()
    bottom = half_mask((5, 4), "bottom").reshape(5, 4)
    assert bottom[2:].all() and not bottom[:2].any()  # odd: the middle row goes to the bottom half


def test_center_square() -> None:
    mask = center_mask((14, 14), 0.25).reshape(14, 14)
    assert int(mask.sum()) == 49 and mask[3:10, 3:10].all()  # (14 - 7) // 2 = 3 rows and columns before it


def test_file_mask_by_majority_on_a_non_square_grid(tmp_path: Path) -> None:
    img = Image.new("L", (200, 140), 0)  # a 14 x 20 grid: cells of 10 x 10 pixels
    img.paste(255, (0, 0, 100, 70))  # the top-left quarter white
    img.paste(255, (100, 70, 104, 80))  # 40% of one cell white: stays visible
    path = tmp_path / "mask.png"
    img.save(path)
    mask = file_mask(path, (14, 20)).reshape(14, 20)
    assert mask[:7, :10].all() and int(mask.sum()) == 70


def test_patches_and_bad_indices() -> None:
    mask = patches_mask((14, 14), [0, 1, 14])
    assert torch.nonzero(mask).flatten().tolist() == [0, 1, 14]
    with pytest.raises(ValueError, match="outside the grid"):
        patches_mask((14, 14), [196])


@pytest.mark.parametrize("text", ["zoom", "box:1,2,3", "patches:a", "right:0.5", "block:1.5", "file:"])
def test_bad_specs_say_what_is_wrong(text) -> None:
    with pytest.raises(ValueError):
        parse_mask(text)


def test_specs_parse() -> None:
    assert parse_mask("block:0.6").ratio == 0.6 and parse_mask("random").ratio is None
    assert parse_mask("half:left").kind == "left" and parse_mask("box:60,40,180,200").fractions is False
    assert parse_mask("patches:0,1,14").indices == (0, 1, 14) and parse_mask("right").fixed_shape


def test_nested_sweep_masks() -> None:
    masks = nested_masks((14, 14), [0.25, 0.5, 0.75, 0.9], seed=2)
    for lower, higher in zip(masks, masks[1:]):
        assert bool((higher | ~lower).all())  # every patch the lower ratio removes, the higher one removes too
        assert int(higher.sum()) > int(lower.sum())


def test_check_mask_and_noise() -> None:
    mask = random_mask((4, 4), 0.5, 0)
    batch = check_mask(mask, 3, 16)
    assert batch.shape == (3, 16)
    noise = noise_for_mask(batch)
    kept = torch.argsort(noise, dim=1)[:, :8]
    assert all(set(row.tolist()) == set(torch.nonzero(~mask).flatten().tolist()) for row in kept)
    uneven = torch.stack([mask, patches_mask((4, 4), [0])])
    with pytest.raises(ValueError, match="same number"):
        check_mask(uneven, 2, 16)
    with pytest.raises(ValueError, match="every patch"):
        check_mask(torch.ones(16, dtype=torch.bool), 1, 16)
    assert torch.equal(check_mask(mask.float(), 1, 16), mask[None])  # the official format: float, 1 = removed
    with pytest.raises(ValueError, match="only 0"):
        check_mask(mask.float() * 2, 1, 16)
    with pytest.raises(ValueError, match="bool tensor"):
        check_mask(mask.tolist(), 1, 16)


# ---- through the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["block:0.6", "right", "grid", "patches:0,5,9", "center:0.5"])
def test_mask_and_its_noise_give_bit_identical_outputs(kind) -> None:
    from mae.large.models.masks import mask_ratio_of
    from tests.helpers import small_model

    model = small_model()
    imgs = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = build_mask(parse_mask(kind), (32, 32), 8, ratio=0.5, seed=1)
    with torch.no_grad():
        by_mask = model(imgs, mask=mask)
        by_noise = model(imgs, mask_ratio=mask_ratio_of(mask), noise=noise_for_mask(mask.expand(3, -1)))
        rec = model.reconstruct(imgs, mask=mask)
    assert torch.equal(by_mask.pred, by_noise.pred) and torch.equal(by_mask.loss, by_noise.loss)
    assert torch.equal(by_mask.mask, mask.expand(3, -1).float())  # the mask returned is the mask given
    assert torch.equal(rec.mask, by_mask.mask) and torch.equal(rec.pred, by_mask.pred)
    latent, enc_mask, _ = model.forward_encoder(imgs, mask=mask)
    assert latent.shape[1] == 1 + 16 - int(mask.sum()) and torch.equal(enc_mask, by_mask.mask)


def test_a_per_image_mask_batch() -> None:
    from tests.helpers import small_model

    model = small_model()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.stack([half_mask((4, 4), "left"), half_mask((4, 4), "top")])
    with torch.no_grad():
        out = model(imgs, mask=mask)
    assert torch.equal(out.mask, mask.float())


def test_model_mask_errors() -> None:
    from tests.helpers import small_model

    model = small_model()
    imgs = torch.randn(2, 3, 32, 32)
    right = half_mask((4, 4), "right")  # removes 8 of 16: ratio 0.5
    with torch.no_grad():
        model(imgs, 0.5, mask=right)  # an explicit ratio that agrees is fine
        with pytest.raises(ValueError, match="mask_ratio 0.75 keeps 4 of 16 patches but the mask removes 8 and keeps 8; "
                                             "pass the mask alone, or mask_ratio=8/16"):
            model(imgs, 0.75, mask=right)
        with pytest.raises(ValueError, match="either mask or noise"):
            model(imgs, mask=right, noise=torch.rand(2, 16))
        with pytest.raises(ValueError, match="same number"):
            model(imgs, mask=torch.stack([right, patches_mask((4, 4), [1])]))
        with pytest.raises(ValueError, match="leave at least one visible"):
            model(imgs, mask=torch.ones(16, dtype=torch.bool))
        with pytest.raises(ValueError, match="shape"):
            model(imgs, mask=torch.zeros(3, 16, dtype=torch.bool))


def _white_fraction_by_hand(white: np.ndarray, grid: tuple[int, int]) -> list[list[Fraction]]:
    """Each cell's white area over its area, exactly: a pixel (x, y) covers [x, x + 1) x [y, y + 1) of an image
    W x H; cell (r, c) of an R x C grid covers [c W / C, (c + 1) W / C) x [r H / R, (r + 1) H / R)."""
    height, width = white.shape
    rows, cols = grid
    out = []
    for r in range(rows):
        y0, y1 = Fraction(r * height, rows), Fraction((r + 1) * height, rows)
        row = []
        for c in range(cols):
            x0, x1 = Fraction(c * width, cols), Fraction((c + 1) * width, cols)
            area = Fraction(0)
            for y in range(math.floor(y0), math.ceil(y1)):
                dy = min(y1, y + 1) - max(y0, y)
                for x in range(math.floor(x0), math.ceil(x1)):
                    if white[y, x]:
                        area += dy * (min(x1, x + 1) - max(x0, x))
            row.append(area / ((y1 - y0) * (x1 - x0)))
        out.append(row)
    return out


@pytest.mark.parametrize(("width", "height", "seed"), [(203, 177, 0), (97, 131, 1), (64, 64, 2), (17, 23, 3)])
def test_file_mask_removes_a_patch_when_more_than_half_its_area_is_white(tmp_path: Path, width: int, height: int,
                                                                         seed: int) -> None:
    # Blocks of white that do not line up with the cells, so many cells are near half white.
    rng = np.random.default_rng(seed)
    small = rng.random((9, 7)) > 0.5
    white = np.asarray(Image.fromarray(small.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)) > 0
    path = tmp_path / "m.png"
    Image.fromarray(white.astype(np.uint8) * 255).save(path)
    grid = (14, 14)
    expected = torch.tensor([[f > Fraction(1, 2) for f in row] for row in _white_fraction_by_hand(white, grid)])
    assert torch.equal(file_mask(path, grid).reshape(grid), expected)


def test_a_ratio_equal_to_the_masks_own_is_accepted_for_every_count() -> None:
    # At L = 196 the official int(L * (1 - r)) keeps one patch short for 34 counts (70 removed: 125 kept, not 126);
    # the mask's own ratio removed / L is still its ratio.
    from mae.large import MAEConfig, MaskedAutoencoderViT

    model = MaskedAutoencoderViT(MAEConfig(img_size=112, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                                           decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)).eval()
    length = model.config.num_patches
    assert length == 196
    imgs = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    official_short = 0
    for removed in range(1, length):
        mask = torch.zeros(length, dtype=torch.bool)
        mask[torch.randperm(length, generator=torch.Generator().manual_seed(removed))[:removed]] = True
        official_short += int(length * (1 - removed / length)) != length - removed
        with torch.no_grad():
            latent, out_mask, _ = model.forward_encoder(imgs, removed / length, mask=mask)
        assert latent.shape[1] == 1 + length - removed and torch.equal(out_mask[0].bool(), mask)
    assert official_short > 0  # the case exists at this L


def test_the_mask_a_forward_returns_can_be_passed_back() -> None:
    from tests.helpers import small_model

    model = small_model()
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = model(imgs, 0.75, noise=noise)
        assert first.mask.dtype == torch.float32
        again = model(imgs, mask=first.mask)  # the official format: float, 1 = removed
        # The same patches removed; the loss to float32 rounding (the kept tokens enter the encoder in grid order).
        assert torch.equal(again.mask, first.mask) and torch.allclose(again.loss, first.loss, rtol=1e-6, atol=0)
        assert torch.equal(model(imgs, mask=first.mask.long()).mask, first.mask)
        with pytest.raises(ValueError, match=r"only 0 \(kept\) and 1 \(removed\).*0.5"):
            model(imgs, mask=first.mask * 0.5)
