"""Attention weights on the explicit path, rollout, and that the normal forward is untouched."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mae.large import MAEConfig, MaskedAutoencoderViT, VisionTransformer, ViTConfig
from mae.large.errors import InvalidArgumentError
from mae.large.models.masks import patches_mask
from mae.large.viz.attention import attention_maps, head_entropy, rollout, top_patches
from tests.helpers import REPO, small_model, small_state_dict


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def block_inputs(model, imgs: torch.Tensor) -> list[torch.Tensor]:
    """The input of every block, by a plain loop."""
    x = model.encoder_tokens(imgs).x
    inputs = []
    for blk in model.blocks:
        inputs.append(x)
        x = blk(x)
    return inputs


def relative(delta: torch.Tensor, ref: torch.Tensor) -> float:
    return (torch.linalg.vector_norm((delta - ref).double()) / torch.linalg.vector_norm(ref.double())).item()


def check_against_sdpa(model, imgs: torch.Tensor) -> list[float]:
    """For every layer: the explicit weights times v, through proj, against the module's own SDPA output."""
    maps = attention_maps(model, imgs, layers=None, keep="full")
    errors = []
    for i, (blk, x) in enumerate(zip(model.blocks, block_inputs(model, imgs))):
        h = blk.norm1(x)
        n, t, c = h.shape
        attn = blk.attn
        v = attn.qkv(h).reshape(n, t, 3, attn.num_heads, attn.head_dim)[:, :, 2].transpose(1, 2)  # (N, H, T, d)
        out = attn.proj((maps.full[i] @ v).transpose(1, 2).reshape(n, t, c))
        errors.append(relative(out, attn(h)))
        assert torch.equal(maps.cls[i], maps.full[i][:, :, 0])
    return errors


@torch.no_grad()
def test_explicit_weights_reproduce_sdpa_small() -> None:
    errors = check_against_sdpa(small_model(), images())
    assert len(errors) == 2 and max(errors) < 1e-5, errors


@pytest.mark.slow
@torch.no_grad()
def test_explicit_weights_reproduce_sdpa_vit_large(rng_state) -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(MAEConfig.vit_large()).eval()
    errors = check_against_sdpa(model, images(1, 224))
    assert len(errors) == 24 and max(errors) < 1e-5, errors


@torch.no_grad()
def test_weights_are_distributions_and_cls_rows_match_layers() -> None:
    model = small_model()
    maps = attention_maps(model, images(), layers=[-1, 0])
    assert maps.layers == (0, 1) and maps.full is None and maps.rollout is None
    for layer in (0, 1):
        assert maps.cls[layer].shape == (2, 4, 17)
        assert torch.allclose(maps.cls[layer].sum(-1), torch.ones(2, 4))
    assert maps.heads_grid(1).shape == (2, 4, 4, 4) and maps.mean_grid(0).shape == (2, 4, 4)
    # grid cell (r, c) holds the weight on token 1 + r * 4 + c
    assert maps.mean_grid(1)[:, 2, 3].tolist() == maps.cls[1][:, :, 1 + 2 * 4 + 3].mean(1).tolist()


def reference_rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema: average heads, 0.5 A + 0.5 I (rows still sum to 1), product from the first layer up."""
    result = torch.eye(attentions[0].shape[-1], dtype=torch.float64).expand(attentions[0].shape[0], -1, -1)
    for a in attentions:
        a = a.double().mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64)
        result = torch.einsum("nij,njk->nik", a, result)
    return result


@torch.no_grad()
def test_rollout_equals_a_direct_reference() -> None:
    model = small_model()
    imgs = images()
    maps = attention_maps(model, imgs, layers=None, keep="full", rollout=True)
    expected = reference_rollout([maps.full[0], maps.full[1]])
    assert torch.allclose(rollout([maps.full[0], maps.full[1]]).double(), expected, atol=1e-6)
    assert torch.allclose(maps.rollout.double(), expected[:, 0], atol=1e-6)
    # Asked for the first layer only, the rollout still runs through every block.
    first = attention_maps(model, imgs, layers=[0], rollout=True)
    assert torch.equal(first.rollout, maps.rollout)
    assert torch.allclose(maps.rollout.sum(-1), torch.ones(2))


@torch.no_grad()
def test_rollout_on_random_weights_of_three_layers() -> None:
    gen = torch.Generator().manual_seed(1)
    attn = [torch.rand(2, 3, 5, 5, generator=gen).softmax(-1) for _ in range(3)]
    assert torch.allclose(rollout(attn).double(), reference_rollout(attn), atol=1e-6)


@torch.no_grad()
def test_masked_maps_are_drawn_on_the_right_patches() -> None:
    model = small_model()
    imgs = images()
    mask = patches_mask((4, 4), [0, 5, 10, 15, 1, 6, 11, 12])  # 8 removed
    maps = attention_maps(model, imgs, mask=mask)
    kept = [2, 3, 4, 7, 8, 9, 13, 14]
    assert maps.masked and maps.patches.tolist() == [kept] * 2
    grid = maps.mean_grid(1).flatten(1)  # (N, 16)
    assert torch.isnan(grid[:, mask]).all() and torch.isfinite(grid[:, ~mask]).all()
    assert torch.equal(grid[:, kept], maps.cls[1][:, :, 1:].mean(1))
    # The weights are those of the masked encoder: the same as attention over the kept tokens by hand.
    tokens = model.encoder_tokens(imgs, mask=mask)
    x = model.blocks[0](tokens.x)
    h = model.blocks[1].norm1(x)
    q, k, _ = model.blocks[1].attn.qkv(h).reshape(2, 9, 3, 4, 16).permute(2, 0, 3, 1, 4)
    assert torch.allclose(maps.cls[1], ((q @ k.transpose(-2, -1)) / 4.0).softmax(-1)[:, :, 0], atol=1e-6)


@torch.no_grad()
def test_classifier_maps_equal_the_mae_maps() -> None:
    vit = VisionTransformer(ViTConfig.from_mae(small_model().config, num_classes=0, drop_path_rate=0.0))
    vit.load_encoder_state(small_state_dict())
    vit.eval()
    a = attention_maps(vit, images(), layers=None, rollout=True)
    b = attention_maps(small_model(), images(), layers=None, rollout=True)
    assert all(torch.equal(a.cls[i], b.cls[i]) for i in (0, 1)) and torch.equal(a.rollout, b.rollout)
    with pytest.raises(InvalidArgumentError, match="MaskedAutoencoderViT"):
        attention_maps(vit, images(), mask_ratio=0.5)


def test_entropy_and_top_patches() -> None:
    model = small_model()
    with torch.no_grad():
        maps = attention_maps(model, images())
    ent = head_entropy(maps, 1)
    assert ent.shape == (2, 4) and bool((ent > 0).all()) and bool((ent <= torch.log(torch.tensor(16.0)) + 1e-5).all())
    values, where = top_patches(maps, 1, k=3)
    mean = maps.mean_grid(1).flatten(1)
    assert torch.equal(values, mean.topk(3).values) and torch.equal(where, mean.topk(3).indices)


def test_bad_arguments() -> None:
    model = small_model()
    with pytest.raises(InvalidArgumentError) as info:
        attention_maps(model, images(), layers=[2])
    assert info.value.argument == "layers"
    with pytest.raises(InvalidArgumentError, match="keep"):
        attention_maps(model, images(), keep="all")  # type: ignore[arg-type]
    with torch.no_grad():
        maps = attention_maps(model, images(), layers=[0])
    with pytest.raises(InvalidArgumentError, match="layers"):
        maps.mean_grid(1)
    with pytest.raises(InvalidArgumentError, match="rollout=True"):
        maps.rollout_grid()


_FORWARD = """
import sys, torch
torch.manual_seed(0)
from mae.large import MaskedAutoencoderViT, VisionTransformer, ViTConfig
from tests.helpers import small_config
if {use}:
    from mae.large.viz.attention import attention_maps
model = MaskedAutoencoderViT(small_config()).eval()
vit = VisionTransformer(ViTConfig.from_mae(small_config(), drop_path_rate=0.0)).eval()
vit.load_encoder_state({{k: v for k, v in model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}})
imgs = torch.randn(2, 3, 32, 32)
noise = torch.rand(2, 16)
with torch.no_grad():
    if {use}:
        attention_maps(model, imgs, layers=None, keep="full", rollout=True)
        attention_maps(vit, imgs, layers=None, rollout=True)
    out = model(imgs, noise=noise)
    torch.save({{"loss": out.loss, "pred": out.pred, "latent": model.forward_encoder(imgs, noise=noise)[0],
                "logits": vit(imgs), "tokens": vit.forward_tokens(imgs)}}, sys.argv[1])
assert ("mae.large.viz.attention" in sys.modules) == {use}
"""


def test_normal_forward_is_bit_identical_with_or_without_attention(tmp_path) -> None:
    outputs = []
    for use in (False, True):
        path = tmp_path / f"{use}.pt"
        result = subprocess.run([sys.executable, "-c", _FORWARD.format(use=use), str(path)], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        outputs.append(torch.load(path))
    without, with_ = outputs
    assert without.keys() == with_.keys()
    for key in without:
        assert torch.equal(without[key], with_[key]), key
