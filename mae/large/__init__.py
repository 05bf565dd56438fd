"""MAE ViT-Large, rebuilt so the published checkpoints load key for key.

    from mae.large import mae_vit_large_patch16
    model = mae_vit_large_patch16()
    loss, pred, mask = model(imgs)
"""

from .config import MAEConfig
from .model import MAEOutput, MaskedAutoencoderViT, Reconstruction, mae_vit_large_patch16

__all__ = [
    "MAEConfig",
    "MAEOutput",
    "MaskedAutoencoderViT",
    "Reconstruction",
    "mae_vit_large_patch16",
]
