"""Attention weights of the encoder, on an explicit path beside the normal forward, and attention rollout.

The blocks keep `scaled_dot_product_attention` (fused kernels never materialise the (T, T) matrix). Here, for
the layers asked for only, the same block input goes through the same `qkv` projection once more and the
weights are formed explicitly, in float32: `softmax(q k^T * head_dim ** -0.5)`, the matrix SDPA multiplies `v`
by. The token stream itself still runs through the unchanged blocks, so it is the normal forward's bit for
bit; importing this module changes nothing else.

What is kept is what is asked (all 24 layers of full (N, heads, T, T) maps at 448 px are about 1 GB an
image): the cls token's row of each chosen layer (what the figures draw), the head-averaged maps multiplied
layer by layer for the rollout, and full maps only with `keep="full"`.

Rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers"): per layer, average the
heads, add the identity (the residual connection) and renormalise the rows, then multiply through the
layers, first at the right: R = A_{L-1} ... A_1 A_0. Its cls row says how much each input token flows into
the cls token at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import invalid_argument
from ..models.intermediates import EncoderTokens, take_indices
from ..models.mae import MaskedAutoencoderViT
from ..models.vit import VisionTransformer

__all__ = ["KEEP", "AttentionMaps", "attention_maps", "attention_probs", "head_entropy", "rollout", "top_patches"]

Keep = Literal["cls", "full"]
KEEP: tuple[str, ...] = ("cls", "full")


@dataclass(frozen=True)
class AttentionMaps:
    """Attention weights of chosen layers for a batch. Token 0 is the cls token, tokens 1.. the patch tokens,
    whose grid positions are `patches` (a masked run keeps only some patches, in the order the blocks saw)."""

    layers: tuple[int, ...]  # the chosen blocks, sorted, counted from 0
    cls: dict[int, torch.Tensor]  # layer -> (N, heads, T) float32: the cls token's attention over all T tokens
    patches: torch.Tensor  # (N, T - 1) int64: the grid index (row-major) of each patch token
    grid: tuple[int, int]  # (h, w) patch grid
    full: dict[int, torch.Tensor] | None = None  # layer -> (N, heads, T, T) float32, with keep="full"
    rollout: torch.Tensor | None = None  # (N, T) float32: the cls row of the rollout through every block

    @property
    def masked(self) -> bool:
        return self.patches.shape[1] < self.grid[0] * self.grid[1]

    def to_grid(self, values: torch.Tensor) -> torch.Tensor:
        """Per-patch-token values (N, T - 1) or (N, K, T - 1) -> the patch grid (N, [K,] h, w), NaN where a patch
        was removed."""
        lead = values.shape[:-1]
        n, kept = self.patches.shape
        if values.shape[0] != n or values.shape[-1] != kept:
            raise invalid_argument("values", f"values must be (N, ..., T - 1) = ({n}, ..., {kept}), got {tuple(values.shape)}")
        h, w = self.grid
        out = values.new_full((*lead, h * w), float("nan"))  # (N, [K,] L)
        index = self.patches.to(values.device).view(n, *([1] * (values.dim() - 2)), kept).expand_as(values)
        out.scatter_(-1, index, values)
        return out.reshape(*lead, h, w)  # (N, [K,] L) -> (N, [K,] h, w)

    def cls_to_patches(self, layer: int) -> torch.Tensor:
        """(N, heads, T - 1): the cls token's attention to each patch token at `layer` (a chosen one)."""
        if layer not in self.cls:
            raise invalid_argument("layer", f"layer {layer} was not computed; the maps hold layers {list(self.layers)}")
        return self.cls[layer][:, :, 1:]

    def heads_grid(self, layer: int) -> torch.Tensor:
        """(N, heads, h, w): each head's cls -> patch attention on the grid (NaN: removed patches)."""
        return self.to_grid(self.cls_to_patches(layer))

    def mean_grid(self, layer: int) -> torch.Tensor:
        """(N, h, w): the head-averaged cls -> patch attention on the grid."""
        return self.to_grid(self.cls_to_patches(layer).mean(dim=1))

    def rollout_grid(self) -> torch.Tensor:
        """(N, h, w): the rollout's cls -> patch weights on the grid; needs `rollout=True`."""
        if self.rollout is None:
            raise invalid_argument("rollout", "these maps have no rollout; call attention_maps(..., rollout=True)")
        return self.to_grid(self.rollout[:, 1:])


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention weights an `Attention` module applies to its input `x` (N, T, D): (N, heads, T, T)
    float32, `softmax(q k^T * head_dim ** -0.5)`, q and k from the module's own fused `qkv`."""
    n, t, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(n, t, 3, heads, head_dim)  # (N, T, 3, H, d)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).float().unbind(0)  # 3 x (N, H, T, d)
    scores = (q @ k.transpose(-2, -1)) * head_dim**-0.5  # (N, H, T, T)
    return scores.softmax(dim=-1)


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout of per-layer weights (each (N, heads, T, T), first layer first): (N, T, T)."""
    result: torch.Tensor | None = None
    for probs in attentions:
        result = _rollout_step(result, probs)
    if result is None:
        raise invalid_argument("attentions", "rollout needs the attention weights of at least one layer")
    return result


def _rollout_step(so_far: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
    a = probs.float().mean(dim=1)  # (N, T, T): heads averaged
    a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)  # the residual connection
    a = a / a.sum(dim=-1, keepdim=True)  # rows sum to 1 again
    return a if so_far is None else a @ so_far


def attention_maps(
    model: MaskedAutoencoderViT | VisionTransformer,
    imgs: torch.Tensor,
    *,
    layers: int | Sequence[int] | None = (-1,),
    mask_ratio: float | None = None,
    noise: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    keep: Keep = "cls",
    rollout: bool = False,
) -> AttentionMaps:
    """The encoder's attention weights at `layers` for the images `imgs` (N, C, H, W).

    `layers` chooses blocks as `forward_intermediates`'s `indices` (default: the last; a negative index counts
    from the end). `keep="cls"` keeps the cls token's row of each chosen layer, `keep="full"` also the full
    (N, heads, T, T) maps. `rollout=True` adds the rollout through every block (its weights are formed at
    every layer, only their head average is kept). The masked autoencoder also masks as `encoder_tokens`
    (`mask_ratio` / `noise` / `mask`; default none); the classifier sees every patch. Blocks past the last one
    needed are not run. The model's mode is used as it is (call `model.eval()` first: in train mode drop path
    changes the tokens); gradients are recorded when enabled (wrap the call in `torch.inference_mode()` to save
    memory).

    Args:
        model: a `MaskedAutoencoderViT` or a `VisionTransformer` classifier (which takes no masking).
        imgs: the normalised images (N, C, H, W) at the model's size.
        layers: an int n for the last n blocks, block indices (negative from the end), or None for all.
        mask_ratio: the share of patches removed (masked autoencoder only; default none).
        noise: (N, L) noise deciding which patches are kept, as the official masking (masked autoencoder only).
        mask: a bool (N, L) or (L,) mask, True = removed, instead of `noise` (masked autoencoder only).
        keep: `cls` or `full` (above).
        rollout: also compute the rollout through every block (above).
    """
    if keep not in KEEP:
        raise invalid_argument("keep", f"keep must be 'cls' (the cls rows) or 'full' (every (T, T) map), got {keep!r}")
    tokens = _encoder_tokens(model, imgs, mask_ratio, noise, mask)
    blocks = list(model.blocks)
    chosen = take_indices(len(blocks), layers, "layers")
    last = len(blocks) - 1 if rollout else chosen[-1]
    cls: dict[int, torch.Tensor] = {}
    full: dict[int, torch.Tensor] | None = {} if keep == "full" else None
    rolled: torch.Tensor | None = None
    x = tokens.x
    for i, blk in enumerate(blocks[: last + 1]):
        if i in chosen or rollout:
            probs = attention_probs(blk.attn, blk.norm1(x))  # (N, H, T, T), the weights SDPA applies in blk
            if i in chosen:
                cls[i] = probs[:, :, 0].clone()  # (N, H, T): a copy, so the full maps can be freed
                if full is not None:
                    full[i] = probs
            if rollout:
                rolled = _rollout_step(rolled, probs)
            del probs
        x = blk(x)  # the unchanged block: the stream is the normal forward's
    return AttentionMaps(tuple(chosen), cls, tokens.patches[:, :], tokens.grid, full,
                         None if rolled is None else rolled[:, 0].clone())


def _encoder_tokens(model: nn.Module, imgs: torch.Tensor, mask_ratio: float | None, noise: torch.Tensor | None,
                    mask: torch.Tensor | None) -> EncoderTokens:
    if isinstance(model, MaskedAutoencoderViT):
        return model.encoder_tokens(imgs, mask_ratio, noise, mask)
    if isinstance(model, VisionTransformer):
        if mask_ratio or noise is not None or mask is not None:
            raise invalid_argument("mask_ratio", "the classifier (VisionTransformer) sees every patch; mask with a "
                                                 "MaskedAutoencoderViT (from_pretrained loads the same encoder)")
        return model.encoder_tokens(imgs)
    raise TypeError(f"model must be a MaskedAutoencoderViT or a VisionTransformer, got {type(model).__name__}")


def head_entropy(maps: AttentionMaps, layer: int) -> torch.Tensor:
    """(N, heads): the entropy (nats) of each head's cls -> patch attention, renormalised over the patch tokens
    (the cls token's weight on itself left out). log(T - 1) is uniform attention; low values are focused heads."""
    p = maps.cls_to_patches(layer).double()  # (N, H, T - 1)
    p = p / p.sum(dim=-1, keepdim=True)
    return -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1).float()


def top_patches(maps: AttentionMaps, layer: int, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` patches the cls token attends to most at `layer`, heads averaged: (weights (N, k), grid indices
    (N, k)), largest first."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise invalid_argument("k", f"k must be a positive integer, got {k!r}")
    mean = maps.cls_to_patches(layer).mean(dim=1)  # (N, T - 1)
    values, order = mean.topk(min(k, mean.shape[-1]), dim=-1)
    return values, torch.gather(maps.patches.to(order.device), 1, order)
