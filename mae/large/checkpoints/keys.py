"""Key conversion as data: other layouts of the same weights -> the official MAE key names.

Each converter is a pure function `state_dict in -> state_dict out` driven by a rename table, in the
spirit of torchtune's `convert_weights.py`. A key that no rule knows raises `UnknownKeyError` naming
it; nothing is dropped silently.

Layouts handled:

* official / timm: `blocks.{i}.attn.qkv.weight` ... (timm's ViT uses the official names; its classifier
  keys `head.*`, `fc_norm.*` are split off by `split_classifier`);
* HuggingFace `ViTMAEForPreTraining` / `ViTMAEModel` (the latter without the `vit.` prefix): the 4.x names
  (`vit.encoder.layer.{i}.attention.attention.query`, decoder `decoder.decoder_layers.{i}`), the 5.x in-memory
  names (`vit.layers.{i}.attention.q_proj`) and what 5.x `save_pretrained` writes (4.x encoder names, decoder
  `decoder.decoder_encoder.layer.{i}`); separate q, k, v projections are concatenated back into one `qkv`;
* mmpretrain (and mmselfsup 1.x, merged into it) MAE pre-training checkpoints: `backbone.*` / `neck.*`.

`LAYOUTS` names every layout `checkpoint.read_checkpoint` tells apart.

Writing (`save.save_as`) inverts the same tables: official names -> a `{"model": sd}` file in the official key
order (`official_order`), a safetensors file, a HuggingFace model folder (4.x names) or a timm encoder file (`to_timm`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from . import containers as formats

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

# The layouts a checkpoint is read from, as `CheckpointData.layout` and `inspect` name them.
LAYOUTS: dict[str, str] = {
    "official": "official MAE names in a PyTorch pickle (models_mae.py)",
    "safetensors": "official MAE names in a safetensors file",
    "hf4": "HuggingFace ViTMAE names of transformers 4.x",
    "hf5": "HuggingFace ViTMAE names of transformers 5.x",
    "hf-folder": "a transformers model folder (config.json + weights; a hub snapshot too)",
    "timm": "timm ViT names (the official ones) with a classifier head",
    "mmpretrain": "mmpretrain / mmselfsup MAE names (backbone.* / neck.*)",
}

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
# Where the decoder blocks live: 4.x (and 5.x in memory), and what 5.x `save_pretrained` writes. transformers 5.x
# writes the 4.x names back when saving by reversing its load-time renames (transformers 5.24.0
# `conversion_mapping.py`, entry "ViTModel": `encoder\.layer\.` -> `layers.`); reversed, the pattern `layers.` is
# not anchored and also turns `decoder_layers.` into `decoder_encoder.layer.`.
_HF4_DECODER = "decoder.decoder_layers"
_HF5_SAVED_DECODER = "decoder.decoder_encoder.layer"
# `vit.encoder.layer.3.` / `vit.layers.3.` / `decoder.decoder_layers.3.` / `decoder.decoder_encoder.layer.3.` ->
# official block prefix (`vit.` is absent from a `ViTMAEModel`'s keys).
_HF_BLOCK_PREFIX = re.compile(
    r"^(?:(?:vit\.)?(?:encoder\.layer|layers)|(decoder)\.(?:decoder_layers|decoder_encoder\.layer))\.(\d+)\.(.+)$")
_HF_MARKERS = ("embeddings.patch_embeddings", "encoder.layer.", f"{_HF4_DECODER}.", f"{_HF5_SAVED_DECODER}.",
               "vit.layers.")
# Names only transformers 5.x writes (in memory or saved); the rest of a 5.x file is spelled as in 4.x.
_HF5_MARKERS = (f"{_HF5_SAVED_DECODER}.", "attention.q_proj.", "attention.o_proj.", ".mlp.fc1.")


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


def huggingface_generation(keys: list[str] | set[str]) -> str:
    """`hf5` when a key is spelled as only transformers 5.x spells it, else `hf4`. A 5.x `ViTMAEModel` file has
    no decoder and so the very names of 4.x: it reads as `hf4` (a folder's config.json names its version)."""
    return "hf5" if any(marker in key for key in keys for marker in _HF5_MARKERS) else "hf4"


def split_classifier(sd: StateDict) -> tuple[StateDict, StateDict]:
    """Split off classifier keys (`head.*`, `fc_norm.*`): returns (the rest, the classifier tensors)."""
    kept: StateDict = {}
    classifier: StateDict = {}
    for key, value in sd.items():
        (classifier if key.startswith(CLASSIFIER_PREFIXES) else kept)[key] = value
    return kept, classifier


def from_huggingface(sd: StateDict) -> StateDict:
    """HuggingFace ViTMAE names -> official names; q, k, v fused into `qkv`.

    Raises `UnknownKeyError` for a key no rule covers, two keys naming the same tensor (a file mixing the
    generations' names), or a q/k/v triple with a part missing.
    """
    out: StateDict = {}
    qkv: dict[str, list[torch.Tensor | None]] = {}  # official qkv key -> [q, k, v]
    source: dict[str, str] = {}  # what each key becomes (an official name, or a q/k/v part) -> that key

    def claim(target: str, key: str) -> None:
        if target in source:
            raise UnknownKeyError(f"keys {source[target]!r} and {key!r} name the same tensor; the file mixes two "
                                  "layouts, save it again from one model")
        source[target] = key

    for key, value in sd.items():
        bare = key[len("vit."):] if key.startswith("vit.") else key
        if bare in _HF_RENAMES:
            claim(_HF_RENAMES[bare], key)
            out[_HF_RENAMES[bare]] = value
            continue
        match = _HF_BLOCK_PREFIX.match(key)
        if match is None:
            raise UnknownKeyError(f"unknown HuggingFace ViTMAE key {key!r}")
        is_decoder, index, rest = match.groups()
        stem, _, leaf = rest.rpartition(".")  # leaf: weight | bias
        block = f"{'decoder_blocks' if is_decoder else 'blocks'}.{index}"
        if stem in _HF_QKV_PARTS:
            claim(f"{block}.attn.qkv.{leaf}[{_HF_QKV_PARTS[stem]}]", key)
            parts = qkv.setdefault(f"{block}.attn.qkv.{leaf}", [None, None, None])
            parts[_HF_QKV_PARTS[stem]] = value
        elif stem in _HF_BLOCK_RENAMES:
            claim(f"{block}.{_HF_BLOCK_RENAMES[stem]}.{leaf}", key)
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
        prefix = f"{encoder_prefix}.{index}" if kind == "blocks" else f"{_HF4_DECODER}.{index}"
        if stem == "attn.qkv":
            for name, part in zip(qkv_names, value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{leaf}"] = part.contiguous()
        elif stem in block_names:
            out[f"{prefix}.{block_names[stem]}.{leaf}"] = value
        else:
            raise UnknownKeyError(f"no HuggingFace name for key {key!r}")
    return out


# ================================================================================================
# mmpretrain / mmselfsup
# ================================================================================================
# mmpretrain 1.2.0 (open-mmlab/mmpretrain at ee7f2e88501f61aa95c742dd5f429f039935ee90), the `MAE` self-supervisor:
# `backbone` is `MAEViT` (mmpretrain/models/selfsup/mae.py), a `VisionTransformer`
# (mmpretrain/models/backbones/vision_transformer.py: `patch_embed.projection`, `layers.{i}`, final norm `ln1`);
# each `TransformerEncoderLayer` holds `ln1`, `attn.qkv` / `attn.proj` (mmpretrain/models/utils/attention.py
# `MultiheadAttention`), `ln2` and mmcv's `FFN` (mmcv 2.2.0 mmcv/cnn/bricks/transformer.py: `layers.0.0` the first
# Linear inside a Sequential with the activation, `layers.1` the second); `neck` is `MAEPretrainDecoder`
# (mmpretrain/models/necks/mae_neck.py), whose decoder norm mmcv's `build_norm_layer(..., postfix=1)` names `ln1`.
# The head (`MAEPretrainHead`) holds no tensors and the data preprocessor's mean / std are not persistent.
# mmselfsup 1.x was merged into mmpretrain with these names. mmengine saves `{"meta", "state_dict", ...}`.
MMPRETRAIN_RENAMES: dict[str, str] = {
    "backbone.cls_token": "cls_token",
    "backbone.pos_embed": "pos_embed",
    "backbone.patch_embed.projection.weight": "patch_embed.proj.weight",
    "backbone.patch_embed.projection.bias": "patch_embed.proj.bias",
    "backbone.ln1.weight": "norm.weight",
    "backbone.ln1.bias": "norm.bias",
    "neck.mask_token": "mask_token",
    "neck.decoder_pos_embed": "decoder_pos_embed",
    "neck.decoder_embed.weight": "decoder_embed.weight",
    "neck.decoder_embed.bias": "decoder_embed.bias",
    "neck.ln1.weight": "decoder_norm.weight",
    "neck.ln1.bias": "decoder_norm.bias",
    "neck.decoder_pred.weight": "decoder_pred.weight",
    "neck.decoder_pred.bias": "decoder_pred.bias",
}
# mmpretrain block prefix -> official block prefix.
MMPRETRAIN_BLOCKS: dict[str, str] = {"backbone.layers": "blocks", "neck.decoder_blocks": "decoder_blocks"}
# mmpretrain block sub-keys -> official block sub-keys.
MMPRETRAIN_BLOCK: dict[str, str] = {
    "ln1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "ln2": "norm2",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_MM_BLOCK_KEY = re.compile(r"^(backbone\.layers|neck\.decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_OFFICIAL_BLOCK_KEY = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")


def is_mmpretrain(keys: list[str] | set[str]) -> bool:
    """True for mmpretrain / mmselfsup MAE names (`backbone.layers.*`, `backbone.patch_embed.projection.*`)."""
    return any(key.startswith(("backbone.layers.", "backbone.patch_embed.projection.")) for key in keys)


def _rename_blocks(sd: StateDict, renames: dict[str, str], blocks: dict[str, str], block: dict[str, str],
                   pattern: re.Pattern[str], what: str) -> StateDict:
    """Rename by whole-key table, then block keys `<prefix>.<i>.<sub>.<leaf>` by the prefix and sub-key tables."""
    out: StateDict = {}
    for key, value in sd.items():
        if key in renames:
            out[renames[key]] = value
            continue
        match = pattern.match(key)
        if match is None or match.group(3) not in block:
            raise UnknownKeyError(f"unknown {what} key {key!r}")
        prefix, index, stem, leaf = match.groups()
        out[f"{blocks[prefix]}.{index}.{block[stem]}.{leaf}"] = value
    return out


def from_mmpretrain(sd: StateDict) -> StateDict:
    """mmpretrain / mmselfsup MAE names -> official names (a one-to-one rename: mmpretrain fuses qkv too)."""
    return _rename_blocks(sd, MMPRETRAIN_RENAMES, MMPRETRAIN_BLOCKS, MMPRETRAIN_BLOCK, _MM_BLOCK_KEY,
                          "mmpretrain MAE")


def to_mmpretrain(sd: StateDict) -> StateDict:
    """Official names -> mmpretrain MAE names: `from_mmpretrain`'s tables inverted."""
    return _rename_blocks(sd, {v: k for k, v in MMPRETRAIN_RENAMES.items()}, {v: k for k, v in MMPRETRAIN_BLOCKS.items()},
                          {v: k for k, v in MMPRETRAIN_BLOCK.items()}, _OFFICIAL_BLOCK_KEY, "official MAE")


# ================================================================================================
# transformers config.json
# ================================================================================================
# `ViTMAEConfig` field -> the model config's attribute holding the same size (both `MAEConfig` and `ViTConfig`
# have the encoder's; only `MAEConfig` the decoder's). A folder whose config.json disagrees on any is refused.
HF_CONFIG_SIZES: dict[str, str] = {
    **{name: attr for name, attr in formats.HF_CONFIG_FIELDS.items() if name != "layer_norm_eps"},  # the writer's table
    "image_size": "img_size",  # written apart (an int, or [h, w] for a non-square model)
}
# The activation of the official blocks (nn.GELU: the exact, erf form); transformers calls it "gelu".
HF_ACTIVATION = "gelu"


# ================================================================================================
# The official order; timm
# ================================================================================================
# The official key order is `MaskedAutoencoderViT(config).state_dict()`'s (a classifier's `head`, `fc_norm` where
# `vit.VisionTransformer` registers them, after models_vit): a module's own tensors first, then its submodules in
# registration order. Kept as ranks, so that any part (encoder-only, classifier) sorts alike.
_OFFICIAL_ORDER: tuple[str, ...] = (
    "cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed.proj", "blocks", "norm", "head",
    "fc_norm", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred",
)
_TENSOR_KEYS = frozenset({"cls_token", "pos_embed", "mask_token", "decoder_pos_embed"})  # no .weight / .bias
_BLOCK_ORDER: tuple[str, ...] = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_LEAF_ORDER: tuple[str, ...] = ("weight", "bias")
_BLOCK_KEY = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)$")


def official_order(keys: Iterable[str]) -> list[str]:
    """`keys` (official names) in the official state-dict order; `UnknownKeyError` for a name that is not one."""

    def rank(key: str) -> tuple[int, int, int, int]:
        match = _BLOCK_KEY.match(key)
        if match is not None and match.group(3) in _BLOCK_ORDER:
            part, index, stem, leaf = match.groups()
            return _OFFICIAL_ORDER.index(part), int(index), _BLOCK_ORDER.index(stem), _LEAF_ORDER.index(leaf)
        if key in _TENSOR_KEYS:
            return _OFFICIAL_ORDER.index(key), 0, 0, 0
        module, _, leaf = key.rpartition(".")
        if module in _OFFICIAL_ORDER and module not in _TENSOR_KEYS | {"blocks", "decoder_blocks"} and leaf in _LEAF_ORDER:
            return _OFFICIAL_ORDER.index(module), 0, 0, _LEAF_ORDER.index(leaf)
        raise UnknownKeyError(f"{key!r} is not an official MAE / ViT key name; read other layouts with read_checkpoint first")

    return sorted(keys, key=rank)


def to_timm(sd: StateDict) -> tuple[StateDict, list[str]]:
    """Official names -> timm `VisionTransformer` names: (the encoder and classifier tensors, the dropped decoder keys).

    timm's ViT keeps the official names (MAE was built on it): `vit_large_patch16_224.mae` holds exactly the encoder
    (cls_token, pos_embed, patch_embed, blocks, the final norm; `num_classes=0`, `global_pool='token'`, so `norm` is
    kept and there is no `fc_norm`), a fine-tuned classifier adds `fc_norm` and `head` (`global_pool='avg'`). The
    decoder has no place in it, and a `mask_token` would send timm's `checkpoint_filter_fn` down its DINOv2
    conversion: the decoder is dropped. Checked against huggingface/pytorch-image-models
    `timm/models/vision_transformer.py` (timm 1.0.29.dev0, commit aa4b5850c1543fa488abf260f18390eda46cf85d):
    `VisionTransformer.__init__`, `checkpoint_filter_fn`, the `vit_large_patch16_224.mae` entry of `default_cfgs`.
    """
    kept = {k: v for k, v in sd.items() if not k.startswith(DECODER_PREFIXES)}
    return kept, [k for k in sd if k not in kept]
