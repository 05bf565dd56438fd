"""The output containers of `save.save_as`: a torch file, a safetensors file, a HuggingFace model folder.

This module knows files, not key names: it is handed tensors already named for their target (`save` renames
them with its tables), writes them atomically (`atomic`), and describes what it wrote (`SaveReport`). It also
states a transformers `ViTMAEConfig` (`config.json`) for a model configuration, as a table of fields.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import EncoderConfig
from ..errors import invalid_argument
from ..utils.atomic import atomic_dir, atomic_path

StateDict = dict[str, torch.Tensor]

# transformers `ViTMAEConfig` field -> the config attribute it states (a reader of `config.json` inverts it).
HF_CONFIG_FIELDS: dict[str, str] = {
    "hidden_size": "embed_dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_hidden_dim",
    "patch_size": "patch_size",
    "num_channels": "in_chans",
    "layer_norm_eps": "layer_norm_eps",
    "decoder_hidden_size": "decoder_embed_dim",
    "decoder_num_hidden_layers": "decoder_depth",
    "decoder_num_attention_heads": "decoder_num_heads",
    "decoder_intermediate_size": "decoder_mlp_hidden_dim",
}
# What the official model implies beyond the sizes: exact GELU, q/k/v biases, no dropout.
HF_CONFIG_FIXED: dict[str, Any] = {"model_type": "vit_mae", "hidden_act": "gelu", "qkv_bias": True,
                                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                                   "initializer_range": 0.02}
HF_WEIGHTS = "model.safetensors"
HF_CONFIG = "config.json"
HF_PRETRAINING, HF_ENCODER = "ViTMAEForPreTraining", "ViTMAEModel"


@dataclass(frozen=True)
class SaveReport:
    """What `save.save_as` wrote."""

    path: Path
    format: str
    kind: str  # "full" | "encoder-only" | "fine-tuned" (a classifier: head.* present)
    written: int  # tensors in the output
    dropped: list[str]  # official keys of the input not written (the decoder, for timm)
    notes: list[str] = field(default_factory=list)  # what the output is and how to load it
    bytes: int = 0  # size on disk (a folder: all its files)
    nonfinite: dict[str, int] = field(default_factory=dict)  # written tensors holding NaN / Inf (allowed)
    hf_config: dict[str, Any] = field(default_factory=dict)  # `config.json` of an hf folder

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "kind": self.kind, "written": self.written,
                "dropped": self.dropped, "notes": self.notes, "bytes": self.bytes, "nonfinite": self.nonfinite,
                "hf_config": self.hf_config}


# ---- checks before writing ----------------------------------------------------------------------
def check_target(path: Path, *, folder: bool, overwrite: bool) -> None:
    """Refuse an existing output unless `overwrite`, and never put a file in a folder's place or the reverse."""
    if not path.exists():
        return
    if not overwrite:
        raise invalid_argument("overwrite", f"{path} already exists; choose another path, or pass overwrite=True to "
                                            "replace it")
    if path.is_dir() != folder:
        what, output = ("a folder", "file") if path.is_dir() else ("a file", "folder")
        raise invalid_argument("overwrite", f"{path} is {what}, which this {output} output cannot replace; choose "
                                            "another path")


# ---- containers ---------------------------------------------------------------------------------
def compact(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor owning exactly its own bytes: a view (a q/k/v part, an expanded tensor) is copied, so that a
    file never holds more storage than the tensor and safetensors sees no shared memory. Bits unchanged."""
    tensor = tensor.detach().cpu()
    own = (tensor.is_contiguous() and tensor.storage_offset() == 0
           and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size())
    return tensor if own else tensor.clone(memory_format=torch.contiguous_format)


def write_torch(sd: StateDict, path: Path) -> None:
    """`torch.save({"model": sd})`, the official container, in `sd`'s order; atomic."""
    with atomic_path(path) as tmp:
        save_torch({"model": sd}, tmp, path)


def save_torch(obj: Any, tmp: Path, target: Path) -> None:
    """`torch.save(obj, tmp)`, its I/O failures raised as the `OSError` they are, naming `target`: torch's zip writer
    reports a failed write (a full disk, a file-size limit) as a `RuntimeError` ("unexpected pos"), so it is given a
    Python file, whose own `OSError` is then the one behind torch's."""
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            cause = exc.__context__
            if not isinstance(cause, OSError):
                raise
            raise OSError(cause.errno, cause.strerror, str(target)) from None


def write_safetensors(sd: StateDict, path: Path) -> None:
    """A safetensors file with the `{"format": "pt"}` metadata torch writers give it (transformers checks it); atomic."""
    with atomic_path(path) as tmp:
        save_safetensors(sd, tmp, path)


def save_safetensors(tensors: StateDict, tmp: Path, target: Path, metadata: Mapping[str, str] | None = None) -> None:
    """`safetensors.torch.save_file(tensors, tmp)`, its I/O failures (a full disk, a file-size limit: safetensors
    reports them as its own error type, "... (os error 27)") raised as the `OSError` they are, naming `target`."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(tmp), metadata=dict(metadata or {"format": "pt"}))
    except Exception as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(target)) from None


def hf_config(config: EncoderConfig, *, encoder_only: bool, norm_pix_loss: bool, mask_ratio: float) -> dict[str, Any]:
    """The `config.json` of a transformers ViTMAE model equal to `config` (its LayerNorm eps, exact GELU)."""
    image = list(config.img_size) if config.img_size[0] != config.img_size[1] else config.img_size[0]
    data: dict[str, Any] = {"architectures": [HF_ENCODER if encoder_only else HF_PRETRAINING], **HF_CONFIG_FIXED,
                            "image_size": image, "mask_ratio": float(mask_ratio), "norm_pix_loss": bool(norm_pix_loss)}
    for name, attr in HF_CONFIG_FIELDS.items():
        value = getattr(config, attr, None)  # an encoder config has no decoder sizes (ViTMAEModel needs none)
        if value is not None:
            data[name] = value
    return dict(sorted(data.items()))


def write_hf_folder(names: StateDict, config_json: Mapping[str, Any], path: Path, *, overwrite: bool) -> None:
    """A model folder as `save_pretrained` writes it: `config.json` and `model.safetensors`; the folder appears whole."""
    with atomic_dir(path, overwrite=overwrite) as tmp:
        try:
            (tmp / HF_CONFIG).write_text(json.dumps(config_json, indent=2) + "\n")
        except OSError as exc:
            exc.filename = str(path / HF_CONFIG)  # the file as it will be named, not the hidden folder's
            raise
        save_safetensors(names, tmp / HF_WEIGHTS, path / HF_WEIGHTS)


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of all the files in a folder."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
