"""MAE ViT-Large, rebuilt so the published checkpoints load key for key.

    from mae.large import mae_vit_large_patch16
    model = mae_vit_large_patch16()
    loss, pred, mask = model(imgs)
"""

import logging

from .config import MAEConfig
from .model import MAEOutput, MaskedAutoencoderViT, Reconstruction, mae_vit_large_patch16
from .vit import VisionTransformer, ViTConfig, param_groups_lrd, vit_large_patch16

# Library code logs and never prints; the application decides where records go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoderViT",
    "Reconstruction",
    "ViTConfig",
    "VisionTransformer",
    "mae_vit_large_patch16",
    "param_groups_lrd",
    "vit_large_patch16",
]
