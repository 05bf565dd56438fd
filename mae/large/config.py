"""The frozen model configurations and the official sizes.

`EncoderConfig` holds the ViT encoder every model here shares; `MAEConfig` adds the decoder of the masked
autoencoder and `ViTConfig` (in `vit.py`) the classifier's head. `MAEConfig()` with no arguments is the
official `mae_vit_large_patch16_dec512d8b`, the model behind both published ViT-Large checkpoints. Every
field is validated on construction, so an impossible shape fails here with the field's name rather than
deep inside a reshape. The official sizes come from `catalog.ARCHITECTURES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from . import catalog

Size2D = tuple[int, int]
C = TypeVar("C", bound="EncoderConfig")


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


def check_positive_int(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_sincos_width(width: int, name: str) -> None:
    if width % 4:  # the 2-D sin-cos table splits the width in two halves of sin/cos pairs
        raise ValueError(f"{name} must be a multiple of 4 for the 2-D sin-cos position table, got {width}")


@dataclass(frozen=True)
class EncoderConfig:
    """The ViT encoder shared by the masked autoencoder and the classifier; defaults are ViT-Large/16.

    Subclasses add their own fields keyword-only, after these, so the encoder fields keep their order.
    """

    img_size: Size2D = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    # The official code builds every LayerNorm with partial(nn.LayerNorm, eps=1e-6); torch's default
    # 1e-5 changes every activation slightly, so the value is part of the architecture.
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ once, here.
        object.__setattr__(self, "img_size", to_2tuple(self.img_size, "img_size"))
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            check_positive_int(self, name)
        for side, length in zip(("height", "width"), self.img_size):
            if length <= 0 or length % self.patch_size:
                raise ValueError(f"img_size {side} {length} must be a positive multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        check_sincos_width(self.embed_dim, "embed_dim")
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {ratio!r}")
        eps = self.layer_norm_eps
        if not isinstance(eps, float) or not 0 < eps < 1:
            raise ValueError(f"layer_norm_eps must be a float in (0, 1), got {eps!r}")

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
    def architecture_name(self) -> str:
        """`vit_large_patch16` for an official size, else a name spelling out the shape."""
        return catalog.architecture_name(self.embed_dim, self.depth, self.num_heads, self.patch_size)

    def encoder_fields(self) -> dict[str, Any]:
        """The encoder part of this config, to build another config over the same encoder."""
        return {f.name: getattr(self, f.name) for f in fields(EncoderConfig)}

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["img_size"] = list(self.img_size)
        return data

    @classmethod
    def from_architecture(cls: type[C], name: str | None = None, **overrides: Any) -> C:
        """The size `name` (see `catalog.ARCHITECTURES`; None: `catalog.DEFAULT_ARCHITECTURE`), with
        `overrides` applied."""
        known = {f.name for f in fields(cls)}
        arch = {k: v for k, v in catalog.architecture(name).fields().items() if k in known}
        return cls(**{**arch, **overrides})


@dataclass(frozen=True)
class MAEConfig(EncoderConfig):
    """Shape of a masked autoencoder; defaults are ViT-Large/16 with the 512-d, 8-block decoder."""

    decoder_embed_dim: int = field(default=catalog.DECODER["decoder_embed_dim"], kw_only=True)
    decoder_depth: int = field(default=catalog.DECODER["decoder_depth"], kw_only=True)
    decoder_num_heads: int = field(default=catalog.DECODER["decoder_num_heads"], kw_only=True)
    norm_pix_loss: bool = field(default=False, kw_only=True)
    name: str = field(default="", compare=False, kw_only=True)  # a label for messages; not part of equality

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
            check_positive_int(self, name)
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} must be divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        check_sincos_width(self.decoder_embed_dim, "decoder_embed_dim")
        if not isinstance(self.norm_pix_loss, bool):
            raise ValueError(f"norm_pix_loss must be a bool, got {self.norm_pix_loss!r}")

    @classmethod
    def from_run(cls, run: Mapping[str, Any] | None, **overrides: Any) -> MAEConfig | None:
        """The architecture a training run recorded in its checkpoint (`args["architecture"]`, `train.pretrain`), with
        `overrides` (e.g. another `img_size`); None when `run` records none (every other file)."""
        arch = run.get("architecture") if isinstance(run, Mapping) else None
        if not isinstance(arch, Mapping):
            return None
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if k == "img_size" else v) for k, v in arch.items() if k in known and k != "name"}
        try:
            return cls(**{**values, "norm_pix_loss": bool(arch.get("norm_pix_loss", False)), **overrides})
        except (TypeError, ValueError):
            return None

    @property
    def decoder_mlp_hidden_dim(self) -> int:
        return int(self.decoder_embed_dim * self.mlp_ratio)

    # ---- the official sizes (models_mae.py) ----------------------------------------------------
    @classmethod
    def vit_base(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_base_patch16_dec512d8b`."""
        return cls.from_architecture("vit_base_patch16", **overrides)

    @classmethod
    def vit_large(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_large_patch16_dec512d8b`: the architecture of both published ViT-L checkpoints."""
        return cls.from_architecture("vit_large_patch16", **overrides)

    @classmethod
    def vit_huge(cls, **overrides: Any) -> MAEConfig:
        """`mae_vit_huge_patch14_dec512d8b`."""
        return cls.from_architecture("vit_huge_patch14", **overrides)
