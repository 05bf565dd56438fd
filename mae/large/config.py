"""The frozen model configuration and the official sizes.

`MAEConfig()` with no arguments is the official `mae_vit_large_patch16_dec512d8b`: the model behind both
published ViT-Large checkpoints. Every field is validated on construction, so an impossible shape fails
here with the field's name rather than deep inside a reshape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

Size2D = tuple[int, int]


def to_2tuple(value: int | tuple[int, int] | list[int], name: str) -> Size2D:
    """`224` -> `(224, 224)`; `(224, 320)` stays. Raises `ValueError` naming `name` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")


def _check_positive_int(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def validate_encoder_fields(config: Any) -> None:
    """Checks shared by every ViT configuration (MAE and classifier): raise `ValueError` naming the field.

    `config.img_size` must already be a (height, width) pair.
    """
    for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
        _check_positive_int(config, name)
    for side, length in zip(("height", "width"), config.img_size):
        if length <= 0 or length % config.patch_size:
            raise ValueError(f"img_size {side} {length} must be a positive multiple of patch_size {config.patch_size}")
    if config.embed_dim % config.num_heads:
        raise ValueError(f"embed_dim {config.embed_dim} must be divisible by num_heads {config.num_heads}")
    if config.embed_dim % 4:  # the 2-D sin-cos table splits the width in two halves of sin/cos pairs
        raise ValueError(f"embed_dim must be a multiple of 4 for the 2-D sin-cos position table, got {config.embed_dim}")
    ratio = config.mlp_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ValueError(f"mlp_ratio must be a positive number, got {ratio!r}")
    eps = config.layer_norm_eps
    if not isinstance(eps, float) or not 0 < eps < 1:
        raise ValueError(f"layer_norm_eps must be a float in (0, 1), got {eps!r}")


@dataclass(frozen=True)
class MAEConfig:
    """Shape of a masked autoencoder; defaults are ViT-Large/16 with the 512-d, 8-block decoder."""

    img_size: Size2D = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    # The official code builds every LayerNorm with partial(nn.LayerNorm, eps=1e-6); torch's default
    # 1e-5 changes every activation slightly, so the value is part of the architecture.
    layer_norm_eps: float = 1e-6
    name: str = field(default="", compare=False)  # a label for messages; not part of equality

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ once, here.
        object.__setattr__(self, "img_size", to_2tuple(self.img_size, "img_size"))
        validate_encoder_fields(self)
        for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            _check_positive_int(self, name)
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} must be divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.decoder_embed_dim % 4:
            raise ValueError("decoder_embed_dim must be a multiple of 4 for the 2-D sin-cos position table")
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(f"norm_pix_loss must be a bool, got {self.norm_pix_loss!r}")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def grid_size(self) -> Size2D:
        """Patches per side, (rows, columns)."""
        return (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def patch_dim(self) -> int:
        """Values per patch in `patchify` order: p * p * C."""
        return self.patch_size * self.patch_size * self.in_chans

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def decoder_mlp_hidden_dim(self) -> int:
        return int(self.decoder_embed_dim * self.mlp_ratio)

    def replace(self, **changes: Any) -> MAEConfig:
        """A copy with `changes` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["img_size"] = list(self.img_size)
        return data

    # ---- the official sizes (models_mae.py) ----------------------------------------------------
    @classmethod
    def vit_base(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_base_patch16_dec512d8b`."""
        return cls(**{"embed_dim": 768, "depth": 12, "num_heads": 12, "name": "vit_base_patch16", **overrides})

    @classmethod
    def vit_large(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_large_patch16_dec512d8b`: the architecture of both published ViT-L checkpoints."""
        return cls(**{"name": "vit_large_patch16", **overrides})

    @classmethod
    def vit_huge(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_huge_patch14_dec512d8b`."""
        return cls(**{"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16,
                      "name": "vit_huge_patch14", **overrides})
