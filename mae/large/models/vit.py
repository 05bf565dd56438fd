"""The fine-tuning classifier: official `models_vit.py` and `util/lr_decay.py`.

`VisionTransformer` is the MAE encoder with a classification head. Its state_dict keys are the MAE
encoder keys (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`), so pre-trained weights
load without renaming, plus the classifier: `head.*` and either `fc_norm.*` (global pooling, where the
official code deletes `norm`) or `norm.*` (cls-token pooling).

Two differences from the MAE encoder follow the official fine-tuning code: the position table is a
*learned* parameter (initialised with the sin-cos table, then trained), and the blocks use stochastic
depth with linearly increasing rates.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from torch import nn

from ..checkpoints import load
from ..checkpoints.classify import ExpectedState
from ..checkpoints.keys import CLASSIFIER_PREFIXES, StateDict
from ..checkpoints.load import LoadReport
from ..checkpoints.read import CheckpointData
from ..config import EncoderConfig, MAEConfig
from ..cost import warn_if_large
from .filters import classifier_key_part, encoder_state_for_classifier, fit_classifier_state
from .intermediates import EncoderTokens, collect_intermediates, grid_tokens
from .layers import Block, PatchEmbed, check_images, init_fresh_, init_official_, init_patch_embed_, init_token_
from .mae import MaskedAutoencoderViT
from .pos_embed import sincos_2d

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViTConfig(EncoderConfig):
    """Shape of the classifier; defaults are the official `vit_large_patch16` fine-tuning model."""

    num_classes: int = field(default=1000, kw_only=True)  # 0: no head, forward returns the pooled features
    # Mean of the patch tokens + fc_norm (official default); else norm + cls token.
    global_pool: bool = field(default=True, kw_only=True)
    drop_path_rate: float = field(default=0.1, kw_only=True)  # stochastic depth of the last block; the first gets 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: no head), got {self.num_classes!r}")
        if not isinstance(self.global_pool, bool):
            raise ValueError(f"global_pool must be a bool, got {self.global_pool!r}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"drop_path_rate must be a number in [0, 1), got {rate!r}")

    @classmethod
    def from_mae(cls, config: MAEConfig, **overrides: Any) -> ViTConfig:
        """The classifier over the encoder of `config` (its decoder fields have no counterpart)."""
        return cls(**{**config.encoder_fields(), **overrides})

    def mae_view(self) -> MAEConfig:
        """The masked autoencoder over the same encoder: what a pre-training file is classified against."""
        return MAEConfig(**self.encoder_fields())


class VisionTransformer(nn.Module):
    """ViT classifier for fine-tuning MAE encoders (official `models_vit.VisionTransformer`)."""

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else ViTConfig()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = c = config
        warn_if_large(config)
        self.global_pool = c.global_pool
        self.grad_checkpointing = False
        self.load_report: LoadReport | None = None

        # Registration order gives the official state_dict order: cls_token, pos_embed, patch_embed,
        # blocks, [norm], head, [fc_norm] (timm registers head in its constructor; models_vit adds
        # fc_norm afterwards).
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Learned here (the MAE encoder keeps it fixed): the official fine-tuning trains it.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, c.embed_dim))
        # Stochastic depth grows linearly with depth: shallow features are kept, deep ones regularised.
        rates = torch.linspace(0, c.drop_path_rate, c.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, eps=c.layer_norm_eps, drop_path=rate) for rate in rates
        )
        if not c.global_pool:
            self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        if c.global_pool:
            self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)

        self.initialize_weights()

    # ---- initialisation ------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """Official MAE init for the encoder, then the official fine-tuning init of the head.

        Tensors on the meta device are skipped: there is nothing to fill, weights are loaded later.
        """
        with torch.no_grad():
            if not self.pos_embed.is_meta:  # sin-cos start: an untrained model already knows positions
                self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.patch_embed.grid_size, cls_token=True)[None])
        init_patch_embed_(self.patch_embed.proj)
        init_token_(self.cls_token)
        self.apply(init_official_)
        self.reset_classifier()

    def init_missing_(self, names: Collection[str]) -> None:
        """The official init for the tensors `names` only (those a checkpoint did not hold): the encoder
        rules, and the fine-tuning init for a classifier started fresh."""
        init_fresh_(self, names)
        if any(n.startswith(CLASSIFIER_PREFIXES) for n in names):
            self.reset_classifier()

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """A fresh head (`trunc_normal_(head.weight, std=2e-5)`, zero bias: main_finetune.py) and unit
        fc_norm. The tiny head weights make the initial logits ~0, so the first steps do not wreck the
        pre-trained features with large gradients."""
        if isinstance(self.head, nn.Linear) and not self.head.weight.is_meta:
            nn.init.trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)
        fc_norm = getattr(self, "fc_norm", None)
        if fc_norm is not None and not fc_norm.weight.is_meta:
            nn.init.ones_(fc_norm.weight)
            nn.init.zeros_(fc_norm.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters the official recipe exempts from weight decay (timm's hook of the same name)."""
        return {"cls_token", "pos_embed"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (training only)."""
        self.grad_checkpointing = bool(enable)

    # ---- forward -------------------------------------------------------------------------------
    def _run_blocks(self, imgs: torch.Tensor) -> torch.Tensor:
        """Images -> block output (N, 1 + L, D), cls token first. The images are checked and cast to the
        weights' dtype once, here (`check_images`)."""
        imgs = self._check_images(imgs)
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # (N, L, D)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]  # (1, 1, D)
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (N, 1 + L, D)
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            # Non-reentrant checkpointing restores the RNG state, so drop path draws the same masks
            # in the recomputation and the gradients equal those of a plain run.
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False) if checkpointing else blk(x)
        return x

    def forward_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """The token sequence after the blocks, (N, 1 + L, D).

        With `global_pool=False` it is passed through `norm`, exactly what the MAE encoder returns at
        mask ratio 0. With `global_pool=True` the model has no per-token norm (`fc_norm` normalises
        the *pooled* vector, and the official code deletes `norm`), so the raw block output is returned.
        """
        x = self._run_blocks(imgs)
        return x if self.global_pool else self.norm(x)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D): mean of the patch tokens + fc_norm, or the normed cls token.

        As every forward path, it checks the images (`check_images`: a non-empty float batch of the
        model's shape with no NaN or infinity, else a `ValueError` naming the image) and casts them to
        the weights' dtype (float64 from numpy just works)."""
        x = self._run_blocks(imgs)
        if self.global_pool:
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.norm(x)[:, 0]

    def encoder_tokens(self, imgs: torch.Tensor) -> EncoderTokens:
        """Images -> the tokens the first block sees (cls first, every patch in grid order), as `_run_blocks`."""
        imgs = self._check_images(imgs)
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]  # (N, L, D)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]  # (1, 1, D)
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (N, 1 + L, D)
        return grid_tokens(x, self.patch_embed.grid_size)

    def token_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token final norm: `norm` with cls pooling; none (identity) with global pooling, whose
        `fc_norm` normalises the pooled vector (timm's `norm` is then the identity too)."""
        return x if self.global_pool else self.norm(x)

    def forward_intermediates(
        self, imgs: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
        return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> list | tuple[torch.Tensor, list]:
        """The tokens after the blocks `indices` selects, with timm's signature and semantics
        (`mae.large.models.intermediates`): `(final, intermediates)`, final = `forward_tokens(imgs)` (N, 1 + L, D),
        or the intermediates alone. `norm=True` applies `token_norm` (nothing with global pooling).

        Args:
            imgs: the normalised images (N, C, H, W) at the model's size; every patch is seen (no masking).
            indices: None = every block, an int n = the last n, a sequence = those blocks (negative from the end).
            return_prefix_tokens: each intermediate as a `(patches, cls token (N, 1, D))` pair.
            norm: pass each intermediate through `token_norm`.
            stop_early: run the blocks only up to the deepest one selected (`final` is then that block's, through
                `token_norm`, not `forward_tokens(imgs)`).
            output_fmt: `NCHW` (N, D, h, w) grids or `NLC` (N, L, D) sequences.
            intermediates_only: return the intermediates alone.
        """
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        return collect_intermediates(
            self.blocks, self.encoder_tokens(imgs), final_norm=self.token_norm, indices=indices,
            return_prefix_tokens=return_prefix_tokens, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only, checkpointing=checkpointing)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> logits (N, num_classes), or features (N, D) when num_classes == 0."""
        return self.head(self.forward_features(imgs))

    def _check_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """`imgs` checked (`check_images`) and in the dtype of the patch projection's weight."""
        return check_images(imgs, self.config.in_chans, self.config.img_size,
                            " (the position table is interpolated on load)", dtype=self.patch_embed.proj.weight.dtype)

    # ---- loading (the chain is checkpoints/load.py; the filter is filters.fit_classifier_state) -------------------
    @classmethod
    def expected_state(cls, config: ViTConfig | None = None) -> ExpectedState:
        """Every key of the classifier with its shape and part (encoder / classifier), built on the meta
        device and cached."""
        return load.expected_state_of(VisionTransformer, config or ViTConfig(), classifier_key_part)

    def load_encoder_state(self, sd: StateDict) -> dict[str, list[str]]:
        """Load pre-trained encoder weights (official key names) and start a fresh classifier.

        All or nothing: `encoder_state_for_classifier` checks every key and shape first and raises
        `IncompatibleCheckpointError` before any tensor is copied. Returns the report:
        {"loaded", "ignored", "notes", "initialised"} lists of key names / sentences.
        """
        state, ignored, notes = encoder_state_for_classifier(sd, self)
        result = self.load_state_dict(state, strict=False)
        classifier = {k for k in self.state_dict() if k.startswith(CLASSIFIER_PREFIXES)}
        if result.unexpected_keys or set(result.missing_keys) != classifier:  # a bug here, not a bad file
            raise RuntimeError(
                f"encoder load left missing={result.missing_keys} unexpected={result.unexpected_keys}; "
                f"only the classifier {sorted(classifier)} should be missing"
            )
        self.reset_classifier()  # as main_finetune.py does after loading
        logger.info("loaded %d encoder tensors, ignored %d keys; %s", len(state), len(ignored), "; ".join(notes))
        return {"loaded": list(state), "ignored": ignored, "notes": notes, "initialised": sorted(classifier)}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | CheckpointData,
        config: ViTConfig | None = None,
        *,
        trust: bool = False,
        device: str | torch.device = "cpu",
        head: Literal["fresh", "file"] = "fresh",
        allow_nonfinite: bool = False,
        **overrides: Any,
    ) -> VisionTransformer:
        """A classifier whose encoder comes from an MAE checkpoint (encoder-only or full, any layout
        `read_checkpoint` knows, or what it returned). `overrides` change config fields, e.g. `num_classes=10,
        img_size=320`. The load report is kept as `model.load_report`.

        `head="fresh"` (fine-tuning, as main_finetune.py): the head and `fc_norm` start fresh; a trained
        classifier in the file is not used, and the report warns about it. `head="file"` (evaluating a
        fine-tuned checkpoint): the file's classifier is loaded too, and must fit the model exactly
        (the error says which `num_classes` / `global_pool` it needs).

        The module is built on the meta device and the file's tensors are assigned (memory-mapped), so
        the 300 M encoder parameters are neither initialised nor copied. `device` is checked first
        (`resolve_device`; one this machine lacks is a `DeviceError`). Each loaded tensor is read once for
        NaN / infinite values: such a file raises `NonFiniteCheckpointError` naming them, unless
        `allow_nonfinite=True` (the report then warns, naming them).

        Args:
            path: a checkpoint file or model folder (any layout `read_checkpoint` knows), or the `CheckpointData` it
                returned.
            config: the classifier to build (default `ViTConfig()`: ViT-L/16, 1000 classes, global pool), with
                `overrides` applied.
            trust: read a pickle file with `weights_only=False` (its pickle may run code).
            device: where the model goes (above).
            head: `fresh` or `file` (above).
            allow_nonfinite: load tensors holding NaN or infinite values (above).
            overrides: config fields to change.
        """
        if head not in ("fresh", "file"):
            raise ValueError(f"head must be 'fresh' (start a new classifier) or 'file' (load the file's), got {head!r}")
        config = (config or ViTConfig()).replace(**overrides)
        reference = MaskedAutoencoderViT.expected_state(config.mae_view())
        return load.from_pretrained(cls, config, path, reference=reference, trust=trust, device=device,
                                    allow_nonfinite=allow_nonfinite,
                                    fit=lambda data, result, model: fit_classifier_state(data, result, model, head))


# ---- layer-wise learning-rate decay (official util/lr_decay.py) ------------------------------------
def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Embeddings -> 0, `blocks.i` -> i + 1, everything after the blocks (norms, head) -> num_layers."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_lrd(
    model: VisionTransformer,
    weight_decay: float = 0.05,
    no_weight_decay_list: Iterable[str] = ("cls_token", "pos_embed"),
    layer_decay: float = 0.75,
) -> list[dict[str, Any]]:
    """Optimizer groups with layer-wise lr decay: the official `param_groups_lrd`.

    Group `layer_{id}_{decay|no_decay}` has `lr_scale = layer_decay ** (num_layers - id)` with
    num_layers = depth + 1, so the head trains at the full rate and the patch embedding at
    layer_decay ** (depth + 1). Biases, norms (ndim 1) and `no_weight_decay_list` get no weight decay.
    Each group also lists its `param_names` (a key torch optimizers accept and keep in their state).
    Apply the scales with `apply_lr_scale` every time the learning rate changes.
    """
    no_decay = set(no_weight_decay_list)
    num_layers = len(model.blocks) + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim == 1 or name in no_decay)
        layer_id = layer_id_for_vit(name, num_layers)
        group_name = f"layer_{layer_id}_{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(group_name, {
            "lr_scale": layer_scales[layer_id],
            "weight_decay": weight_decay if decay else 0.0,
            "params": [],
            "param_names": [],
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return list(groups.values())


def apply_lr_scale(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's lr to `lr * lr_scale` (groups without a scale get `lr`): the official
    `adjust_learning_rate` minus the schedule."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ---- the official sizes (models_vit.py) -----------------------------------------------------------
def vit_base_patch16(**overrides: Any) -> VisionTransformer:
    return VisionTransformer(ViTConfig.from_architecture("vit_base_patch16", **overrides))


def vit_large_patch16(**overrides: Any) -> VisionTransformer:
    """The classifier over the published MAE ViT-L/16 encoder; e.g. `vit_large_patch16(num_classes=10)`."""
    return VisionTransformer(ViTConfig.from_architecture("vit_large_patch16", **overrides))


def vit_huge_patch14(**overrides: Any) -> VisionTransformer:
    return VisionTransformer(ViTConfig.from_architecture("vit_huge_patch14", **overrides))
