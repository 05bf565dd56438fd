"""What a forward pass costs, from the configuration alone: no torch, so a front end can refuse an
impossible input size before it imports torch or reads a 1.3 GB checkpoint.

The work of a transformer block over T tokens of width D is about 24 T D^2 FLOPs for the projections and
the MLP (4x hidden) plus 4 T^2 D for attention; attention is the part that grows with the square of the
number of patches, and the decoder runs over *all* patches, masked or not. The attention matrix of one
head holds T^2 values: kernels that materialise it (the math path of scaled_dot_product_attention) need
that memory per head.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import EncoderConfig, MAEConfig

# Beyond this many patches (1024 x 1024 pixels at patch 16) the tools refuse unless told otherwise.
DEFAULT_MAX_PATCHES = 4096
_BYTES = 4  # float32


def _blocks_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
    projections = 2 * tokens * width * width * (4 + 2 * mlp_ratio)  # qkv (3) + proj (1) + fc1, fc2 (ratio each)
    attention = 4 * tokens * tokens * width  # q k^T and attn v
    return depth * (projections + attention)


@dataclass(frozen=True)
class Cost:
    """The estimated work and attention memory of one image."""

    num_patches: int
    flops: float  # per image, forward
    attention_bytes: int  # one head's full attention matrix over the longest sequence
    reference_flops: float  # the same model at 224 x 224

    @property
    def times_reference(self) -> float:
        return self.flops / self.reference_flops

    def describe(self) -> str:
        return (f"{self.num_patches:,} patches, about {self.flops / 1e12:.2f} TFLOP per image "
                f"({self.times_reference:,.0f}x a 224x224 image) and {self.attention_bytes / 2**20:,.0f} MiB for one "
                "attention matrix")


def forward_cost(config: EncoderConfig, mask_ratio: float = 0.0) -> Cost:
    """The cost of one image through `config`: the encoder over the visible patches, and for an
    `MAEConfig` the decoder over all of them."""

    def flops(cfg: EncoderConfig) -> tuple[float, int]:
        patches = cfg.num_patches
        kept = max(1, int(patches * (1 - mask_ratio)))
        total = _blocks_flops(1 + kept, cfg.embed_dim, cfg.depth, cfg.mlp_ratio)
        longest = 1 + kept
        if isinstance(cfg, MAEConfig):
            total += _blocks_flops(1 + patches, cfg.decoder_embed_dim, cfg.decoder_depth, cfg.mlp_ratio)
            longest = 1 + patches
        return total, longest * longest * _BYTES

    total, attention = flops(config)
    reference, _ = flops(config.replace(img_size=(224 // config.patch_size) * config.patch_size))
    return Cost(config.num_patches, total, attention, reference)


def check_patch_budget(config: EncoderConfig, max_patches: int = DEFAULT_MAX_PATCHES, mask_ratio: float = 0.0) -> Cost:
    """The cost of `config`; raises `InvalidArgumentError` (argument `max_patches`) when its patch count
    is over `max_patches`, with the estimate and how to allow it."""
    from .errors import invalid_argument

    cost = forward_cost(config, mask_ratio)
    if cost.num_patches > max_patches:
        h, w = config.img_size
        raise invalid_argument(
            "max_patches",
            f"an input of {h}x{w} pixels means {cost.describe()}, over the limit of {max_patches:,} patches; "
            f"use a smaller size, or raise the limit with max_patches={cost.num_patches} if the machine can take it",
        )
    return cost


def warn_if_large(config: EncoderConfig, max_patches: int = DEFAULT_MAX_PATCHES) -> None:
    """A `UserWarning` with the estimate when `config` is over `max_patches` (the library warns, the CLI refuses)."""
    if config.num_patches > max_patches:
        import warnings

        h, w = config.img_size
        warnings.warn(f"an input of {h}x{w} pixels means {forward_cost(config).describe()}; a forward pass may take "
                      "very long and cannot be interrupted inside a kernel", UserWarning, stacklevel=3)
