"""Model properties, input validation and the official random init."""

from __future__ import annotations

import pytest
import torch

from mae.large import MAEConfig, MaskedAutoencoderViT
from mae.large.errors import InvalidArgumentError
from tests.helpers import official_target, relative_error, small_config, small_model


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"patch_size": 0}, "patch_size"),
        ({"img_size": 30}, "img_size"),
        ({"img_size": (32, 30)}, "img_size"),
        ({"img_size": "32"}, "img_size"),
        ({"num_heads": 5}, "num_heads"),
        ({"decoder_num_heads": 3}, "decoder_num_heads"),
        ({"depth": -1}, "depth"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"in_chans": True}, "in_chans"),
        ({"embed_dim": 66, "num_heads": 6}, "embed_dim"),
    ],
)
def test_invalid_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        small_config(**changes)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        small_config().depth = 3  # type: ignore[misc]


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("img_size", [(32, 32), (16, 40)])
def test_patchify_unpatchify_round_trip(in_chans: int, img_size: tuple[int, int]) -> None:
    model = MaskedAutoencoderViT(small_config(in_chans=in_chans, img_size=img_size))
    imgs = torch.randn(2, in_chans, *img_size)
    patches = model.patchify(imgs)
    assert patches.shape == (2, model.config.num_patches, 64 * in_chans)
    assert torch.equal(model.unpatchify(patches), imgs)


def test_patchify_layout() -> None:
    """Patch 0 is the top-left p x p square, channels last, row-major within the patch."""
    model = small_model()
    imgs = torch.randn(1, 3, 32, 32)
    patches = model.patchify(imgs)
    assert torch.equal(patches[0, 0].reshape(8, 8, 3), imgs[0, :, :8, :8].permute(1, 2, 0))
    assert torch.equal(patches[0, 1].reshape(8, 8, 3), imgs[0, :, :8, 8:16].permute(1, 2, 0))
    assert torch.equal(patches[0, 4].reshape(8, 8, 3), imgs[0, :, 8:16, :8].permute(1, 2, 0))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.75, 0.9, 0.93])
def test_masking_invariants(ratio: float) -> None:
    model = small_model()
    n, length = 5, model.config.num_patches
    x = torch.randn(n, length, 8)
    x[:, :, 0] = torch.arange(length)  # each token carries its own index, so a kept token says which it is
    noise = torch.rand(n, length)
    kept, mask, ids_restore = model.random_masking(x, ratio, noise)
    len_keep = int(length * (1 - ratio))
    for i in range(n):
        # Small noise is kept, read off the kept tokens themselves (no argsort of ours): they are the len_keep
        # smallest noise values in ascending order (at ratio 0: every token, sorted), and exactly those are visible.
        kept_ids = kept[i, :, 0].long()
        assert torch.equal(noise[i, kept_ids], noise[i].sort().values[:len_keep]), (ratio, i)
        assert torch.equal(mask[i, kept_ids], torch.zeros(len_keep)), (ratio, i)
    assert torch.equal(mask.sum(1), torch.full((n,), float(length - len_keep)))
    ids_shuffle = torch.argsort(noise, dim=1)
    # ids_restore inverts the shuffle
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(length).expand(n, -1))
    # the kept tokens are exactly the visible ones (mask == 0), in ascending-noise order
    for i in range(n):
        visible = (mask[i] == 0).nonzero().flatten()
        assert set(visible.tolist()) == set(ids_shuffle[i, :len_keep].tolist())
        assert torch.equal(kept[i], x[i, ids_shuffle[i, :len_keep]])


def test_loss_only_counts_removed_patches() -> None:
    """Changing the prediction of a visible patch leaves the loss unchanged; of a removed one, not."""
    model = small_model()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        _, pred, mask = model(imgs, 0.75, noise)
        base = model.forward_loss(imgs, pred, mask)
        visible = (mask[0] == 0).nonzero()[0, 0]
        removed = (mask[0] == 1).nonzero()[0, 0]
        p2 = pred.clone()
        p2[0, visible] += 10
        assert torch.equal(model.forward_loss(imgs, p2, mask), base)
        p2[0, removed] += 10
        assert model.forward_loss(imgs, p2, mask) > base


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, 0.99, True, "0.5"])
def test_bad_mask_ratio_is_refused(ratio) -> None:
    model = small_model()
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(1, 3, 32, 32), mask_ratio=ratio)


@pytest.mark.parametrize(
    ("imgs", "match"),
    [
        (torch.randn(3, 32, 32), "4-D"),
        (torch.randn(1, 1, 32, 32), "3 channels"),
        (torch.randn(1, 3, 32, 48), "32x32"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating point"),
    ],
)
def test_bad_images_are_refused(imgs: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        small_model()(imgs)


def test_bad_noise_is_refused() -> None:
    with pytest.raises(ValueError, match="noise must have shape"):
        small_model()(torch.randn(2, 3, 32, 32), noise=torch.rand(2, 15))


def test_official_init() -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig(img_size=64, embed_dim=128, depth=2, num_heads=4,
                                           decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4))
    # xavier-uniform bound for a (out, in) weight: sqrt(6 / (in + out))
    qkv = model.blocks[0].attn.qkv.weight
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    w = model.patch_embed.proj.weight.flatten(1)
    assert w.abs().max() <= (6 / (w.shape[0] + w.shape[1])) ** 0.5
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    for token in (model.cls_token, model.mask_token):
        assert 0.01 < token.std().item() < 0.03
    # The same seed builds the same model.
    torch.manual_seed(0)
    again = MaskedAutoencoderViT(model.config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_pos_embed_is_not_trained() -> None:
    model = small_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "pos_embed" not in trainable and "decoder_pos_embed" not in trainable
    assert "cls_token" in trainable and "mask_token" in trainable


def test_mask_is_float32_for_half_precision_models() -> None:
    """As the official torch.ones([N, L]): a float16 mask would sum to inf for large batches."""
    model = small_model().half()
    x = torch.randn(2, 16, 8, dtype=torch.float16)
    _, mask, _ = model.random_masking(x, 0.75, torch.rand(2, 16))
    assert mask.dtype == torch.float32


def test_numpy_mask_ratio_is_accepted() -> None:
    import numpy as np

    with torch.no_grad():
        _, _, mask = small_model()(torch.randn(1, 3, 32, 32), mask_ratio=np.float32(0.75))
    assert int(mask.sum()) == 12


@pytest.mark.parametrize(
    ("level", "spread", "tol"),
    [
        # Near-flat patches: variance ~1e-8, far below eps, so the 1e-6 inside the root sets the scale.
        (0.0, 1e-4, 1e-6),
        # The same on a grey level: float32 rounds the patch mean to ~3e-8, i.e. 3e-4 of a 1e-4 deviation.
        (0.5, 1e-4, 1e-3),
        (0.0, 1e-3, 1e-6),  # variance ~ eps
        (0.0, 1.0, 1e-6),  # ordinary patches: pins the unbiased variance (dividing by 192, not 191: 2.6e-3 off)
    ],
)
def test_norm_pix_target_on_near_flat_patches_matches_official(level: float, spread: float, tol: float) -> None:
    """norm_pix_loss target = (p - mean) / sqrt(var + 1e-6), var unbiased, against the official formula in
    float64; on near-flat patches the eps decides the scale (1e-5 instead shrinks the target about 3 times)."""
    model = MaskedAutoencoderViT(small_config(norm_pix_loss=True))
    imgs = level + spread * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = official_target(imgs, model.config.patch_size, norm_pix_loss=True)
    if spread < 1e-3:
        assert expected.std(-1).max() < 0.2  # the patches really are flat: eps, not the variance, dominates
    actual = model.loss_target(imgs)
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    err = relative_error(actual, expected)
    assert err <= tol, f"max |target - official| / max |official| = {err:.3g} > {tol}"


# ---- inputs: finite, non-empty, cast once to the weights' dtype ---------------------------------------
NOISE = torch.rand(3, 16, generator=torch.Generator().manual_seed(5))
ENTRIES = {
    "forward": lambda m, x: m(x, 0.75, NOISE[: x.shape[0]]),
    "forward_encoder": lambda m, x: m.forward_encoder(x, 0.75, NOISE[: x.shape[0]]),
    "reconstruct": lambda m, x: m.reconstruct(x, 0.75, NOISE[: x.shape[0]]),
    "patchify": lambda m, x: m.patchify(x),
    "loss_target": lambda m, x: m.loss_target(x),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_nonfinite_image_is_named(entry: str, bad: float) -> None:
    x = torch.randn(3, 3, 32, 32)
    x[1, 2, 5, 7] = bad
    with pytest.raises(InvalidArgumentError, match="image 1 of the batch of 3 holds NaN or infinite values") as info:
        ENTRIES[entry](small_model(), x)
    assert info.value.argument == "imgs" and isinstance(info.value, ValueError)


def test_several_nonfinite_images_are_all_named() -> None:
    x = torch.randn(3, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    x[2, 1, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="images 0, 2 of the batch of 3 hold NaN or infinite values"):
        small_model()(x)


def test_float64_beyond_float32_is_named_as_out_of_range() -> None:
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    x[1, 0, 0, 0] = 1e300  # finite in float64, infinite once cast
    with pytest.raises(ValueError, match="image 1 of the batch of 2 holds values beyond the range of float32"):
        small_model()(x)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_an_empty_batch_is_refused(entry: str) -> None:
    with pytest.raises(InvalidArgumentError, match="batch is empty") as info:
        ENTRIES[entry](small_model(), torch.empty(0, 3, 32, 32))
    assert info.value.argument == "imgs"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_give_the_float32_outputs_bit_for_bit(dtype: torch.dtype) -> None:
    """Values representable in float32 (all of float16 / bfloat16, and a float64 copy of float32 images) are cast
    once at entry: every output, the loss target's included, equals the float32 run exactly."""
    model = small_model()
    x = torch.randn(3, 3, 32, 32).to(dtype).float()  # float32 values the other dtype holds exactly
    other = x.to(dtype)
    assert torch.equal(other.float(), x)
    with torch.no_grad():
        ref, got = model(x, 0.75, NOISE), model(other, 0.75, NOISE)
        assert got.pred.dtype == torch.float32
        assert torch.equal(got.pred, ref.pred) and torch.equal(got.loss, ref.loss) and torch.equal(got.mask, ref.mask)
        r_ref, r_got = model.reconstruct(x, 0.75, NOISE), model.reconstruct(other, 0.75, NOISE)
        assert torch.equal(r_got.per_image_loss, r_ref.per_image_loss) and torch.equal(r_got.latent, r_ref.latent)
        assert torch.equal(model.loss_target(other), model.loss_target(x))
        assert torch.equal(model.forward_loss(other, ref.pred, ref.mask), ref.loss)
        assert model.patchify(other).dtype == torch.float32


def test_float64_from_numpy_just_works() -> None:
    import numpy as np

    array = np.random.default_rng(0).standard_normal((2, 3, 32, 32))  # float64
    with torch.no_grad():
        out = small_model()(torch.from_numpy(array), 0.75, NOISE[:2])
        ref = small_model()(torch.from_numpy(array).float(), 0.75, NOISE[:2])
    assert torch.equal(out.pred, ref.pred) and torch.isfinite(out.loss)


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_integer_and_other_non_float_images_are_still_refused(dtype: torch.dtype) -> None:
    with pytest.raises(InvalidArgumentError, match="must be floating point"):
        small_model()(torch.zeros(1, 3, 32, 32, dtype=dtype))
