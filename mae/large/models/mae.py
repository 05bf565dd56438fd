"""The masked autoencoder: official `models_mae.MaskedAutoencoderViT`, self-contained.

Method names and semantics follow the official code (`patchify`, `unpatchify`, `random_masking`,
`forward_encoder`, `forward_decoder`, `forward_loss`, `forward`), so code written against it runs
unchanged. Two additions make runs reproducible and well defined:

* every masking entry point takes an optional `noise` tensor (N, L); small values are kept;
* at mask ratio 0 the loss is the mean over all patches instead of the official 0/0 = NaN.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import catalog
from ..checkpoints import load
from ..checkpoints.classify import ExpectedState, key_part
from ..checkpoints.load import LoadReport
from ..checkpoints.read import CheckpointData
from ..config import MAEConfig
from ..cost import warn_if_large
from ..errors import invalid_argument
from ..utils.device import resolve_device
from .filters import FIXED_TABLES, fit_mae_state
from .intermediates import EncoderTokens, collect_intermediates, grid_tokens
from .layers import Block, Linear, PatchEmbed, check_images, init_fresh_, init_official_, init_patch_embed_, init_token_
from .masks import check_mask, noise_for_mask
from .pos_embed import sincos_2d


class MAEOutput(NamedTuple):
    """What `forward` returns; unpacks as the official `loss, pred, mask = model(imgs)`."""

    loss: torch.Tensor  # () scalar
    pred: torch.Tensor  # (N, L, p*p*C) predicted patches (normalised targets if norm_pix_loss)
    mask: torch.Tensor  # (N, L) 1 = removed, 0 = visible


@dataclass(frozen=True)
class Reconstruction:
    """Everything one masked forward pass produces, for tools that need more than `MAEOutput`."""

    loss: torch.Tensor  # () mean over the batch, as forward()
    per_image_loss: torch.Tensor  # (N,)
    pred: torch.Tensor  # (N, L, p*p*C)
    mask: torch.Tensor  # (N, L)
    latent: torch.Tensor  # (N, 1 + kept, D) encoder output, cls token first
    ids_restore: torch.Tensor  # (N, L)


DEFAULT_MASK_RATIO = 0.75  # the official pre-training ratio


def check_mask_ratio(mask_ratio: float, num_patches: int) -> int:
    """Validate `mask_ratio` and return how many patches stay visible (the official `len_keep`)."""
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, numbers.Real):
        raise invalid_argument("mask_ratio", f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    mask_ratio = float(mask_ratio)
    if not 0.0 <= mask_ratio < 1.0:
        raise invalid_argument(
            "mask_ratio", f"mask_ratio must be in [0, 1) (at 1.0 no patch is visible to the encoder), got {mask_ratio}"
        )
    len_keep = int(num_patches * (1 - mask_ratio))
    if len_keep < 1:
        raise invalid_argument(
            "mask_ratio", f"mask_ratio={mask_ratio:g} leaves no visible patch out of {num_patches}; use a smaller ratio"
        )
    return len_keep


class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder with a ViT encoder and a light ViT decoder (He et al., CVPR 2022)."""

    def __init__(self, config: MAEConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else MAEConfig.vit_large()
        if not isinstance(config, MAEConfig):
            raise TypeError(f"config must be an MAEConfig, got {type(config).__name__}")
        self.config = config
        c = config
        warn_if_large(config)
        self.load_report: LoadReport | None = None

        # Registration order matters twice: state_dict() lists direct parameters first (cls_token,
        # pos_embed, mask_token, decoder_pos_embed) then submodules, exactly as the official files do;
        # and the random init draws from the RNG in module order, so a seeded build equals the official.
        # --- encoder ---
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Fixed sin-cos table: a parameter (it is in the checkpoint) that is never trained.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, c.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, eps=c.layer_norm_eps) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        # --- decoder ---
        self.decoder_embed = Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, c.decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, eps=c.layer_norm_eps)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.layer_norm_eps)
        self.decoder_pred = Linear(c.decoder_embed_dim, c.patch_dim)
        self.norm_pix_loss = c.norm_pix_loss

        self.initialize_weights()

    # ---- initialisation ------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """The official init: sin-cos tables, xavier-uniform on the flattened patch projection,
        normal(0.02) cls and mask tokens, then xavier Linear / unit LayerNorm everywhere.

        On the meta device (see `from_pretrained`) this only fills in nothing: there is no memory.
        """
        # The order is the official one: it decides which random numbers each tensor draws.
        self.reset_pos_embed()
        init_patch_embed_(self.patch_embed.proj)
        init_token_(self.cls_token)
        init_token_(self.mask_token)
        self.apply(init_official_)

    def initialize_decoder(self) -> None:
        """Official init of the decoder part alone (mask token and decoder modules)."""
        self.reset_pos_embed()
        init_token_(self.mask_token)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_official_)

    def init_missing_(self, names: Collection[str]) -> None:
        """The official init for the tensors `names` only (those a checkpoint did not hold): the rules of
        `initialize_weights`, and a position table is the sin-cos table of the grid."""
        init_fresh_(self, names)
        for name in FIXED_TABLES & set(names):
            table = getattr(self, name)
            table.copy_(sincos_2d(table.shape[-1], self.patch_embed.grid_size, cls_token=True).unsqueeze(0))

    @torch.no_grad()
    def reset_pos_embed(self) -> None:
        """Fill both fixed position tables with the 2-D sin-cos embedding of the current grid."""
        grid = self.patch_embed.grid_size
        for table in (self.pos_embed, self.decoder_pos_embed):
            if not table.is_meta:
                table.copy_(sincos_2d(table.shape[-1], grid, cls_token=True).unsqueeze(0))

    # ---- patches -------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), each patch row-major over (p, p) with channels last.

        `imgs` is checked and cast to the weights' dtype as for `forward` (`check_images`)."""
        return self._patchify(self._check_images(imgs))

    def _patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self.config.patch_size
        n, c, h_px, w_px = imgs.shape
        h, w = h_px // p, w_px // p
        x = imgs.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)  # (N, h, w, p, p, C)
        return x.reshape(n, h * w, p * p * c)  # (N, L, p*p*C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W); the inverse of `patchify` for this model's grid."""
        p, c = self.config.patch_size, self.config.in_chans
        if x.dim() != 3 or x.shape[-1] != p * p * c:
            raise ValueError(f"expected patches of shape (N, L, {p * p * c}), got {tuple(x.shape)}")
        h, w = self.patch_embed.grid_size
        if x.shape[1] != h * w:
            side = int(round(x.shape[1] ** 0.5))
            if side * side != x.shape[1]:
                raise ValueError(f"{x.shape[1]} patches fit neither the {h}x{w} grid nor a square one")
            h = w = side
        n = x.shape[0]
        x = x.reshape(n, h, w, p, p, c)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, p)
        return x.reshape(n, c, h * p, w * p)  # (N, C, H, W)

    # ---- masking -------------------------------------------------------------------------------
    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep the `len_keep` tokens with the smallest noise, per sample.

        x: (N, L, D). Returns the kept tokens (N, len_keep, D), the binary mask (N, L) with 1 for
        removed tokens, and `ids_restore` (N, L), the permutation that undoes the shuffle.
        With no `noise`, draws `torch.rand(N, L)` on x's device once, as the official code does.
        """
        return self._keep(x, check_mask_ratio(mask_ratio, x.shape[1]), noise)

    def _keep(
        self, x: torch.Tensor, len_keep: int, noise: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`random_masking` with the number of kept tokens given."""
        n, length, dim = x.shape
        if noise is None:
            noise = torch.rand(n, length, device=x.device)  # noise in [0, 1)
        elif noise.shape != (n, length):
            raise ValueError(f"noise must have shape (N, L) = ({n}, {length}), got {tuple(noise.shape)}")
        else:
            noise = noise.to(x.device)

        ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]  # (N, len_keep)
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).expand(-1, -1, dim))

        # float32 whatever x is, as the official torch.ones([N, L]): a half-precision mask sums to inf.
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)  # back to the original patch order
        return x_masked, mask, ids_restore

    def _masking(
        self, batch: int, mask_ratio: float | None, noise: torch.Tensor | None, mask: torch.Tensor | None,
        len_keep: int | None = None,
    ) -> tuple[int, torch.Tensor | None]:
        """(len_keep, noise) for a forward pass: from `mask_ratio` and `noise` as the official code, or from
        a user `mask`, which becomes the noise that keeps exactly its visible patches (`noise_for_mask`), or the
        number of patches kept given as `len_keep` (with `noise`: the `len_keep` smallest are kept)."""
        length = self.patch_embed.num_patches
        if len_keep is not None:
            return self._given_keep(len_keep, length, mask_ratio, mask), noise
        if mask is None:
            return check_mask_ratio(DEFAULT_MASK_RATIO if mask_ratio is None else mask_ratio, length), noise
        if noise is not None:
            raise ValueError("give either mask or noise, not both: a mask decides which patches are kept")
        mask = check_mask(mask, batch, length)
        removed = int(mask[0].sum())
        len_keep = length - removed
        if mask_ratio is not None:
            # Consistent: the ratio keeps the mask's count by the official rule, or it is the mask's own ratio
            # (removed / L, which the official int(L * (1 - r)) can round one patch short, e.g. 70 / 196).
            own = isinstance(mask_ratio, numbers.Real) and math.isclose(float(mask_ratio), removed / length,
                                                                         rel_tol=1e-12, abs_tol=0.0)
            kept = len_keep if own else check_mask_ratio(mask_ratio, length)
            if kept != len_keep:
                raise ValueError(
                    f"mask_ratio {mask_ratio} keeps {kept} of {length} patches but the mask removes {removed} and keeps "
                    f"{len_keep}; pass the mask alone, or mask_ratio={removed}/{length}"
                )
        return len_keep, noise_for_mask(mask)

    @staticmethod
    def _given_keep(len_keep: int, length: int, mask_ratio: float | None, mask: torch.Tensor | None) -> int:
        """`len_keep` checked: an integer in [1, L], given alone (a mask or a ratio says the count itself)."""
        if mask is not None or mask_ratio is not None:
            raise ValueError("give len_keep with noise alone: a mask or a mask_ratio decides the number kept itself")
        if isinstance(len_keep, bool) or not isinstance(len_keep, numbers.Integral) or not 1 <= len_keep <= length:
            raise invalid_argument("len_keep", f"len_keep must be an integer from 1 to {length} (the patches kept), "
                                               f"got {len_keep!r}")
        return int(len_keep)

    # ---- encoder / decoder ---------------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, *, len_keep: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> (latent (N, 1 + kept, D), mask (N, L), ids_restore (N, L)).

        `imgs` is checked and cast to the weights' dtype as for `forward` (`check_images`); `mask` and `len_keep` as
        for `forward`."""
        return self._encode(self._check_images(imgs), mask_ratio, noise, mask, len_keep)

    def _encode(
        self, imgs: torch.Tensor, mask_ratio: float | None, noise: torch.Tensor | None,
        mask: torch.Tensor | None = None, len_keep: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward_encoder` of checked images."""
        len_keep, noise = self._masking(imgs.shape[0], mask_ratio, noise, mask, len_keep)  # fail before any work
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self._keep(x, len_keep, noise)  # (N, kept, D)

        cls_token = self.cls_token + self.pos_embed[:, :1, :]  # (1, 1, D)
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (N, 1 + kept, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def encoder_tokens(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> EncoderTokens:
        """Images -> the tokens the first encoder block sees (cls first) and the grid index of each patch token.

        The steps of `forward_encoder` before its blocks; masking as there, except that the default is no
        masking (ratio 0, or the `mask`'s own ratio), and at ratio 0 with no `noise` the patches stay in grid
        order (no random draw)."""
        imgs = self._check_images(imgs)
        ratio = 0.0 if mask_ratio is None and mask is None else mask_ratio
        len_keep, noise = self._masking(imgs.shape[0], ratio, noise, mask)  # fail before any work
        x = self.patch_embed(imgs)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]
        cls_token = self.cls_token + self.pos_embed[:, :1, :]  # (1, 1, D)
        grid = self.patch_embed.grid_size
        if len_keep == x.shape[1] and noise is None:
            return grid_tokens(torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1), grid)  # (N, 1 + L, D)
        x, _, ids_restore = self._keep(x, len_keep, noise)  # (N, kept, D)
        ids_keep = torch.argsort(ids_restore, dim=1)[:, :len_keep]  # the inverse permutation: kept patches first
        return EncoderTokens(torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1), ids_keep, grid)

    def forward_intermediates(
        self, imgs: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False, *, mask_ratio: float | None = None,
        noise: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    ) -> list | tuple[torch.Tensor, list]:
        """The encoder's tokens after the blocks `indices` selects, with timm's signature and semantics
        (`mae.large.models.intermediates`): `(final, intermediates)`, final = the encoder output (N, 1 + T, D) through
        `norm`, or the intermediates alone. Masking as `encoder_tokens` (default: none); with masking each
        intermediate is a `KeptTokens` (tokens, patch indices) instead of a grid.

        Args:
            imgs: the normalised images (N, C, H, W) at the model's size.
            indices: None = every block, an int n = the last n, a sequence = those blocks (negative from the end).
            return_prefix_tokens: each intermediate as a `(patches, cls token (N, 1, D))` pair.
            norm: pass each intermediate through the encoder's final `norm`.
            stop_early: run the blocks only up to the deepest one selected (`final` is then that block's, normed).
            output_fmt: `NCHW` (N, D, h, w) grids or `NLC` (N, L, D) sequences (unmasked runs).
            intermediates_only: return the intermediates alone.
            mask_ratio: the share of patches removed (default none, or the `mask`'s own ratio).
            noise: (N, L) noise; the patches with the smallest values are kept, as the official `random_masking`.
            mask: a bool (N, L) or (L,) mask, True = removed, instead of `noise`.
        """
        return collect_intermediates(
            self.blocks, self.encoder_tokens(imgs, mask_ratio, noise, mask), final_norm=self.norm, indices=indices,
            return_prefix_tokens=return_prefix_tokens, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only)

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Latent (N, 1 + kept, D) -> predicted patches (N, L, p*p*C)."""
        x = self.decoder_embed(x)  # (N, 1 + kept, Dd)
        n, kept_plus_cls, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - kept_plus_cls, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # (N, L, Dd), shuffled order
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # (N, 1 + L, Dd)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # (N, 1 + L, p*p*C)
        return x[:, 1:, :]  # drop the cls token

    # ---- loss ----------------------------------------------------------------------------------
    def loss_target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Patchified images, normalised per patch when `norm_pix_loss` is on. (N, L, p*p*C)."""
        return self._loss_target(self._check_images(imgs))

    def _loss_target(self, imgs: torch.Tensor) -> torch.Tensor:
        target = self._patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def per_image_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over each image's removed patches. (N,)

        With no removed patch (mask ratio 0) the mean runs over all patches, where the official
        code divides 0 by 0 and returns NaN.
        """
        return self._per_image(self._patch_loss(self._check_images(imgs), pred), mask)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The official loss: MSE on removed patches, averaged over all removed patches of the batch."""
        return self._batch_loss(self._patch_loss(self._check_images(imgs), pred), mask)

    def _patch_loss(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Squared error per patch of checked images, (N, L)."""
        return ((pred - self._loss_target(imgs)) ** 2).mean(dim=-1)

    @staticmethod
    def _per_image(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        removed = mask.sum(dim=1)  # (N,)
        masked_mean = (loss * mask).sum(dim=1) / removed.clamp_min(1)
        return torch.where(removed > 0, masked_mean, loss.mean(dim=1))

    @staticmethod
    def _batch_loss(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Mask ratio 0: defined as the mean over all patches (official: NaN). A select, not an `if` on a value:
        # no host sync, and torch.export (the ONNX export) can trace it. A removed count is 0 or >= 1, so the
        # clamp changes nothing where the masked mean is taken.
        removed = mask.sum()
        return torch.where(removed > 0, (loss * mask).sum() / removed.clamp_min(1), loss.mean())

    # ---- forward -------------------------------------------------------------------------------
    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, *, len_keep: int | None = None,
    ) -> MAEOutput:
        """Images (N, C, H, W) -> `MAEOutput(loss, pred, mask)`, as the official model.

        The images are checked once (`check_images`: a non-empty float batch of the model's shape with
        no NaN or infinity, else a `ValueError` naming the image) and cast to the dtype of the weights
        (float64 from numpy just works); the encoder and the loss target both use the cast images.

        Masking: `mask_ratio` (default 0.75) and `noise` as the official code; or a `mask` the caller chose,
        bool (N, L) or (L,) with True = removed, the same number removed in every row (`masks.py` makes
        them). It is exactly the `noise` that ranks the kept patches first (`masks.noise_for_mask`), and the
        returned mask equals it. A `mask_ratio` passed with it must agree with it. Or `len_keep`, the number of
        patches kept, with `noise` (the `len_keep` smallest kept): what a chosen mask is inside a compiled graph,
        where its count cannot be read (`noise_for_mask(mask)` and the mask's visible count give the same pass).

        Compiled: `torch.compile(model, fullgraph=True)` makes one graph of this pass for random masks (`noise`
        and `mask_ratio`, or `len_keep`): batches of new noise reuse it. A `mask` is data whose count decides the
        shapes, so it cannot be part of a graph: give `noise_for_mask(mask)` and its `len_keep` instead (the jobs'
        `compile=True` compiles the blocks alone, so it takes any mask). The value check of the images runs inside
        the graph (`check_images`)."""
        imgs = self._check_images(imgs)
        latent, mask, ids_restore = self._encode(imgs, mask_ratio, noise, mask, len_keep)
        pred = self.forward_decoder(latent, ids_restore)  # (N, L, p*p*C)
        loss = self._batch_loss(self._patch_loss(imgs, pred), mask)
        return MAEOutput(loss, pred, mask)

    def reconstruct(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, *, len_keep: int | None = None,
    ) -> Reconstruction:
        """One masked forward pass with every intermediate result (see `Reconstruction`); the images and
        the masking are checked as for `forward` (and compile as it does)."""
        imgs = self._check_images(imgs)
        latent, mask, ids_restore = self._encode(imgs, mask_ratio, noise, mask, len_keep)
        pred = self.forward_decoder(latent, ids_restore)
        patch_loss = self._patch_loss(imgs, pred.float())
        per_image = self._per_image(patch_loss, mask.float())
        loss = self._batch_loss(patch_loss, mask.float())
        return Reconstruction(loss, per_image, pred, mask, latent, ids_restore)

    # ---- checks --------------------------------------------------------------------------------
    def _check_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """`imgs` checked (`check_images`) and in the dtype of the patch projection's weight."""
        return check_images(imgs, self.config.in_chans, self.config.img_size, dtype=self.patch_embed.proj.weight.dtype)

    # ---- loading (the chain is checkpoints/load.py; the filter is filters.fit_mae_state) ----------------------
    @classmethod
    def expected_state(cls, config: MAEConfig | None = None) -> ExpectedState:
        """Every key with its shape and part (encoder / decoder) for `config`, built on the meta device and
        cached; what `classify`, `inspect` and the download check measure a file against."""
        config = config or MAEConfig.vit_large()
        own = (config.embed_dim, config.depth, config.patch_size)
        others = [(arch.label, MAEConfig.from_architecture(name)) for name, arch in catalog.ARCHITECTURES.items()]
        alternatives = tuple((label, c) for label, c in others if (c.embed_dim, c.depth, c.patch_size) != own)
        return load.expected_state_of(MaskedAutoencoderViT, config, key_part, FIXED_TABLES, alternatives)

    def load_pretrained(self, path: str | Path, *, strict: bool = True, trust: bool = False,
                        allow_nonfinite: bool = False) -> LoadReport:
        """Load a checkpoint into this model, all or nothing (copying).

        A full file loads all tensors; an encoder-only file loads the encoder and leaves the decoder as it
        is (the official random init of a freshly built model), with a loud `UserWarning`. Anything else
        raises `IncompatibleCheckpointError` before a single tensor is copied, and a file whose tensors
        hold NaN or infinite values `NonFiniteCheckpointError`, unless `allow_nonfinite=True` (the report
        then warns, naming them).
        """
        reference = self.expected_state(self.config)
        return load.load_into(self, path, reference=reference, trust=trust, allow_nonfinite=allow_nonfinite,
                              fit=lambda data, result, model: fit_mae_state(data, result, model.config, reference, strict))

    @classmethod
    def from_pretrained(cls, path: str | Path | CheckpointData, config: MAEConfig | None = None, *,
                        trust: bool = False,
                        device: str | torch.device = "cpu", strict: bool = True,
                        allow_nonfinite: bool = False) -> MaskedAutoencoderViT:
        """Build a model straight from a checkpoint: built on the meta device, the file memory-mapped and
        its tensors assigned (no random init, no copy). Whatever the file does not hold (the decoder of an
        encoder-only file) gets the official init. Returned in eval mode; the report is `model.load_report`.

        `device` is checked first (`resolve_device`: 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'; one this
        machine lacks is a `DeviceError`). Each loaded tensor is read once for NaN / infinite values: such
        a file raises `NonFiniteCheckpointError` naming them, unless `allow_nonfinite=True`.

        Args:
            path: a checkpoint file or model folder (any layout `read_checkpoint` knows).
            config: the model to build (default: the architecture a `pretrain` run's checkpoint records, else ViT-L/16
                with the official decoder); a sin-cos table made for another grid is regenerated for its `img_size`.
            trust: read a pickle file with `weights_only=False` (its pickle may run code).
            device: where the model goes (above).
            strict: refuse a file that is neither full nor encoder-only. `False` also takes a file that only lacks
                tensors (a fine-tuned classifier, whose head is not loaded, or a partial file): the rest keeps its
                init (kind `partial`); unexpected keys, other shapes or non-float tensors are still refused.
            allow_nonfinite: load tensors holding NaN or infinite values (the report warns, naming them).
        """
        if config is None:  # a run of `pretrain` says what it trained; anything else is taken for ViT-L/16
            resolve_device(device)  # an unavailable device is said before the file is read
            path = path if isinstance(path, CheckpointData) else load.read(path, trust=trust)
            config = MAEConfig.from_run(path.run) or MAEConfig.vit_large()
        reference = cls.expected_state(config)
        model = load.from_pretrained(cls, config, path, reference=reference, trust=trust, device=device,
                                     allow_nonfinite=allow_nonfinite,
                                     fit=lambda data, result, model: fit_mae_state(data, result, config, reference, strict))
        return model.eval()


def mae_vit_large_patch16(**overrides: Any) -> MaskedAutoencoderViT:
    """The official `mae_vit_large_patch16` (= `mae_vit_large_patch16_dec512d8b`); `overrides` change
    config fields, e.g. `norm_pix_loss=True` or `img_size=320`."""
    return MaskedAutoencoderViT(MAEConfig.vit_large(**overrides))
