"""The ViT-Large model against the official key manifest (tests/reference/mae_vit_large_patch16_keys.json)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from mae.large import MAEConfig, MaskedAutoencoderViT, mae_vit_large_patch16
from tests.helpers import manifest


@pytest.fixture(scope="module")
def vit_l() -> MaskedAutoencoderViT:
    return mae_vit_large_patch16()


def test_config_is_the_official_large() -> None:
    c = MAEConfig.vit_large()
    assert c == MAEConfig()
    assert (c.img_size, c.patch_size, c.in_chans) == ((224, 224), 16, 3)
    assert (c.embed_dim, c.depth, c.num_heads) == (1024, 24, 16)
    assert (c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads) == (512, 8, 16)
    assert (c.mlp_ratio, c.layer_norm_eps, c.norm_pix_loss) == (4.0, 1e-6, False)


def test_keys_order_and_shapes(vit_l: MaskedAutoencoderViT) -> None:
    expected = [(k["name"], tuple(k["shape"])) for k in manifest()["keys"]]
    actual = [(k, tuple(v.shape)) for k, v in vit_l.state_dict().items()]
    assert len(actual) == 398
    assert actual == expected


def test_encoder_decoder_split(vit_l: MaskedAutoencoderViT) -> None:
    from mae.large.checkpoints.classify import key_part

    parts = {k["name"]: k["part"] for k in manifest()["keys"]}
    assert sum(p == "encoder" for p in parts.values()) == 294
    assert sum(p == "decoder" for p in parts.values()) == 104
    assert {name: key_part(name) for name in vit_l.state_dict()} == parts


def test_every_layernorm_has_eps_1e_6(vit_l: MaskedAutoencoderViT) -> None:
    norms = {name: m for name, m in vit_l.named_modules() if isinstance(m, nn.LayerNorm)}
    assert sorted(norms) == sorted(manifest()["layernorms"])
    assert len(norms) == 66
    assert {m.eps for m in norms.values()} == {manifest()["layernorm_eps"]} == {1e-6}


@pytest.mark.parametrize("name", ["pos_embed", "decoder_pos_embed"])
def test_position_tables_are_bit_identical(vit_l: MaskedAutoencoderViT, name: str) -> None:
    fp = manifest()["fixed_sincos_pos_embed"][name]
    table = getattr(vit_l, name).detach()
    assert list(table.shape) == fp["shape"]
    assert table.dtype == torch.float32
    assert hashlib.sha256(table.numpy().astype("<f4").tobytes()).hexdigest() == fp["sha256_float32_le"]
    assert table.double().sum().item() == pytest.approx(fp["sum"], rel=1e-12)
    assert table.double().abs().sum().item() == pytest.approx(fp["abs_sum"], rel=1e-12)
    assert torch.count_nonzero(table[0, 0]) == 0  # the cls row
    assert not getattr(vit_l, name).requires_grad  # fixed, never trained


def test_parameter_counts(vit_l: MaskedAutoencoderViT) -> None:
    from mae.large.checkpoints.classify import key_part

    sd = vit_l.state_dict()
    assert sum(v.numel() for v in sd.values()) == 329_541_888
    assert sum(v.numel() for k, v in sd.items() if key_part(k) == "encoder") == 303_301_632


def test_mae_vit_large_patch16_overrides() -> None:
    model = mae_vit_large_patch16(norm_pix_loss=True, depth=1, decoder_depth=1)
    assert model.norm_pix_loss is True and len(model.blocks) == 1 and model.config.embed_dim == 1024
