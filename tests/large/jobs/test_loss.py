"""The requirements' noise benchmark for a randomly initialised ViT-Large (~1.74), pinned to the official code."""

from __future__ import annotations

import pytest
import torch

from mae.large import mae_vit_large_patch16

# Measured on the official code (models_mae.mae_vit_large_patch16) with one global RNG stream, in this
# order: torch.manual_seed(seed); build the model; x = torch.randn(4, 3, 224, 224); model(x, mask_ratio=0.75)
# (the forward pass draws its masking noise from the same stream). Sums are float64 sums of the float32
# tensors. The official values are given to 6 decimals.
OFFICIAL = {
    0: {"loss": 1.723049, "patch_embed.proj.weight": -24.372076, "blocks.0.attn.qkv.weight": -51.527660,
        "cls_token": -1.034306},
    1: {"loss": 1.768286, "patch_embed.proj.weight": -30.784558, "blocks.0.attn.qkv.weight": -8.956192,
        "cls_token": -0.423406},
    2: {"loss": 1.788067, "patch_embed.proj.weight": 0.215696, "blocks.0.attn.qkv.weight": -79.180625,
        "cls_token": -0.653630},
}
LOSS_RTOL = 1e-5
# The pins are rounded to 1e-6, so they sit up to 5e-7 from the exact sums (this code: at most 4.6e-7 off).
# A float64 sum of ~1M float32 values carries ~1e-12 of its own error, and the init draws from the CPU
# generator element by element; 1e-6 is twice the rounding, far below what any init change moves (>1e-2).
SUM_ATOL = 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("seed", sorted(OFFICIAL))
def test_random_init_matches_official_init_and_noise_loss(seed: int, rng_state) -> None:
    expected = OFFICIAL[seed]
    torch.manual_seed(seed)
    with torch.no_grad():  # the init runs without autograd anyway; nothing here needs gradients
        model = mae_vit_large_patch16().eval()
    imgs = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        loss = model(imgs, mask_ratio=0.75).loss
    sd = model.state_dict()
    sums = {k: sd[k].double().sum().item() for k in expected if k != "loss"}
    del model, sd
    assert sums == pytest.approx({k: v for k, v in expected.items() if k != "loss"}, rel=0, abs=SUM_ATOL)
    assert loss.item() == pytest.approx(expected["loss"], rel=LOSS_RTOL, abs=0)
    assert 1.6 < loss.item() < 1.9  # the requirements' benchmark (~1.74) it stands for
