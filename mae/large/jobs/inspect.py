"""`inspect`: what a checkpoint file holds, measured against MAE ViT-Large, without building the model.

The file is memory-mapped and no model is built. Each tensor is read once, for NaN and infinite values
(`nonfinite.count_nonfinite`: a sum per tensor, counted value by value only when the sum is not finite);
a file that holds any is damaged and not loadable as is.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import catalog
from ..checkpoints.classify import Classification, classify
from ..checkpoints.keys import LAYOUTS, UnknownKeyError, official_order
from ..checkpoints.load import check_folder_config
from ..checkpoints.read import read_checkpoint
from ..config import MAEConfig
from ..errors import IncompatibleCheckpointError, UnsafeCheckpointError, short_list
from ..models.mae import MaskedAutoencoderViT
from ..utils.nonfinite import count_nonfinite


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    part: str  # encoder | decoder | classifier (a fine-tuned file's head, fc_norm) | other (not a key of the model)
    nonfinite: int = 0  # NaN or infinite values in the tensor


@dataclass(frozen=True)
class CheckpointSummary:
    path: Path
    size_bytes: int
    container: str
    source_format: str
    weights_only: bool  # loads with torch.load(weights_only=True)
    unsafe_reason: str | None  # why weights_only refused the file, when it did and trust was given
    classification: Classification
    tensors: list[TensorInfo]
    fixes: list[str]
    dropped: list[str]
    extras: list[str]
    model_name: str = f"mae_{catalog.DEFAULT_ARCHITECTURE}"
    dtypes: dict[str, int] = field(default_factory=dict)
    layout: str = "official"  # one of convert.LAYOUTS
    files: list[Path] = field(default_factory=list)  # the files read (a model folder's weight files)
    config_problem: str | None = None  # a model folder whose config.json disagrees with the model: why
    notes: list[str] = field(default_factory=list)  # what loading would warn about (the folder's layer_norm_eps)

    @property
    def layout_words(self) -> str:
        return LAYOUTS.get(self.layout, self.layout)

    @property
    def convert_hint(self) -> str | None:
        """For a pickle: the command that writes the same tensors as safetensors (no pickle, memory-mapped)."""
        if not self.container.startswith("torch"):
            return None
        out = self.path.with_suffix(".safetensors") if self.path.suffix not in ("", ".safetensors") else Path(
            f"{self.path}.safetensors")
        return f"mae-large convert {self.path} --to safetensors --out {out}"

    @property
    def kind(self) -> str:
        return self.classification.kind

    @property
    def target(self) -> str:
        """What the file's decoder predicts, as far as it can be told without running the model."""
        from ..models.target import known_target

        if self.kind == "fine-tuned":
            return "none: a fine-tuned classifier has no decoder"
        if not self.loadable or self.kind == "encoder-only":
            return "none: no trained decoder in this file" if self.kind == "encoder-only" else "-"
        choice = known_target(self.path, self.kind)
        if choice is None:
            return "unknown without running it: detected from the predictions when reconstructing (or pass the target)"
        return f"{'normalised pixels (norm_pix_loss)' if choice.norm_pix else 'pixels'} ({choice.how})"

    @property
    def nonfinite(self) -> list[TensorInfo]:
        """The tensors holding NaN or infinite values, in file order."""
        return [t for t in self.tensors if t.nonfinite]

    @property
    def damaged(self) -> bool:
        """Some tensor holds NaN or infinite values: loading refuses the file unless allow_nonfinite=True."""
        return bool(self.nonfinite)

    @property
    def loadable(self) -> bool:
        return self.classification.loadable and not self.damaged and self.config_problem is None

    @property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    def verdict(self) -> str:
        c = self.classification
        if self.damaged:
            bad = self.nonfinite
            names = short_list([f"{t.name} ({t.nonfinite} of {t.numel} values)" for t in bad])
            also = "".join(f"; besides, {p}" for p in (self.config_problem, None if c.loadable else c.problem()) if p)
            return (f"damaged: {len(bad)} tensors hold NaN or infinite values ({names}), so loading refuses the file "
                    f"unless allow_nonfinite=True{also}; fetch or export it again")
        if self.config_problem:  # whatever the tensors are: loading refuses the folder (`loadable` says so too)
            also = f"; besides, {c.problem()}" if not c.loadable else ""
            return f"not loadable into {self.model_name}: {self.config_problem}{also}"
        if c.kind == "full":
            return f"loadable as is: all {c.num_expected} tensors of {self.model_name} (encoder + decoder)"
        if c.kind == "encoder-only":
            return (f"loadable for fine-tuning and features: the {c.num_encoder} encoder tensors; the decoder is NOT in "
                    f"this file, so reconstructions need {catalog.FULL.filename}")
        if c.kind == "fine-tuned":
            pooling = catalog.POOLING_WORDS.get(c.pooling or "", c.pooling)
            return (f"a fine-tuned classifier ({c.num_classes} classes, {pooling}): "
                    f"loadable with VisionTransformer.from_pretrained(head='file') and for features (its own pooling "
                    f"and trained fc_norm); no final norm and no decoder, so not for reconstructions")
        hint = f"; {c.hint}" if c.hint else ""
        return f"not loadable into {self.model_name}: {c.problem()}{hint}"

    def to_dict(self) -> dict[str, Any]:
        c = self.classification
        return {
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "container": self.container,
            "source_format": self.source_format,
            "layout": self.layout,
            "files": [str(f) for f in self.files],
            "config_problem": self.config_problem,
            "notes": self.notes,
            "convert_hint": self.convert_hint,
            "kind": c.kind,
            "num_classes": c.num_classes,
            "pooling": c.pooling,
            "loadable": self.loadable,
            "damaged": self.damaged,
            "nonfinite": [{"name": t.name, "count": t.nonfinite, "numel": t.numel} for t in self.nonfinite],
            "num_tensors": c.num_tensors,
            "num_expected_full": c.num_expected,
            "num_expected_encoder": c.num_encoder,
            "num_parameters": self.num_parameters,
            "dtypes": self.dtypes,
            "weights_only": self.weights_only,
            "unsafe_reason": self.unsafe_reason,
            "missing": c.missing,
            "unexpected": c.unexpected,
            "mismatched": [{"name": m.name, "expected": list(m.expected), "actual": list(m.actual)} for m in c.mismatched],
            "looks_like": c.looks_like,
            "hint": c.hint,
            "verdict": self.verdict(),
            "fixes": self.fixes,
            "dropped": self.dropped,
            "extras": self.extras,
            "target": self.target,
            "tensors": [{**asdict(t), "shape": list(t.shape)} for t in self.tensors],
        }


def summarize(path: str | Path, *, trust: bool = False, config: MAEConfig | None = None) -> CheckpointSummary:
    """Read `path` (memory-mapped) and describe it against `config` (default: the architecture a training run recorded
    in the file, else ViT-Large)."""
    unsafe_reason = None
    try:
        data = read_checkpoint(path, trust=False)
    except UnsafeCheckpointError as exc:
        if not trust:
            raise
        unsafe_reason = str(exc)
        data = read_checkpoint(path, trust=True)
    config = config or MAEConfig.from_run(data.run) or MAEConfig.vit_large()
    config_problem, notes = None, []
    try:
        notes = check_folder_config(data, config)
    except IncompatibleCheckpointError as exc:
        config_problem = str(exc).removeprefix(f"{data.path}: ")
    expected = MaskedAutoencoderViT.expected_state(config)
    classification = classify(data.state_dict, expected, data.classifier)
    fine_tuned = classification.kind == "fine-tuned"
    # A fine-tuned classifier's head and fc_norm are part of what the file is, not tensors set aside.
    listed = {**data.state_dict, **data.classifier} if fine_tuned else data.state_dict
    listed = {name: listed[name] for name in _official_order_if_known(list(listed))}
    tensors = [
        TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), t.numel(),
                   "classifier" if fine_tuned and name in data.classifier else expected.parts.get(name, "other"),
                   count_nonfinite(t))
        for name, t in listed.items()
    ]
    dtypes = dict(Counter(t.dtype for t in tensors))
    return CheckpointSummary(
        path=data.path, size_bytes=data.size_bytes, container=data.container,
        source_format=data.source_format, weights_only=unsafe_reason is None, unsafe_reason=unsafe_reason,
        classification=classification, tensors=tensors, fixes=data.fixes, dropped=[] if fine_tuned else data.dropped,
        extras=data.extras, dtypes=dtypes, model_name=f"mae_{config.architecture_name}", layout=data.layout,
        files=list(data.files), config_problem=config_problem, notes=notes,
    )


def _official_order_if_known(names: list[str]) -> list[str]:
    """The official state-dict order (a transformers or mmpretrain file lists the decoder first); the file's own
    order when a name is not an official one (an incompatible file is shown as it is)."""
    try:
        return official_order(names)
    except UnknownKeyError:
        return names


_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class TensorGroup:
    """Rows of the key table: one per tensor, or one per block-tensor type across all blocks."""

    name: str  # e.g. "blocks.{0-23}.attn.qkv.weight"
    shape: tuple[int, ...]
    dtype: str
    count: int
    numel: int  # total over the group
    part: str


def group_tensors(tensors: list[TensorInfo]) -> list[TensorGroup]:
    """Fold `blocks.{i}.X` into one row per X (when every block agrees on shape and dtype)."""
    groups: dict[str, list[TensorInfo]] = {}
    order: list[str] = []
    for t in tensors:
        match = _BLOCK.match(t.name)
        key = f"{match.group(1)}.*.{match.group(3)}|{t.shape}|{t.dtype}" if match else t.name
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(t)
    rows = []
    for key in order:
        members = groups[key]
        first = members[0]
        if len(members) == 1 and not _BLOCK.match(first.name):
            rows.append(TensorGroup(first.name, first.shape, first.dtype, 1, first.numel, first.part))
            continue
        match = _BLOCK.match(first.name)
        assert match is not None  # grouped keys all matched
        indices = sorted(int(_BLOCK.match(m.name).group(2)) for m in members)  # type: ignore[union-attr]
        span = f"{indices[0]}-{indices[-1]}" if indices == list(range(indices[0], indices[-1] + 1)) else ",".join(
            map(str, indices))
        rows.append(TensorGroup(f"{match.group(1)}.{{{span}}}.{match.group(3)}", first.shape, first.dtype,
                                len(members), sum(m.numel for m in members), first.part))
    return rows
