"""The convert job: a checkpoint of any layout -> one of the formats `save.save_as` writes, checked by reading
it back.

    read (any layout) -> classify -> decide the decoder's target (hf) -> save_as -> read back, bit for bit

What is written for each kind of source:

* full (encoder + decoder): every format; timm drops the decoder (timm's ViT is the encoder);
* encoder-only: every format; hf writes a `ViTMAEModel` folder (there is no decoder for `ViTMAEForPreTraining`);
* fine-tuned classifier (`head.*`, and `fc_norm.*` for a global-pool one): official and safetensors keep the
  classifier, timm too (a `global_pool='avg'` model); hf is refused, since ViTMAE has no classification head.

The source file is only read (memory-mapped), never written, and the output can neither be the source nor
contain it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import containers as formats
from ..checkpoints import save
from ..checkpoints.classify import classify
from ..checkpoints.containers import SaveReport
from ..checkpoints.folders import checkpoint_inputs
from ..checkpoints.load import check_folder_config
from ..checkpoints.read import read_checkpoint
from ..config import MAEConfig
from ..errors import CheckpointError, IncompatibleCheckpointError, short_list
from ..models.mae import DEFAULT_MASK_RATIO, MaskedAutoencoderViT
from ..models.target import TargetChoice, resolve_target
from ..utils.outputs import guard_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertReport:
    """What `convert_checkpoint` read and wrote."""

    source: Path
    source_format: str  # the layout read: "official" | "huggingface" | "timm" ...
    container: str  # "torch-zip" | "torch-legacy" | "safetensors"
    kind: str  # "full" | "encoder-only" | "fine-tuned"
    saved: SaveReport
    fixes: list[str] = field(default_factory=list)  # what reading changed (renames, prefixes)
    num_classes: int | None = None  # a classifier's
    target: TargetChoice | None = None  # the decoder's target written into an hf config.json
    verified: int = 0  # tensors read back from the output, equal bit for bit

    @property
    def dropped_reason(self) -> str | None:
        """Why the source tensors in `saved.dropped` were not written."""
        if not self.saved.dropped:
            return None
        return f"timm's ViT is the encoder: the decoder ({len(self.saved.dropped)} tensors) has no place in it"

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "source_format": self.source_format, "container": self.container,
                "kind": self.kind, "num_classes": self.num_classes, "fixes": self.fixes,
                "target": None if self.target is None else {"target": self.target.target, "how": self.target.how},
                "dropped_reason": self.dropped_reason, "verified": self.verified, **self.saved.to_dict()}


def convert_checkpoint(source: str | Path, out: str | Path, format: save.Format, *, target: str = "auto",
                       config: MAEConfig | None = None, overwrite: bool = False, allow_nonfinite: bool = False,
                       trust: bool = False) -> ConvertReport:
    """Write the checkpoint `source` (any layout `read_checkpoint` reads) as `format` at `out`.

    The output is read back and compared with the source bit for bit (`verified`). Raises
    `IncompatibleCheckpointError` for a file that does not fit (a model folder's `config.json` included), and
    `InvalidArgumentError` for an output that exists (without `overwrite`) or is, contains, lies inside or links to
    the source (`guard_output`).

    Args:
        source: the checkpoint file or model folder; only read, never written.
        out: the file to write, or the folder for `hf`; it may be neither the source nor contain it.
        format: `official`, `safetensors`, `hf` or `timm` (`save.save_as`).
        target: `auto`, `pixels` or `norm-pix`: for an hf folder of a full model, decides `norm_pix_loss`: asked for,
            else the catalogue's entry for the file name, else measured on the noise benchmark
            (`forward.detect_target_on_noise`, which loads the model once). Other outputs do not use it.
        config: what the file is classified against and what an hf `config.json` states (default: the catalogue's
            architecture).
        overwrite: replace an existing output (checked before any work).
        allow_nonfinite: read and write tensors holding NaN or infinite values instead of refusing them.
        trust: read a pickle file with `weights_only=False` (its pickle may run code).
    """
    source = Path(source).expanduser()
    out = Path(out).expanduser()
    guard_output(out, checkpoint_inputs(source))
    formats.check_target(out, folder=format == "hf", overwrite=overwrite)  # before the work, not after it
    data = read_checkpoint(source, trust=trust)
    config = config or MAEConfig.from_run(data.run) or MAEConfig.from_architecture()
    check_folder_config(data, config)  # a folder whose config.json the loaders refuse is not converted either
    expected = MaskedAutoencoderViT.expected_state(config)
    result = classify(data.state_dict, expected, data.classifier)
    if result.kind not in ("full", "encoder-only", "fine-tuned"):
        hint = f"; {result.hint}" if result.hint else ""
        raise IncompatibleCheckpointError(f"{source} does not fit {config.name or config.architecture_name}: "
                                          f"{result.problem()}{hint}; nothing was written")
    other = [f"{k} {list(v.shape)}" for k, v in data.state_dict.items() if tuple(v.shape) != expected.shapes[k]]
    if other:  # a position table for another grid: classify accepts it (regenerable), a converted file would not
        raise IncompatibleCheckpointError(f"{source} was made for another image size ({short_list(other)}); "
                                          "converting it is not supported, nothing was written")
    state = {**data.state_dict, **data.classifier}
    kind = "fine-tuned" if data.classifier else result.kind
    choice = (_target(source, target, kind, config, trust, allow_nonfinite, data.run) if format == "hf" and kind == "full"
              else None)
    try:
        saved = save.save_as(state, out, format, config=config, norm_pix_loss=choice.norm_pix if choice else None,
                                mask_ratio=DEFAULT_MASK_RATIO, overwrite=overwrite, allow_nonfinite=allow_nonfinite)
    except save.UnknownKeyError as exc:  # classifier tensors no format knows (pre_logits ...)
        raise IncompatibleCheckpointError(f"{source}: {exc}; nothing was written") from None
    verified = _read_back(saved, state)
    log.info("%s -> %s (%s): %d tensors, %d read back equal", source, out, format, saved.written, verified)
    return ConvertReport(source, data.source_format, data.container, saved.kind, saved, list(data.fixes),
                         result.num_classes or (int(state["head.weight"].shape[0]) if "head.weight" in state else None),
                         choice, verified)


def _target(source: Path, requested: str, kind: str, config: MAEConfig, trust: bool, allow_nonfinite: bool,
            run: Any) -> TargetChoice:
    """What the decoder predicts, for `norm_pix_loss` in config.json: asked, catalogue or the run, else measured."""
    choice = resolve_target(requested, source, kind, run)
    if choice is not None:
        return choice
    from .forward import detect_target_on_noise

    model = MaskedAutoencoderViT.from_pretrained(source, config, trust=trust, allow_nonfinite=allow_nonfinite)
    choice = detect_target_on_noise(model)
    del model
    return choice


def _read_back(saved: SaveReport, state: dict[str, torch.Tensor]) -> int:
    """Read the output with `read_checkpoint` and compare every tensor with what was written, bit for bit."""
    back = read_checkpoint(saved.path)  # an hf folder as a folder: its config.json is parsed too
    tensors = {**back.state_dict, **back.classifier}
    expected = set(state) - set(saved.dropped)
    differ = [k for k in expected if k not in tensors or not _same_bits(tensors[k], state[k])]
    differ = differ or sorted(set(tensors) ^ expected)
    if differ:
        raise CheckpointError(f"{saved.path} does not read back as written ({short_list(differ)}); the disk or the "
                              "file system is faulty, write it again")
    return len(tensors)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN payloads included, which `torch.equal` would call different)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
