"""Key conversion as data: other layouts of the same weights -> the official MAE key names.

Each converter is a pure function `state_dict in -> state_dict out` driven by a rename table, in the
spirit of torchtune's `convert_weights.py`. A key that no rule knows raises `UnknownKeyError` naming
it; nothing is dropped silently.

Layouts handled:

* official / timm: `blocks.{i}.attn.qkv.weight` ... (timm's ViT uses the official names; its classifier
  keys `head.*`, `fc_norm.*` are split off by `split_classifier`);
* HuggingFace `ViTMAEForPreTraining` / `ViTMAEModel`, both the 4.x names
  (`vit.encoder.layer.{i}.attention.attention.query`) and the 5.x names (`vit.layers.{i}.attention.q_proj`);
  separate q, k, v projections are concatenated back into one `qkv`.
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]


class UnknownKeyError(KeyError):
    """A key that no conversion rule recognises."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a plain sentence
        return str(self.args[0]) if self.args else "unknown key"


# Wrappers that training code adds in front of every key.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

# Classifier keys of fine-tuning checkpoints (official `models_vit.py`, timm): not part of the MAE model.
CLASSIFIER_PREFIXES: tuple[str, ...] = ("head.", "fc_norm.", "head_drop.", "pre_logits.")
# Keys of the MAE decoder (official `models_mae.py`): a classifier has no use for them.
DECODER_PREFIXES: tuple[str, ...] = ("mask_token", "decoder_")

# HuggingFace block sub-keys -> official block sub-keys, per generation of transformers.
_HF4_BLOCK: dict[str, str] = {
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF5_BLOCK: dict[str, str] = {
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
# HuggingFace q, k, v projections, fused into `attn.qkv` in this order.
_HF4_QKV: tuple[str, str, str] = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
_HF5_QKV: tuple[str, str, str] = ("attention.q_proj", "attention.k_proj", "attention.v_proj")
# Where the encoder blocks live.
_HF4_ENCODER = "vit.encoder.layer"
_HF5_ENCODER = "vit.layers"

# Reading accepts both generations.
_HF_BLOCK_RENAMES: dict[str, str] = {**_HF4_BLOCK, **_HF5_BLOCK}
_HF_QKV_PARTS: dict[str, int] = {name: i for names in (_HF4_QKV, _HF5_QKV) for i, name in enumerate(names)}
# Whole-key renames of the non-block tensors.
_HF_RENAMES: dict[str, str] = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
# `vit.encoder.layer.3.` / `vit.layers.3.` / `decoder.decoder_layers.3.` -> official block prefix.
_HF_BLOCK_PREFIX = re.compile(r"^(?:(?:vit\.)?(?:encoder\.layer|layers)|(decoder)\.decoder_layers)\.(\d+)\.(.+)$")
_HF_MARKERS = ("embeddings.patch_embeddings", "encoder.layer.", "decoder.decoder_layers.", "vit.layers.")


def strip_wrappers(sd: StateDict) -> tuple[StateDict, list[str]]:
    """Remove `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes, however nested.

    Returns the new dict and the prefixes that were removed (for the load report).
    """
    removed: list[str] = []
    out: StateDict = {}
    for key, value in sd.items():
        new = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if new.startswith(prefix):
                    new = new[len(prefix):]
                    if prefix not in removed:
                        removed.append(prefix)
                    changed = True
        if new in out:
            raise UnknownKeyError(f"key {new!r} appears twice once the {removed} prefixes are removed")
        out[new] = value
    return out, removed


def is_huggingface(keys: list[str] | set[str]) -> bool:
    """True for HuggingFace ViTMAE key names (either generation)."""
    return any(marker in key for key in keys for marker in _HF_MARKERS)


def split_classifier(sd: StateDict) -> tuple[StateDict, StateDict]:
    """Split off classifier keys (`head.*`, `fc_norm.*`): returns (the rest, the classifier tensors)."""
    kept: StateDict = {}
    classifier: StateDict = {}
    for key, value in sd.items():
        (classifier if key.startswith(CLASSIFIER_PREFIXES) else kept)[key] = value
    return kept, classifier


def from_huggingface(sd: StateDict) -> StateDict:
    """HuggingFace ViTMAE names -> official names; q, k, v fused into `qkv`.

    Raises `UnknownKeyError` for a key no rule covers, or a q/k/v triple with a part missing.
    """
    out: StateDict = {}
    qkv: dict[str, list[torch.Tensor | None]] = {}  # official qkv key -> [q, k, v]
    for key, value in sd.items():
        bare = key[len("vit."):] if key.startswith("vit.") else key
        if bare in _HF_RENAMES:
            out[_HF_RENAMES[bare]] = value
            continue
        match = _HF_BLOCK_PREFIX.match(key)
        if match is None:
            raise UnknownKeyError(f"unknown HuggingFace ViTMAE key {key!r}")
        is_decoder, index, rest = match.groups()
        stem, _, leaf = rest.rpartition(".")  # leaf: weight | bias
        block = f"{'decoder_blocks' if is_decoder else 'blocks'}.{index}"
        if stem in _HF_QKV_PARTS:
            parts = qkv.setdefault(f"{block}.attn.qkv.{leaf}", [None, None, None])
            parts[_HF_QKV_PARTS[stem]] = value
        elif stem in _HF_BLOCK_RENAMES:
            out[f"{block}.{_HF_BLOCK_RENAMES[stem]}.{leaf}"] = value
        else:
            raise UnknownKeyError(f"unknown HuggingFace ViTMAE key {key!r}")
    for name, parts in qkv.items():
        if any(p is None for p in parts):
            missing = [n for n, p in zip("qkv", parts) if p is None]
            raise UnknownKeyError(f"{name}: the {', '.join(missing)} projection(s) are missing from the file")
        out[name] = torch.cat(parts, dim=0)  # type: ignore[arg-type]  # (3*D, D) or (3*D,)
    return out


def to_huggingface(sd: StateDict, new_names: bool = True) -> StateDict:
    """Official names -> HuggingFace `ViTMAEForPreTraining` names (5.x names, or 4.x with new_names=False).

    The inverse of `from_huggingface`, driven by the same tables inverted; `qkv` is split into q, k, v.
    """
    inverse = {v: k for k, v in _HF_RENAMES.items()}
    block_names = {v: k for k, v in (_HF5_BLOCK if new_names else _HF4_BLOCK).items()}
    qkv_names = _HF5_QKV if new_names else _HF4_QKV
    encoder_prefix = _HF5_ENCODER if new_names else _HF4_ENCODER
    out: StateDict = {}
    block_key = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in sd.items():
        if key in inverse:
            name = inverse[key]
            out[name if name.startswith("decoder.") else f"vit.{name}"] = value
            continue
        match = block_key.match(key)
        if match is None:
            raise UnknownKeyError(f"no HuggingFace name for key {key!r}")
        kind, index, stem, leaf = match.groups()
        prefix = f"{encoder_prefix}.{index}" if kind == "blocks" else f"decoder.decoder_layers.{index}"
        if stem == "attn.qkv":
            for name, part in zip(qkv_names, value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{leaf}"] = part.contiguous()
        elif stem in block_names:
            out[f"{prefix}.{block_names[stem]}.{leaf}"] = value
        else:
            raise UnknownKeyError(f"no HuggingFace name for key {key!r}")
    return out
