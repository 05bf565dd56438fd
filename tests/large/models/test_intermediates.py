"""`forward_intermediates` on both models: timm's index rule, norm, formats, prefix tokens, stop_early, masking."""

from __future__ import annotations

import pytest
import torch

from mae.large import VisionTransformer, ViTConfig
from mae.large.errors import InvalidArgumentError
from mae.large.models.intermediates import KeptTokens, take_indices
from mae.large.models.masks import patches_mask
from tests.helpers import small_model, small_state_dict


@pytest.fixture(scope="module")
def mae():
    return small_model()


def classifier(global_pool: bool) -> VisionTransformer:
    model = VisionTransformer(ViTConfig.from_mae(small_model().config, num_classes=0, global_pool=global_pool,
                                                 drop_path_rate=0.0))
    model.load_encoder_state(small_state_dict())
    if not global_pool:  # a trained-looking final norm, so that norm=True is visible
        with torch.no_grad():
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.uniform_(-0.5, 0.5)
    return model.eval()


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def hand_loop(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's output, (N, 1 + L, D), by a plain loop over the blocks."""
    outs = []
    for blk in model.blocks:
        x = blk(x)
        outs.append(x)
    return outs


def mae_input(model, imgs: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(imgs) + model.pos_embed[:, 1:]
    cls = (model.cls_token + model.pos_embed[:, :1]).expand(imgs.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


@pytest.mark.parametrize(("indices", "expected"), [
    (None, [0, 1, 2, 3]), (1, [3]), (3, [1, 2, 3]), ([0, -1], [0, 3]), ([-1, 0, 3], [0, 3]), ((2,), [2]), ([-4], [0]),
])
def test_take_indices_follows_timm(indices, expected) -> None:
    assert take_indices(4, indices) == expected


@pytest.mark.parametrize("indices", [0, 5, [4], [-5], [], "1", [1.0], True])
def test_take_indices_rejects_what_selects_nothing_or_too_much(indices) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        take_indices(4, indices)
    assert info.value.argument == "indices"


@torch.no_grad()
def test_mae_intermediates_equal_a_hand_loop(mae) -> None:
    imgs = images()
    ref = hand_loop(mae, mae_input(mae, imgs))
    final, inter = mae.forward_intermediates(imgs, [0, -1], output_fmt="NLC")
    assert torch.equal(final, mae.norm(ref[-1]))
    assert [t.shape for t in inter] == [(2, 16, 64)] * 2
    assert torch.equal(inter[0], ref[0][:, 1:]) and torch.equal(inter[1], ref[1][:, 1:])
    # The final tokens are the encoder's output at mask ratio 0 (noise = grid order keeps the order).
    latent, _, _ = mae.forward_encoder(imgs, mask_ratio=0.0, noise=torch.arange(16.0).expand(2, -1))
    assert torch.equal(final, latent)


@torch.no_grad()
def test_norm_nchw_prefix_and_intermediates_only(mae) -> None:
    imgs = images()
    ref = hand_loop(mae, mae_input(mae, imgs))
    out = mae.forward_intermediates(imgs, 1, norm=True, return_prefix_tokens=True, intermediates_only=True)
    assert isinstance(out, list) and len(out) == 1
    grid, prefix = out[0]
    normed = mae.norm(ref[-1])
    assert grid.shape == (2, 64, 4, 4) and prefix.shape == (2, 1, 64)
    assert torch.equal(prefix, normed[:, :1])
    # NCHW: channel d of grid cell (r, c) is token 1 + r * w + c.
    assert torch.equal(grid[:, :, 1, 2], normed[:, 1 + 1 * 4 + 2])
    assert torch.equal(grid.flatten(2).transpose(1, 2), normed[:, 1:])


@torch.no_grad()
def test_stop_early_runs_only_the_blocks_needed(mae) -> None:
    imgs = images()
    calls = []
    handle = mae.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        final, inter = mae.forward_intermediates(imgs, [0], stop_early=True, output_fmt="NLC")
    finally:
        handle.remove()
    assert calls == []
    ref = hand_loop(mae, mae_input(mae, imgs))
    assert torch.equal(final, mae.norm(ref[0])) and torch.equal(inter[0], ref[0][:, 1:])


@torch.no_grad()
def test_masking_gives_kept_tokens_with_their_patch_indices(mae) -> None:
    imgs = images()
    mask = patches_mask((4, 4), [0, 1, 2, 3, 5, 7, 8, 15])  # 8 removed, 8 kept
    final, inter = mae.forward_intermediates(imgs, [-1], mask=mask)  # NCHW asked: no grid exists, KeptTokens
    kept = inter[0]
    assert isinstance(kept, KeptTokens)
    assert kept.tokens.shape == (2, 8, 64) and kept.patches.tolist() == [[4, 6, 9, 10, 11, 12, 13, 14]] * 2
    latent, _, _ = mae.forward_encoder(imgs, mask=mask)
    assert torch.equal(final, latent)
    # The same with a random ratio: the patch indices are those the official masking keeps.
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    _, inter = mae.forward_intermediates(imgs, 1, mask_ratio=0.75, noise=noise, output_fmt="NLC")
    assert inter[0].patches.tolist() == torch.argsort(noise, dim=1)[:, :4].tolist()


@torch.no_grad()
def test_noise_at_ratio_zero_still_gives_grid_order(mae) -> None:
    imgs = images()
    plain = mae.forward_intermediates(imgs, 1, intermediates_only=True)[0]
    shuffled = mae.forward_intermediates(imgs, 1, intermediates_only=True, noise=torch.rand(2, 16))[0]
    assert torch.allclose(plain, shuffled, atol=1e-5)


@pytest.mark.parametrize("global_pool", [True, False])
@torch.no_grad()
def test_classifier_intermediates(global_pool: bool) -> None:
    model = classifier(global_pool)
    imgs = images()
    ref = hand_loop(model, mae_input(model, imgs))
    final, inter = model.forward_intermediates(imgs, norm=True, output_fmt="NLC")
    assert torch.equal(final, model.forward_tokens(imgs))
    expected = ref[0] if global_pool else model.norm(ref[0])  # global pool: no token norm (timm: identity)
    assert torch.equal(inter[0], expected[:, 1:])


def test_bad_output_fmt(mae) -> None:
    with pytest.raises(InvalidArgumentError, match="NCHW") as info:
        mae.forward_intermediates(images(), output_fmt="NHWC")
    assert info.value.argument == "output_fmt"
