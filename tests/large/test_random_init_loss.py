"""The requirements' noise benchmark for a randomly initialised ViT-Large (~1.74)."""

from __future__ import annotations

import pytest
import torch

from mae.large import mae_vit_large_patch16


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_init_noise_loss_is_near_1_74(seed: int, rng_state) -> None:
    # Measured on the official code: 1.72, 1.77, 1.79 for init seeds 0, 1, 2.
    torch.manual_seed(seed)
    model = mae_vit_large_patch16().eval()
    imgs = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        loss, _, _ = model(imgs, mask_ratio=0.75)
    assert 1.6 < loss.item() < 1.9
