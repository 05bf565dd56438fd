"""MAE ViT-Large, rebuilt so the published checkpoints load key for key.

    from mae.large import mae_vit_large_patch16
    model = mae_vit_large_patch16()
    loss, pred, mask = model(imgs)

The names below are imported on first use (PEP 562), so that torch-free modules of the package
(`catalog`, `config`, `errors`) load without torch: the CLI quotes them in `--help` at no cost.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Library code logs and never prints; the application decides where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS: dict[str, str] = {
    "MAEConfig": "config",
    "EncoderConfig": "config",
    "MAEOutput": "models.mae",
    "MaskedAutoencoderViT": "models.mae",
    "Reconstruction": "models.mae",
    "mae_vit_large_patch16": "models.mae",
    "ViTConfig": "models.vit",
    "VisionTransformer": "models.vit",
    "param_groups_lrd": "models.vit",
    "vit_large_patch16": "models.vit",
}

__all__ = [
    "EncoderConfig", "MAEConfig", "MAEOutput", "MaskedAutoencoderViT", "Reconstruction", "ViTConfig",
    "VisionTransformer", "mae_vit_large_patch16", "param_groups_lrd", "vit_large_patch16",
]

if TYPE_CHECKING:  # pragma: no cover
    from .config import EncoderConfig, MAEConfig
    from .models.mae import MAEOutput, MaskedAutoencoderViT, Reconstruction, mae_vit_large_patch16
    from .models.vit import VisionTransformer, ViTConfig, param_groups_lrd, vit_large_patch16


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
