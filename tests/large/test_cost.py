"""The cost estimate that lets the CLI refuse an impossible size before torch is imported."""

from __future__ import annotations

import warnings

import pytest

from mae.large.config import EncoderConfig, MAEConfig
from mae.large.cost import DEFAULT_MAX_PATCHES, check_patch_budget, forward_cost, warn_if_large


def test_cost_grows_with_the_square_of_the_patches_in_the_decoder() -> None:
    base = forward_cost(MAEConfig())
    assert base.num_patches == 196 and base.times_reference == pytest.approx(1.0)
    double = forward_cost(MAEConfig(img_size=448))  # 4x the patches
    assert 4 < double.times_reference < 16  # more than linear (attention), less than the pure square
    assert double.attention_bytes == (1 + 784) ** 2 * 4
    # The encoder alone (features) at mask ratio 0 sees every patch; the MAE encoder a quarter of them.
    assert forward_cost(EncoderConfig()).flops > forward_cost(MAEConfig(), mask_ratio=0.75).flops / 2


def test_budget_refuses_with_the_estimate_and_the_override() -> None:
    check_patch_budget(MAEConfig(img_size=1024))  # 4096 patches: the default limit itself
    with pytest.raises(ValueError, match=r"4096x4096 pixels means 65,536 patches.*max_patches=65536") as info:
        check_patch_budget(MAEConfig(img_size=4096))
    assert info.value.argument == "max_patches"
    check_patch_budget(MAEConfig(img_size=4096), max_patches=65536)
    assert DEFAULT_MAX_PATCHES == 4096


def test_library_warns_rather_than_refuses() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_if_large(MAEConfig(img_size=224))
        assert not seen
        warn_if_large(MAEConfig(img_size=2048))
    assert len(seen) == 1 and "16,384 patches" in str(seen[0].message)
