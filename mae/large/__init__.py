"""MAE ViT-Large, rebuilt so the published checkpoints load key for key.

    from mae.large import mae_vit_large_patch16
    model = mae_vit_large_patch16()
    loss, pred, mask = model(imgs)

The public API is the names below (`__all__`) and each sub-package's own `__all__`. They are imported on first
use (PEP 562), so that the torch-free modules of the package (`catalog`, `config`, `errors`, `cost`) load without
torch: the CLI quotes them in `--help` at no cost.

The packages, lowest first: `utils` < `checkpoints` < `models`, `data` < `evaluate`, `viz` < `train` < `jobs`
(one job per command: the same result from Python as from the command line).
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Library code logs and never prints; the application decides where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # models and their configurations
    "EncoderConfig": "config",
    "MAEConfig": "config",
    "MAEOutput": "models.mae",
    "MaskedAutoencoderViT": "models.mae",
    "Reconstruction": "models.mae",
    "mae_vit_large_patch16": "models.mae",
    "ViTConfig": "models.vit",
    "VisionTransformer": "models.vit",
    "apply_lr_scale": "models.vit",
    "param_groups_lrd": "models.vit",
    "vit_large_patch16": "models.vit",
    "build_mask": "models.masks",
    "parse_mask": "models.masks",
    # checkpoints
    "classify": "checkpoints.classify",
    "read_checkpoint": "checkpoints.read",
    "from_huggingface": "checkpoints.keys",
    "to_huggingface": "checkpoints.keys",
    "save_as": "checkpoints.save",
    # images, features, evaluation
    "load_image": "data.images",
    "extract_features": "evaluate.features",
    "load_feature_encoder": "evaluate.features",
    "load_features": "evaluate.store",
    "open_features": "evaluate.store",
    "save_features": "evaluate.store",
    "knn": "evaluate.knn",
    "probe": "evaluate.probe",
    "save_probe": "evaluate.probe",
    "evaluate_checkpoint": "evaluate.accuracy",
    # figures
    "attention_maps": "viz.attention",
    "head_entropy": "viz.attention",
    "rollout": "viz.attention",
    # training
    "FinetuneConfig": "train.finetune",
    "finetune": "train.finetune",
    "PretrainConfig": "train.pretrain",
    "pretrain": "train.pretrain",
    # the jobs behind the commands
    "ModelSource": "jobs.models",
    "Events": "jobs.run",
    "reconstruct": "jobs.reconstruct",
    "loss": "jobs.loss",
    "features": "jobs.features",
    "attention": "jobs.attention",
    "pca": "jobs.pca",
    "summarize": "jobs.inspect",
    "convert_checkpoint": "jobs.convert",
    "export_onnx": "jobs.onnx",
    "download": "jobs.download",
}

__all__ = ["EncoderConfig", "Events", "FinetuneConfig", "MAEConfig", "MAEOutput", "MaskedAutoencoderViT",
    "ModelSource", "PretrainConfig", "Reconstruction", "ViTConfig", "VisionTransformer", "apply_lr_scale",
    "attention", "attention_maps", "build_mask", "classify", "convert_checkpoint", "download",
    "evaluate_checkpoint", "export_onnx", "extract_features", "features", "finetune", "from_huggingface",
    "head_entropy", "knn", "load_feature_encoder", "load_features", "load_image", "loss", "mae_vit_large_patch16",
    "open_features", "param_groups_lrd", "parse_mask", "pca", "pretrain", "probe", "read_checkpoint",
    "reconstruct", "rollout", "save_as", "save_features", "save_probe", "summarize", "to_huggingface",
    "vit_large_patch16"]

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints.classify import classify
    from .checkpoints.keys import from_huggingface, to_huggingface
    from .checkpoints.read import read_checkpoint
    from .checkpoints.save import save_as
    from .config import EncoderConfig, MAEConfig
    from .data.images import load_image
    from .evaluate.accuracy import evaluate_checkpoint
    from .evaluate.features import extract_features, load_feature_encoder
    from .evaluate.knn import knn
    from .evaluate.probe import probe, save_probe
    from .evaluate.store import load_features, open_features, save_features
    from .jobs.attention import attention
    from .jobs.convert import convert_checkpoint
    from .jobs.download import download
    from .jobs.features import features
    from .jobs.inspect import summarize
    from .jobs.loss import loss
    from .jobs.models import ModelSource
    from .jobs.onnx import export_onnx
    from .jobs.pca import pca
    from .jobs.reconstruct import reconstruct
    from .jobs.run import Events
    from .models.mae import MAEOutput, MaskedAutoencoderViT, Reconstruction, mae_vit_large_patch16
    from .models.masks import build_mask, parse_mask
    from .models.vit import VisionTransformer, ViTConfig, apply_lr_scale, param_groups_lrd, vit_large_patch16
    from .train.finetune import FinetuneConfig, finetune
    from .train.pretrain import PretrainConfig, pretrain
    from .viz.attention import attention_maps, head_entropy, rollout


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
