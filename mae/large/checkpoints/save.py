"""Writing checkpoints: a model or an official state dict -> an official, safetensors, HuggingFace or timm file.

`save_as` orders and renames the tensors with the tables of `keys` (inverted), checks them (sizes against the
config, NaN / Inf), and hands them to the containers of `containers`, which write atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import EncoderConfig, MAEConfig
from ..errors import NonFiniteCheckpointError, invalid_argument, short_list
from ..utils.nonfinite import describe_nonfinite, nonfinite_tensors
from . import containers as formats
from .containers import SaveReport
from .keys import CLASSIFIER_PREFIXES, DECODER_PREFIXES, StateDict, UnknownKeyError, official_order, to_huggingface, to_timm

Format = Literal["official", "safetensors", "hf", "timm"]
FORMATS: tuple[str, ...] = ("official", "safetensors", "hf", "timm")


def check_sizes(sd: Mapping[str, torch.Tensor], config: EncoderConfig) -> None:
    """The sizes a `config.json` will state must be those of the tensors (the number of heads cannot be checked:
    no tensor has it). `InvalidArgumentError` about `config` otherwise."""
    stated: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, config.embed_dim),
        "pos_embed": (1, config.num_patches + 1, config.embed_dim),
        "patch_embed.proj.weight": (config.embed_dim, config.in_chans, config.patch_size, config.patch_size),
        "blocks.0.mlp.fc1.weight": (config.mlp_hidden_dim, config.embed_dim),
    }
    wrong = [f"{k} {list(sd[k].shape)}, config {list(v)}" for k, v in stated.items() if k in sd and tuple(sd[k].shape) != v]
    wrong += [f"{k} missing" for k in stated if k not in sd]
    depths = {"blocks": config.depth}
    if "decoder_embed.weight" in sd:
        if not isinstance(config, MAEConfig):
            raise invalid_argument("config", "the weights hold a decoder but the config has none; pass an MAEConfig")
        depths["decoder_blocks"] = config.decoder_depth
        decoder = {"decoder_embed.weight": (config.decoder_embed_dim, config.embed_dim),
                   "decoder_blocks.0.mlp.fc1.weight": (config.decoder_mlp_hidden_dim, config.decoder_embed_dim)}
        wrong += [f"{k} {list(sd[k].shape)}, config {list(v)}" for k, v in decoder.items()
                  if k in sd and tuple(sd[k].shape) != v]
    for prefix, depth in depths.items():
        found = {int(k.split(".")[1]) for k in sd if k.startswith(f"{prefix}.")}
        if found != set(range(depth)):
            wrong.append(f"{len(found)} {prefix.replace('_', ' ')}, config {depth}")
    if wrong:
        raise invalid_argument("config", f"the weights do not have the sizes of the config ({short_list(wrong)}); "
                                         "pass the config of these weights")


def save_as(state: Mapping[str, torch.Tensor] | torch.nn.Module, path: str | Path, format: Format, *,
            config: EncoderConfig | None = None, norm_pix_loss: bool | None = None, mask_ratio: float = 0.75,
            overwrite: bool = False, allow_nonfinite: bool = False) -> SaveReport:
    """Write a model, or a state dict in official names (a classifier's `head.*` / `fc_norm.*` included), as `format`.

    * `official`: `torch.save({"model": sd})` in the official key order;
    * `safetensors`: the official names in a `.safetensors` file;
    * `hf`: a folder that `transformers.ViTMAEForPreTraining.from_pretrained(path)` loads with no missing or
      unexpected key (`ViTMAEModel` for an encoder-only input): `config.json` (the sizes of `config`, its
      `layer_norm_eps`, `norm_pix_loss`, `mask_ratio`) and `model.safetensors` under the 4.x names, which 4.x and
      5.x both load. A classifier has no ViTMAE counterpart: refused;
    * `timm`: a safetensors file of the encoder as timm's `vit_large_patch16_224.mae` holds it (`to_timm`).

    The write is atomic. Tensors are written as they are (dtype and bits): reading the output back
    (`checkpoint.read_checkpoint`) gives them equal bit for bit. Returns a `SaveReport`.

    Args:
        state: a model (its `state_dict()`, and its `config` unless `config` is given) or a state dict in official names.
        path: the file to write, or the folder for `hf`.
        format: `official`, `safetensors`, `hf` or `timm` (above).
        config: the sizes `hf` states in `config.json`, checked against the tensors, and that the `timm` note names
            (default: a model's own, else `MAEConfig()`).
        norm_pix_loss: `config.json`'s `norm_pix_loss` (`hf` only; default: the config's, else False).
        mask_ratio: `config.json`'s `mask_ratio` (`hf` only); 0.75 is the official pre-training mask ratio.
        overwrite: replace an existing output (else it is refused).
        allow_nonfinite: write tensors holding NaN or infinite values (else they are refused, named, and nothing is
            written).
    """
    if format not in FORMATS:
        raise invalid_argument("format", f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if isinstance(state, torch.nn.Module):
        config = config or getattr(state, "config", None)
        state = state.state_dict()
    config = config or MAEConfig()
    path = Path(path).expanduser()
    formats.check_target(path, folder=format == "hf", overwrite=overwrite)
    sd = {k: state[k] for k in official_order(state)}
    decoder = [k for k in sd if k.startswith(DECODER_PREFIXES)]
    classifier = any(k.startswith(CLASSIFIER_PREFIXES) for k in sd)
    kind = "fine-tuned" if classifier else "full" if decoder else "encoder-only"
    if kind == "fine-tuned" and decoder:
        raise UnknownKeyError("the state dict holds both a decoder and a classifier head; write one model at a time")
    dropped: list[str] = []
    if format == "timm":
        sd, dropped = to_timm(sd)
    counts = nonfinite_tensors(sd)
    if counts and not allow_nonfinite:
        raise NonFiniteCheckpointError(
            f"the weights hold NaN or infinite values ({describe_nonfinite(counts, sd)}), so nothing was written "
            f"to {path}; pass allow_nonfinite=True to write them anyway")
    sd = {k: formats.compact(v) for k, v in sd.items()}
    hf_config: dict[str, Any] = {}
    if format == "official":
        formats.write_torch(sd, path)
        notes = ["torch.save({'model': state_dict}) in the official key order"]
    elif format == "safetensors":
        formats.write_safetensors(sd, path)
        notes = ["official key names in a safetensors file"]
    elif format == "timm":
        formats.write_safetensors(sd, path)
        notes = [_timm_note(kind, sd, config)]
    else:
        hf_config, notes = _write_hf(sd, path, kind, config, norm_pix_loss, mask_ratio, overwrite)
    return SaveReport(path, format, kind, len(sd), dropped, notes, formats.size_on_disk(path), counts, hf_config)


def _write_hf(sd: StateDict, path: Path, kind: str, config: EncoderConfig, norm_pix_loss: bool | None,
              mask_ratio: float, overwrite: bool) -> tuple[dict[str, Any], list[str]]:
    """The HuggingFace folder of a pre-training model (`ViTMAEForPreTraining`) or an encoder (`ViTMAEModel`)."""
    if kind == "fine-tuned":
        raise invalid_argument("format", "a fine-tuned classifier has no HuggingFace ViTMAE counterpart (ViTMAE has no "
                                         "classification head, and a global-pool classifier lacks the final norm); "
                                         "write it as official, safetensors or timm")
    check_sizes(sd, config)
    encoder_only = kind == "encoder-only"
    if not encoder_only and config.img_size[0] != config.img_size[1]:
        raise invalid_argument("format", f"transformers' ViTMAEForPreTraining builds square models only (its decoder's "
                                         f"position table and patchify assume one), and this one is "
                                         f"{config.img_size[0]}x{config.img_size[1]}; write it as official or "
                                         "safetensors, or the encoder alone from an encoder-only file")
    names = to_huggingface(sd, new_names=False)
    if encoder_only:  # ViTMAEModel is the base model itself: its own keys carry no `vit.` prefix
        names = {k.removeprefix("vit."): v for k, v in names.items()}
    norm_pix = bool(getattr(config, "norm_pix_loss", False) if norm_pix_loss is None else norm_pix_loss)
    data = formats.hf_config(config, encoder_only=encoder_only, norm_pix_loss=norm_pix, mask_ratio=mask_ratio)
    formats.write_hf_folder(names, data, path, overwrite=overwrite)
    if encoder_only:
        notes = ["encoder-only source: a ViTMAEModel folder (there is no decoder to write); load it with "
                 "transformers.ViTMAEModel.from_pretrained(path)"]
    else:
        notes = [f"a ViTMAEForPreTraining folder (norm_pix_loss={norm_pix}, mask_ratio={mask_ratio}); load it with "
                 "transformers.ViTMAEForPreTraining.from_pretrained(path)"]
    notes.append("tensors under the transformers 4.x names, which transformers 4.x and 5.x both load")
    return data, notes


# timm's model names with MAE weights (`default_cfgs` of the timm source cited at `to_timm`).
_TIMM_MAE_MODELS: dict[str, str] = {"vit_base_patch16": "vit_base_patch16_224", "vit_large_patch16": "vit_large_patch16_224",
                                    "vit_huge_patch14": "vit_huge_patch14_224"}


def _timm_note(kind: str, sd: StateDict, config: EncoderConfig) -> str:
    """How timm builds the model the file fits."""
    name = _TIMM_MAE_MODELS.get(config.architecture_name) if config.img_size == (224, 224) else None
    if name is None:
        return ("timm VisionTransformer names (official keys); build a timm ViT of these sizes "
                f"(embed_dim={config.embed_dim}, depth={config.depth}, patch_size={config.patch_size}) to load it")
    if kind == "fine-tuned":
        classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        pool = "avg" if "fc_norm.weight" in sd else "token"
        # Not `pretrained=True` with a file overlay: the default tag of these models loads its own format (npz) or
        # drops a head of another class count; a plain state-dict load takes the file as written.
        return (f"timm classifier: model = timm.create_model('{name}', num_classes={classes}, global_pool='{pool}'); "
                "model.load_state_dict(safetensors.torch.load_file(path))")
    return (f"timm encoder: timm.create_model('{name}.mae', pretrained=True, pretrained_cfg_overlay=dict(file=path)) "
            "(num_classes=0: the cls token after the final norm)")
