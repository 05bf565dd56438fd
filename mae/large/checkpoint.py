"""Checkpoint files: read any MAE ViT layout safely and say exactly what it is.

Two steps of the loading chain live here (the chain itself is `load.py`):

* `read_checkpoint`: file -> tensors in official key names (`convert` does the renaming), each fix logged;
* `classify`: tensors -> full / encoder-only / fine-tuned / incompatible, with reasons, measured against the
  `ExpectedState` a model states for a configuration (`MaskedAutoencoderViT.expected_state(config)`).

This module imports no model class: what a model expects is handed in. Nothing here prints.

Safety: pickles are read with `torch.load(weights_only=True)` only, which builds nothing but tensors
and plain containers. A file that needs more is refused with the globals it asked for, unless the
caller opts in with `trust=True` for a file they trust.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from . import catalog, convert
from .convert import DECODER_PREFIXES, StateDict
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
    first_line,
    short_list,
)

log = logging.getLogger(__name__)

Kind = Literal["full", "encoder-only", "fine-tuned", "partial", "incompatible"]
# The final norm a global-pool fine-tuned classifier drops (official models_vit deletes it), and what replaces it.
FINAL_NORM: tuple[str, str] = ("norm.weight", "norm.bias")
FINE_TUNED_CLASSIFIER: tuple[str, ...] = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")
Part = Literal["encoder", "decoder", "classifier"]

# Containers that hold the state dict inside a training checkpoint, in the order they are tried.
CONTAINER_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state", "model_state_dict", "module")
# Globals allowed beside tensors: official training checkpoints carry their argparse arguments.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


def key_part(name: str) -> Part:
    """`encoder` or `decoder`: which half of the model an official key belongs to."""
    return "decoder" if name.startswith(DECODER_PREFIXES) else "encoder"


# ================================================================================================
# Reading
# ================================================================================================
@dataclass(frozen=True)
class CheckpointData:
    """A checkpoint file's tensors in official key names, and how they got there."""

    path: Path
    state_dict: StateDict
    container: str  # "torch-zip" | "torch-legacy" | "safetensors"
    source_format: str  # "official" | "huggingface" | "timm"
    weights_only: bool  # read with weights_only=True (False only with trust=True)
    fixes: list[str] = field(default_factory=list)  # each change made on the way, in order
    extras: list[str] = field(default_factory=list)  # other top-level entries (args, optimizer ...)
    # Classifier tensors (`head.*`, `fc_norm.*` of a fine-tuned or timm file), kept apart from
    # `state_dict`: the MAE model never uses them, the classifier's `from_pretrained(head="file")` does.
    classifier: StateDict = field(default_factory=dict)

    @property
    def dropped(self) -> list[str]:
        """Keys read but not part of the MAE model (the classifier's)."""
        return list(self.classifier)


def read_state_dict(path: str | Path, *, trust: bool = False) -> StateDict:
    """The tensors of a checkpoint file, in official key names (see `read_checkpoint`)."""
    return read_checkpoint(path, trust=trust).state_dict


def read_checkpoint(path: str | Path, *, trust: bool = False, mmap: bool = True) -> CheckpointData:
    """Read a checkpoint file of any supported layout into official key names.

    Supported: official `torch.save({"model": sd})` files (also `state_dict`, `model_state` or a bare
    state dict), zip or legacy pickle; `.safetensors`; `module.` / `_orig_mod.` prefixes; HuggingFace
    ViTMAE names (q, k, v fused into qkv); timm ViT encoders (classifier keys dropped and reported).
    Zip files are memory-mapped (`mmap`), so tensors are read from the page cache on demand.
    """
    path = _check_path(path)
    container = _sniff(path)
    fixes: list[str] = []
    extras: list[str] = []
    if container == "safetensors":
        raw: Any = _load_safetensors(path)
        weights_only = True
    else:
        raw = _torch_load(path, trust=trust, mmap=mmap and container == "torch-zip")
        weights_only = not trust
    sd = _unwrap(raw, path, fixes, extras)
    bad_key = next((k for k in sd if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"{path} has a non-text key {bad_key!r} in its state dict; it is not a model checkpoint")
    try:
        sd, prefixes = convert.strip_wrappers(sd)
    except convert.UnknownKeyError as exc:
        raise IncompatibleCheckpointError(f"{path}: {exc}") from None
    for prefix in prefixes:
        fixes.append(f"removed the {prefix!r} prefix from every key")

    keys = list(sd)
    classifier: StateDict = {}
    if convert.is_huggingface(keys):
        source = "huggingface"
        try:
            sd = convert.from_huggingface(sd)
        except (convert.UnknownKeyError, RuntimeError) as exc:  # RuntimeError: q, k, v of different sizes
            raise IncompatibleCheckpointError(
                f"{path}: {first_line(str(exc))}; it is not a ViTMAE checkpoint this tool knows"
            ) from None
        fixes.append("renamed HuggingFace ViTMAE keys to the official names (q, k, v fused into qkv)")
    else:
        sd, classifier = convert.split_classifier(sd)
        source = "timm" if classifier else "official"
        if classifier:
            fixes.append(f"set aside {len(classifier)} classifier tensors ({short_list(list(classifier))}): "
                         "not part of MAE")
    for fix in fixes:
        log.info("%s: %s", path.name, fix)
    return CheckpointData(path, sd, container, source, weights_only, fixes, extras, classifier)


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        hint = catalog.download_hint(path.name, path.parent)
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist{hint or '; check the path'}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the path of a .pth or .safetensors file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the download was probably interrupted, fetch it again")
    return path


def _sniff(path: Path) -> str:
    """Tell the container from the first bytes, not the suffix (files get renamed)."""
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(b"PK"):
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # 8-byte little-endian header length, then a JSON object
    if head[:1] == b"\x80":  # pickle protocol marker: torch's legacy (pre-1.6) format
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a PyTorch (.pth) or safetensors checkpoint (its first bytes are {head[:8]!r}); "
        "check that the file is complete and is the right one"
    )


def _load_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header_bytes = f.read(header_len) if header_len <= size - 8 else b""
    try:
        header = json.loads(header_bytes)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError):
        raise CheckpointError(f"{path} has a corrupt safetensors header; the file is damaged, fetch it again") from None
    if 8 + header_len + max(ends, default=0) > size:
        raise CheckpointError(
            f"{path} is truncated: its safetensors header describes {8 + header_len + max(ends)} bytes but the "
            f"file has {size}; fetch it again"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged safetensors file ({exc}); fetch it again") from None


def _torch_load(path: Path, *, trust: bool, mmap: bool) -> Any:
    if trust:
        log.warning("%s: loading with weights_only=False (trusted file): its pickle may run code", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as exc:  # anything the pickle raised
            raise CheckpointError(f"{path} could not be read even as a trusted file: {exc}") from None
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        # weights_only refuses unknown globals with an UnpicklingError; anything else is a damaged file.
        message = str(exc)
        names = _unsafe_globals(path, message) if ("Weights only load failed" in message
                                                    or "Unsupported global" in message) else []
        if names:
            raise UnsafeCheckpointError(
                f"{path} asks to build objects beyond tensors ({', '.join(names)}), so it was not loaded; "
                "if you trust its source, pass trust=True"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt ({_pickle_detail(message)}); fetch it again") from None


def _pickle_detail(message: str) -> str:
    """The unpickler's own complaint inside torch's long weights_only message (which advises
    weights_only=False: wrong for a damaged file, and unsafe)."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", message, re.S)
    return first_line(match.group(1) if match else message)


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """The globals a well-formed pickle asks for beyond the allowed ones; empty when the pickle itself is
    damaged (then it is a broken file, and trusting it would not help)."""
    try:  # exact list for zip files; it reads the pickle without running it
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format, or a pickle that does not parse: only what torch's message names
        names = re.findall(r"GLOBAL ([\w.]+)", message)
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _unwrap(raw: Any, path: Path, fixes: list[str], extras: list[str]) -> StateDict:
    """Find the state dict inside a loaded object: `{"model": sd}`, `{"state_dict": sd}`, or `sd`."""
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a state dict; save weights with "
            "torch.save({'model': model.state_dict()}, path)"
        )
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return dict(raw)
    for key in CONTAINER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            extras.extend(str(k) for k in raw if k != key)
            also = f" (also present: {short_list(extras)})" if extras else ""
            fixes.append(f"took the state dict from the {key!r} entry{also}")
            return dict(inner)
    found = ", ".join(repr(k) for k in list(raw)[:6]) or "nothing"
    raise CheckpointError(
        f"{path} holds no state dict (found {found}); expected tensors at the top level or under 'model'"
    )


# ================================================================================================
# Values
# ================================================================================================
def count_nonfinite(tensor: torch.Tensor) -> int:
    """How many values of `tensor` are NaN or infinite (0 for a tensor that is not floating point).

    A finite tensor is read once: NaN and infinities propagate through a sum (NaN + x is NaN, Inf + -Inf
    is NaN), so a finite sum proves every value finite. A sum that is not finite is confirmed value by
    value, because finite values can also overflow the sum (a false alarm the count clears).
    """
    if not tensor.is_floating_point() or tensor.is_meta or tensor.numel() == 0:
        return 0
    if bool(torch.isfinite(tensor.sum())):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """name -> number of NaN / infinite values, for the tensors of `state` that hold any, in state order."""
    counts = {name: count_nonfinite(tensor) for name, tensor in state.items()}
    return {name: n for name, n in counts.items() if n}


def describe_nonfinite(counts: Mapping[str, int], state: Mapping[str, torch.Tensor], limit: int = 3) -> str:
    """`blocks.0.attn.qkv.weight (3 of 12288 values), pos_embed (1 of 768 values) and 2 more`."""
    return short_list([f"{name} ({n} of {state[name].numel()} values)" for name, n in counts.items()], limit)


# ================================================================================================
# Classification
# ================================================================================================
@dataclass(frozen=True)
class ShapeMismatch:
    name: str
    expected: tuple[int, ...]
    actual: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: expected {list(self.expected)}, file has {list(self.actual)}"


@dataclass(frozen=True)
class Classification:
    """What a state dict is, measured against a model configuration."""

    kind: Kind
    num_tensors: int
    num_expected: int  # keys of the full model
    num_encoder: int  # keys of the encoder part
    missing: list[str]
    unexpected: list[str]
    mismatched: list[ShapeMismatch]
    looks_like: str | None  # a known architecture the shapes match, when they are not this one
    hint: str | None
    not_float: list[str] = field(default_factory=list)  # weights stored as integers: not model weights
    # A fine-tuned classifier: the number of classes of its head and its pooling ("mean": global pool + fc_norm).
    num_classes: int | None = None
    pooling: str | None = None

    @property
    def loadable(self) -> bool:
        return self.kind != "incompatible"

    def problem(self, limit: int = 3) -> str:
        """One sentence naming the first offending keys."""
        parts = []
        if self.mismatched:
            parts.append("shape mismatch " + "; ".join(str(m) for m in self.mismatched[:limit]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({short_list(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({short_list(self.unexpected, limit)})")
        if self.not_float:
            parts.append(f"{len(self.not_float)} tensors that are not floating point ({short_list(self.not_float, limit)})")
        return "; ".join(parts) or "nothing wrong"


@dataclass(frozen=True)
class ExpectedState:
    """What a model expects of a checkpoint: every key with its shape (in state-dict order), the part it
    belongs to, and which tensors are fixed functions of the patch grid (regenerated, never learned).

    A model class states it for a configuration (`expected_state(config)`, built on the meta device and
    cached); `alternatives` are the encoder shapes of the other official sizes, so that `classify` can
    say "this looks like a ViT-Base checkpoint".
    """

    name: str
    shapes: Mapping[str, tuple[int, ...]]
    parts: Mapping[str, Part]
    fixed: frozenset[str] = frozenset()
    alternatives: Sequence[tuple[str, Mapping[str, tuple[int, ...]]]] = ()

    def keys_of(self, part: Part) -> list[str]:
        return [k for k, p in self.parts.items() if p == part]


def _compare(sd: StateDict, expected: Mapping[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[ShapeMismatch]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [ShapeMismatch(k, expected[k], tuple(sd[k].shape)) for k in expected
                  if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, mismatched


def is_regenerable(expected: ExpectedState, name: str, actual: tuple[int, ...]) -> bool:
    """A fixed sin-cos table for another grid: not learned, so it is regenerated, not a mismatch."""
    want = expected.shapes[name]
    return name in expected.fixed and len(actual) == 3 and actual[-1] == want[-1] and actual[0] == 1


def classify(sd: StateDict, expected: ExpectedState, classifier: Mapping[str, torch.Tensor] | None = None) -> Classification:
    """full (every key), encoder-only (exactly the encoder keys), fine-tuned, or incompatible, against `expected`.

    `classifier` is the file's set-aside classifier tensors (`CheckpointData.classifier`). A file whose encoder
    lacks exactly the final `norm` and whose classifier holds `head.*` and `fc_norm.*` of the right width is a
    global-pool fine-tuned classifier (official `models_vit`, `global_pool=True`): kind "fine-tuned", its tensor
    count includes the classifier's, and `num_classes` / `pooling` say what it is."""
    if not isinstance(expected, ExpectedState):
        raise TypeError("classify needs the ExpectedState of a model, e.g. MaskedAutoencoderViT.expected_state(config)")
    missing, unexpected, mismatched = _compare(sd, expected.shapes)
    mismatched = [m for m in mismatched if not is_regenerable(expected, m.name, m.actual)]
    not_float = [k for k in expected.shapes if k in sd and not sd[k].is_floating_point()]
    encoder = expected.keys_of("encoder")
    decoder_missing = [k for k in missing if expected.parts[k] == "decoder"]
    encoder_missing = [k for k in missing if expected.parts[k] == "encoder"]
    kind: Kind
    fine_tuned = _fine_tuned_head(classifier or {}, expected) if set(encoder_missing) == set(FINAL_NORM) else None
    if fine_tuned is not None and not (unexpected or mismatched or not_float) and (
            len(decoder_missing) == len(expected.keys_of("decoder"))):
        return Classification("fine-tuned", len(sd) + len(classifier or {}), len(expected.shapes), len(encoder),
                              missing, unexpected, mismatched, None, None, not_float, num_classes=fine_tuned,
                              pooling="mean")
    if unexpected or mismatched or encoder_missing or not_float:
        kind = "incompatible"
    elif not missing:
        kind = "full"
    elif len(decoder_missing) == len(expected.keys_of("decoder")):
        kind = "encoder-only"
    else:  # some decoder keys but not all: a damaged or hand-edited file
        kind = "incompatible"
    looks_like = hint = None
    if kind == "incompatible":
        looks_like = _guess_architecture(sd, expected)
        if looks_like:
            hint = f"this looks like {looks_like}, not {expected.name or 'this model'}"
        elif decoder_missing and not encoder_missing and not unexpected and not mismatched:
            hint = "the decoder is only partly present; the file is damaged or was edited"
    if not_float and not hint:
        hint = f"{len(not_float)} tensors are not floating point ({short_list(not_float)}, {sd[not_float[0]].dtype})"
    return Classification(kind, len(sd), len(expected.shapes), len(encoder), missing, unexpected, mismatched,
                          looks_like, hint, not_float)


def _fine_tuned_head(classifier: Mapping[str, torch.Tensor], expected: ExpectedState) -> int | None:
    """The number of classes of a global-pool fine-tuned classifier (`head.*` + `fc_norm.*` as wide as the
    encoder, nothing else), or None when `classifier` is not one."""
    if set(classifier) != set(FINE_TUNED_CLASSIFIER) or FINAL_NORM[0] not in expected.shapes:
        return None
    (dim,) = expected.shapes[FINAL_NORM[0]]
    head_w, head_b = classifier["head.weight"], classifier["head.bias"]
    shapes_fit = (head_w.dim() == 2 and head_w.shape[1] == dim and tuple(head_b.shape) == (head_w.shape[0],)
                  and all(tuple(classifier[k].shape) == (dim,) for k in ("fc_norm.weight", "fc_norm.bias")))
    if not shapes_fit or not all(t.is_floating_point() for t in classifier.values()):
        return None
    return int(head_w.shape[0])


def _guess_architecture(sd: StateDict, expected: ExpectedState) -> str | None:
    """Name another official size whose encoder shapes all match `sd` (ViT-B/L/H), if any."""
    for label, shapes in expected.alternatives:
        enc = {k: s for k, s in shapes.items() if k not in expected.fixed}
        if all(k in sd and tuple(sd[k].shape) == s for k, s in enc.items()) and not any(
            k.startswith("blocks.") and k not in shapes for k in sd
        ):
            return label
    return None


