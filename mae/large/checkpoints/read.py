"""Checkpoint files: read any MAE ViT layout safely, in official key names.

The first step of the loading chain (the chain itself is `load.py`; the next step, `classify`, is
`classify.py`): file -> tensors in official key names (`keys` does the renaming), each fix logged.

This module imports no model class. Nothing here prints.

Safety: pickles are read with `torch.load(weights_only=True)` only, which builds nothing but tensors
and plain containers. A file that needs more is refused with the globals it asked for, unless the
caller opts in with `trust=True` for a file they trust.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import catalog
from ..errors import (
    CheckpointError,
    CheckpointNotFoundError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
    first_line,
    short_list,
    shown,
)
from ..utils.jsontext import parse_json
from . import folders as model_folder
from . import keys as convert
from .keys import StateDict

log = logging.getLogger(__name__)


# Containers that hold the state dict inside a training checkpoint, in the order they are tried.
CONTAINER_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state", "model_state_dict", "module")
# Globals allowed beside tensors: official training checkpoints carry their argparse arguments.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


@dataclass(frozen=True)
class CheckpointData:
    """A checkpoint's tensors in official key names, and how they got there."""

    path: Path  # the file, or the model folder, as given
    state_dict: StateDict
    container: str  # "torch-zip" | "torch-legacy" | "safetensors" (of the weight files, for a folder)
    source_format: str  # key names: "official" | "huggingface" | "timm" | "mmpretrain"
    weights_only: bool  # read with weights_only=True (False only with trust=True)
    fixes: list[str] = field(default_factory=list)  # each change made on the way, in order
    extras: list[str] = field(default_factory=list)  # other top-level entries (args, optimizer ...)
    # Classifier tensors (`head.*`, `fc_norm.*` of a fine-tuned or timm file), kept apart from
    # `state_dict`: the MAE model never uses them, the classifier's `from_pretrained(head="file")` does.
    classifier: StateDict = field(default_factory=dict)
    layout: str = "official"  # one of `convert.LAYOUTS`
    files: tuple[Path, ...] = ()  # the files read (a folder's weight files; the file itself otherwise)
    # A model folder's parsed config.json (transformers `ViTMAEConfig` fields), checked by the loading chain.
    folder_config: dict[str, Any] | None = None
    # The class names a fine-tuning run trained its head on, in head order (its checkpoint's `args["classes"]`).
    classes: list[str] | None = None
    # A training run's settings (its checkpoint's `args`, plain data): the architecture it trained, its target.
    run: dict[str, Any] | None = None

    @property
    def dropped(self) -> list[str]:
        """Keys read but not part of the MAE model (the classifier's)."""
        return list(self.classifier)

    @property
    def size_bytes(self) -> int:
        """Bytes of the files read."""
        return sum(f.stat().st_size for f in self.files or (self.path,))

    @property
    def is_pickle(self) -> bool:
        return self.container.startswith("torch")


def read_state_dict(path: str | Path, *, trust: bool = False) -> StateDict:
    """The tensors of a checkpoint file, in official key names (see `read_checkpoint`)."""
    return read_checkpoint(path, trust=trust).state_dict


def read_checkpoint(path: str | Path, *, trust: bool = False, mmap: bool = True) -> CheckpointData:
    """Read a checkpoint file or model folder of any supported layout into official key names.

    Supported: official `torch.save({"model": sd})` files (also `state_dict`, `model_state` or a bare
    state dict), zip or legacy pickle; `.safetensors`; `module.` / `_orig_mod.` prefixes; HuggingFace
    ViTMAE names of transformers 4.x and 5.x (q, k, v fused into qkv); timm ViT encoders (classifier keys
    set aside and reported); mmpretrain MAE checkpoints; a transformers model folder (`config.json` with
    `model.safetensors`, `pytorch_model.bin` or a sharded index) or hub cache (`model_folder`), whose config
    is handed up as `folder_config`. Zip files and safetensors are memory-mapped (`mmap`; safetensors always),
    so tensors are read from the page cache on demand. `layout` says which of `convert.LAYOUTS` it was.
    """
    path = _check_path(path)
    fixes: list[str] = []
    extras: list[str] = []
    folder_config, classes, run = None, None, None
    if path.is_dir():
        folder = model_folder.open_folder(path)
        fixes.extend(folder.notes)
        files, folder_config = folder.files, folder.config
        sd, container, weights_only = _read_shards(folder, trust=trust, mmap=mmap, fixes=fixes, extras=extras)
    else:
        files = (path,)
        raw, container, weights_only = _read_file(path, trust=trust, mmap=mmap)
        sd = _unwrap(raw, path, fixes, extras)
        classes = _run_classes(raw)
        run = raw.get("args") if isinstance(raw, dict) and isinstance(raw.get("args"), dict) else None
    bad_key = next((k for k in sd if not isinstance(k, str)), None)
    if bad_key is not None:
        raise CheckpointError(f"{path} has a non-text key {bad_key!r} in its state dict; it is not a model checkpoint")
    try:
        sd, prefixes = convert.strip_wrappers(sd)
    except convert.UnknownKeyError as exc:
        raise IncompatibleCheckpointError(f"{path}: {exc}") from None
    for prefix in prefixes:
        fixes.append(f"removed the {prefix!r} prefix from every key")
    sd, source, layout, classifier = _to_official(sd, path, container, fixes)
    if path.is_dir():
        layout = "hf-folder"
    for fix in fixes:
        log.info("%s: %s", path.name, fix)
    return CheckpointData(path, sd, container, source, weights_only, fixes, extras, classifier, layout, files,
                          folder_config, classes, run)


def _run_classes(raw: Any) -> list[str] | None:
    """The class names a fine-tuning run recorded in its checkpoint (`args["classes"]`, `train.finetune`), if any."""
    args = raw.get("args") if isinstance(raw, dict) else None
    classes = args.get("classes") if isinstance(args, dict) else None
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        return classes
    return None


def _to_official(sd: StateDict, path: Path, container: str, fixes: list[str]) -> tuple[StateDict, str, str, StateDict]:
    """Rename another library's keys to the official ones: (state dict, source format, layout, classifier)."""
    keys = list(sd)
    classifier: StateDict = {}
    if convert.is_huggingface(keys):
        layout = convert.huggingface_generation(keys)
        try:
            sd = convert.from_huggingface(sd)
        except (convert.UnknownKeyError, RuntimeError) as exc:  # RuntimeError: q, k, v of different sizes
            raise IncompatibleCheckpointError(
                f"{path}: {first_line(str(exc))}; it is not a ViTMAE checkpoint this tool knows"
            ) from None
        names = "transformers 5.x" if layout == "hf5" else "transformers 4.x"
        fixes.append(f"renamed HuggingFace ViTMAE keys ({names} names) to the official names (q, k, v fused into qkv)")
        return sd, "huggingface", layout, classifier
    if convert.is_mmpretrain(keys):
        try:
            sd = convert.from_mmpretrain(sd)
        except convert.UnknownKeyError as exc:
            raise IncompatibleCheckpointError(
                f"{path}: {first_line(str(exc))}; it is not an mmpretrain MAE checkpoint this tool knows"
            ) from None
        fixes.append("renamed mmpretrain MAE keys (backbone.*, neck.*) to the official names")
        return sd, "mmpretrain", "mmpretrain", classifier
    sd, classifier = convert.split_classifier(sd)
    if classifier:
        fixes.append(f"set aside {len(classifier)} classifier tensors ({short_list(list(classifier))}): "
                     "not part of MAE")
        return sd, "timm", "timm", classifier
    return sd, "official", "safetensors" if container == "safetensors" else "official", classifier


def _read_file(path: Path, *, trust: bool, mmap: bool) -> tuple[Any, str, bool]:
    """One file's contents: (what it holds, its container, read with weights_only)."""
    container = _sniff(path)
    if container == "safetensors":
        return _load_safetensors(path), container, True
    return torch_load(path, trust=trust, mmap=mmap and container == "torch-zip"), container, not trust


def _read_shards(folder: model_folder.ModelFolder, *, trust: bool, mmap: bool, fixes: list[str],
                 extras: list[str]) -> tuple[StateDict, str, bool]:
    """A model folder's weight files merged into one state dict; a sharded folder must hold exactly the
    tensors its index lists."""
    sd: StateDict = {}
    containers: list[str] = []
    weights_only = True
    for file in folder.files:
        file = _check_path(file)
        raw, container, safe = _read_file(file, trust=trust, mmap=mmap)
        containers.append(container)
        weights_only = weights_only and safe
        part = _unwrap(raw, file, fixes, extras)
        twice = next((k for k in part if k in sd), None)
        if twice is not None:
            raise CheckpointError(f"{folder.path}: tensor {shown(twice)} is in two shards; the folder is damaged, "
                                  "fetch it again")
        sd.update(part)
    if folder.weight_map is not None:
        listed = set(folder.weight_map)
        if listed != set(sd):
            lacking = sorted(listed - set(sd))
            extra = sorted(set(sd) - listed)
            raise CheckpointError(
                f"{folder.path}: the shards do not hold what the index lists ({len(lacking)} listed but absent: "
                f"{short_list([shown(k) for k in lacking])}; {len(extra)} present but not listed: "
                f"{short_list([shown(k) for k in extra])}); fetch the folder again"
            )
    if not containers:
        raise CheckpointError(f"{folder.path}: its index lists no weight file; the folder is damaged, fetch it again")
    return sd, containers[0], weights_only


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        hint = catalog.download_hint(path.name, path.parent)
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist{hint or '; check the path'}")
    if path.is_dir():
        return path
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


# safetensors dtype names (the format's specification, huggingface/safetensors) -> torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16,
    "U32": torch.uint32, "U64": torch.uint64, "C64": torch.complex64, "F8_E8M0": torch.float8_e8m0fnu,
}


# The format's own bound on the header (safetensors refuses a longer one before reading it).
MAX_HEADER_BYTES = 100_000_000
MAX_DIMS = 64  # torch's limit on a tensor's dimensions


def _count(value: Any) -> bool:
    """A JSON whole number that fits an int64 and is not negative (not a float, a bool or a string that would convert)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _header_entries(header: Any) -> dict[str, tuple[str, list[int], int, int]]:
    """The header's entries (name -> dtype, shape, start, stop), checked against the format before any is used;
    `ValueError` with what is wrong, in words (never the header's text)."""
    if not isinstance(header, dict):
        raise ValueError("it is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("its __metadata__ is not an object of strings")
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {shown(name)} is not an object of dtype, shape and data_offsets")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise ValueError(f"tensor {shown(name)} has a dtype that is not a type name such as \"F32\"")
        if not isinstance(shape, list) or not all(_count(n) for n in shape):
            raise ValueError(f"tensor {shown(name)} has a shape that is not a list of non-negative whole numbers")
        if len(shape) > MAX_DIMS:
            raise ValueError(f"tensor {shown(name)} has a shape of {len(shape)} dimensions (torch allows {MAX_DIMS})")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(n) for n in offsets):
            raise ValueError(f"tensor {shown(name)} has data_offsets that are not two non-negative whole numbers")
        entries[name] = (dtype, shape, offsets[0], offsets[1])
    return entries


def _load_safetensors(path: Path) -> StateDict:
    """A safetensors file's tensors as views of a private memory map of the file (no copy, no read).

    The map is copy-on-write (`UntypedStorage.from_file(shared=False)`, as `torch.load(mmap=True)` maps zip
    files): pages are read on first touch, and writing to a tensor changes this process's copy, never the
    file. The header is checked first (parsed with bounds, `utils.jsontext`; every entry's dtype, shape and
    offsets of the format's types; every tensor's bytes inside the file, sizes matching dtype and shape), so a
    damaged file is refused before anything is mapped. Tensors come in the header's order. As with any
    memory map (`torch.load(mmap=True)`, `safe_open`), a file truncated by another process while its tensors are
    in use makes the next read of a lost page a bus error: replace checkpoints by renaming, never in place.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path} has a corrupt safetensors header (its length field says {header_len} bytes, "
                                  f"{'over the format limit of 100 MB' if header_len <= size - 8 else f'the file has {size}'}); "
                                  "the file is damaged, fetch it again")
        header_bytes = f.read(header_len)
    try:
        entries = _header_entries(parse_json(header_bytes))
    except ValueError as exc:  # JSONProblem included: a reason in words
        raise CheckpointError(f"{path} has a corrupt safetensors header ({exc}); it should be a JSON object of "
                              "tensor name -> dtype, shape and data_offsets: the file is damaged, fetch it again") from None
    unknown = sorted({e[0] for e in entries.values()} - set(SAFETENSORS_DTYPES))
    if unknown:
        names = [u if u.isprintable() and len(u) <= 20 else shown(u, 20) for u in unknown]
        raise CheckpointError(f"{path} holds tensors of type {short_list(names)}, which this tool does not read; "
                              "save them as F32, F16 or BF16")
    entries = {k: (SAFETENSORS_DTYPES[d], shape, start, stop) for k, (d, shape, start, stop) in entries.items()}
    base = 8 + header_len
    end = max((e[3] for e in entries.values()), default=0)
    if base + end > size:
        raise CheckpointError(
            f"{path} is truncated: its safetensors header describes {base + end} bytes but the file has {size}; "
            "fetch it again"
        )
    for name, (dtype, shape, start, stop) in entries.items():
        numel = math.prod(shape)
        if not start <= stop or stop - start != numel * dtype.itemsize:
            raise CheckpointError(f"{path} is a damaged safetensors file (tensor {shown(name)}: {stop - start} bytes "
                                  f"for {shape} {str(dtype).removeprefix('torch.')}); fetch it again")
    # As the format requires (and safetensors' own reader checks): the tensors tile the data buffer, in offset
    # order, with no gap, no overlap and nothing after the last one, so no two tensors share bytes.
    spans = sorted((start, stop) for _, _, start, stop in entries.values())
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:])) or (spans and spans[0][0] != 0) or base + end != size:
        raise CheckpointError(f"{path} is a damaged safetensors file (its tensors overlap, leave gaps or do not end "
                              "where the file does); fetch it again")
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    data = torch.empty(0, dtype=torch.uint8).set_(storage)  # (size,) bytes: the whole file, mapped
    out: StateDict = {}
    for name, (dtype, shape, start, stop) in entries.items():
        raw = data[base + start: base + stop]
        if (base + start) % dtype.itemsize:  # unaligned (not what safetensors writes): copy to view it
            raw = raw.clone()
        out[name] = raw.view(dtype).view(shape)  # (numel,) bytes -> dtype -> shape
    return out


TRUST_ADVICE = "if you trust its source, pass trust=True"


def torch_load(path: Path, *, trust: bool = False, mmap: bool = False, advice: str = TRUST_ADVICE,
               damaged: str = "fetch it again") -> Any:
    """`torch.load` of a pickle file, safely: `weights_only=True` (tensors, plain containers and `SAFE_GLOBALS`)
    unless `trust`. A pickle that asks for more is refused with `UnsafeCheckpointError` naming the globals it asked
    for, ending with `advice` (what the caller offers instead: by default `trust=True`); a damaged one is a
    `CheckpointError` with the unpickler's own complaint (never torch's advice to set weights_only=False), ending
    with `damaged`."""
    if trust:
        log.warning("%s: loading with weights_only=False (trusted file): its pickle may run code", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        except Exception as exc:  # anything the pickle raised
            raise CheckpointError(f"{path} could not be read even as a trusted file: {first_line(str(exc))}") from None
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
                f"{path} asks to build objects beyond tensors ({short_list(names)}), so it was not loaded; {advice}"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt ({_pickle_detail(message)}); {damaged}") from None


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
