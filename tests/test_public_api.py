"""The public surface: every name `mae.large` exports stays importable from `mae.large`."""

from __future__ import annotations

import importlib

import pytest

# Exported by `mae.large` before the library became sub-packages (0.1.0); none may disappear.
PUBLIC_0_1 = (
    "EncoderConfig", "MAEConfig", "MAEOutput", "MaskedAutoencoderViT", "Reconstruction", "ViTConfig",
    "VisionTransformer", "mae_vit_large_patch16", "param_groups_lrd", "vit_large_patch16",
)


@pytest.mark.parametrize("name", PUBLIC_0_1)
def test_names_of_0_1_stay_importable_from_mae_large(name: str) -> None:
    module = importlib.import_module("mae.large")
    assert name in module.__all__
    assert getattr(module, name) is not None
