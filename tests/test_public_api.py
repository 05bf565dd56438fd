"""The public surface: every name `mae.large` exported stays importable from it, the README's functions join it,
and each sub-package says what it holds."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

# Exported by `mae.large` before the library became sub-packages (0.1.0); none may disappear.
PUBLIC_0_1 = (
    "EncoderConfig", "MAEConfig", "MAEOutput", "MaskedAutoencoderViT", "Reconstruction", "ViTConfig",
    "VisionTransformer", "mae_vit_large_patch16", "param_groups_lrd", "vit_large_patch16",
)
# Named by module path in the README of 0.1.0; from 0.2.0 on they are imported from `mae.large`.
README_0_1 = (
    "attention_maps", "head_entropy", "load_image", "load_features", "open_features", "save_as", "to_huggingface",
    "export_onnx", "finetune", "FinetuneConfig", "apply_lr_scale",
)
# The jobs behind the commands: the same result from Python.
JOBS = ("reconstruct", "loss", "features", "attention", "pca", "summarize", "convert_checkpoint", "export_onnx",
        "download", "finetune", "pretrain", "evaluate_checkpoint", "knn", "probe")


@pytest.mark.parametrize("name", PUBLIC_0_1 + README_0_1 + JOBS)
def test_public_names_are_importable_from_mae_large(name: str) -> None:
    module = importlib.import_module("mae.large")
    assert name in module.__all__
    assert getattr(module, name) is not None


def test_every_export_resolves_and_all_lists_them() -> None:
    module = importlib.import_module("mae.large")
    assert sorted(module.__all__) == sorted(module._EXPORTS)
    for name in module.__all__:
        value = getattr(module, name)
        assert getattr(value, "__name__", name) == name  # the object itself, not a module of the same name


@pytest.mark.parametrize("package", ["utils", "checkpoints", "models", "data", "evaluate", "viz", "train", "jobs"])
def test_each_package_has_a_one_line_docstring_and_lists_its_modules(package: str) -> None:
    module = importlib.import_module(f"mae.large.{package}")
    assert module.__doc__ and "\n" not in module.__doc__.strip()
    found = sorted(m.name for m in pkgutil.iter_modules(module.__path__))
    assert sorted(module.__all__) == found
