"""Checkpoint files: read any MAE ViT layout safely, say exactly what it is, load it without waste.

The data flow is one way: `read_checkpoint` (file -> tensors in official key names, each fix logged)
-> `classify` (tensors -> full / encoder-only / incompatible, with reasons) -> `load_into` or
`from_pretrained` (tensors -> model, with a `LoadReport`). Nothing here prints; the CLI renders reports.

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
import warnings
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from . import convert
from .config import MAEConfig
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
)
from .layers import init_official_
from .pos_embed import sincos_2d

if TYPE_CHECKING:  # pragma: no cover
    from .model import MaskedAutoencoderViT

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
Kind = Literal["full", "encoder-only", "partial", "incompatible"]

DECODER_PREFIXES: tuple[str, ...] = ("mask_token", "decoder_")
FIXED_TABLES: tuple[str, ...] = ("pos_embed", "decoder_pos_embed")
# Containers that hold the state dict inside a training checkpoint, in the order they are tried.
CONTAINER_KEYS: tuple[str, ...] = ("model", "state_dict", "model_state", "model_state_dict", "module")
# Globals allowed beside tensors: official training checkpoints carry their argparse arguments.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

FULL_FILE = "mae_visualize_vit_large.pth"
ENCODER_FILE = "mae_pretrain_vit_large.pth"
RANDOM_DECODER_WARNING = (
    "this checkpoint holds the encoder only ({n} tensors): the decoder is randomly initialised, so "
    f"reconstructions and losses are meaningless; use {FULL_FILE} (398 tensors) to reconstruct images"
)


def key_part(name: str) -> str:
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
                f"{path}: {_first_line(str(exc))}; it is not a ViTMAE checkpoint this tool knows"
            ) from None
        fixes.append("renamed HuggingFace ViTMAE keys to the official names (q, k, v fused into qkv)")
    else:
        sd, classifier = convert.split_classifier(sd)
        source = "timm" if classifier else "official"
        if classifier:
            fixes.append(f"set aside {len(classifier)} classifier tensors ({_short_list(list(classifier))}): "
                         "not part of MAE")
    for fix in fixes:
        log.info("%s: %s", path.name, fix)
    return CheckpointData(path, sd, container, source, weights_only, fixes, extras, classifier)


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        hint = ""
        if path.name in (FULL_FILE, ENCODER_FILE, "mae_visualize_vit_large_ganloss.pth"):
            name = {FULL_FILE: "visualize", ENCODER_FILE: "pretrain"}.get(path.name, "visualize-gan")
            hint = f"; download it with `mae-large download {name} --dest {path.parent}`"
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
        if "Weights only load failed" in message or "Unsupported global" in message:
            raise UnsafeCheckpointError(
                f"{path} asks to build objects beyond tensors ({', '.join(_unsafe_globals(path, message))}), so it "
                "was not loaded; if you trust its source, pass trust=True (CLI: --trust-checkpoint)"
            ) from None
        raise CheckpointError(
            f"{path} is truncated or corrupt ({_first_line(message)}); fetch it again"
        ) from None


def _unsafe_globals(path: Path, message: str) -> list[str]:
    names: list[str] = []
    try:  # exact list for zip files; it reads the pickle without running it
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format: fall back to what torch's message names
        names = re.findall(r"GLOBAL ([\w.]+)", message)
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS}
    names = [n for n in dict.fromkeys(names) if n not in allowed]
    return names or ["unknown globals"]


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
            also = f" (also present: {_short_list(extras)})" if extras else ""
            fixes.append(f"took the state dict from the {key!r} entry{also}")
            return dict(inner)
    found = ", ".join(repr(k) for k in list(raw)[:6]) or "nothing"
    raise CheckpointError(
        f"{path} holds no state dict (found {found}); expected tensors at the top level or under 'model'"
    )


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
    num_expected: int  # keys of the full model (398 for ViT-L)
    num_encoder: int  # keys of the encoder part (294 for ViT-L)
    missing: list[str]
    unexpected: list[str]
    mismatched: list[ShapeMismatch]
    looks_like: str | None  # a known architecture the shapes match, when they are not this one
    hint: str | None
    not_float: list[str] = field(default_factory=list)  # weights stored as integers: not model weights

    @property
    def loadable(self) -> bool:
        return self.kind != "incompatible"

    def problem(self, limit: int = 3) -> str:
        """One sentence naming the first offending keys."""
        parts = []
        if self.mismatched:
            parts.append("shape mismatch " + "; ".join(str(m) for m in self.mismatched[:limit]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys ({_short_list(self.missing, limit)})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys ({_short_list(self.unexpected, limit)})")
        if self.not_float:
            parts.append(f"{len(self.not_float)} tensors that are not floating point ({_short_list(self.not_float, limit)})")
        return "; ".join(parts) or "nothing wrong"


@cache
def expected_shapes(config: MAEConfig) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for `config`, in state-dict order (built on the meta device: no memory)."""
    from .model import MaskedAutoencoderViT

    with torch.device("meta"):
        model = MaskedAutoencoderViT(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


KNOWN_ARCHITECTURES: tuple[tuple[str, MAEConfig], ...] = (
    ("an MAE ViT-Base/16 checkpoint (mae_*_vit_base.pth)", MAEConfig.vit_base()),
    ("an MAE ViT-Large/16 checkpoint", MAEConfig.vit_large()),
    ("an MAE ViT-Huge/14 checkpoint (mae_*_vit_huge.pth)", MAEConfig.vit_huge()),
)


def _compare(sd: StateDict, expected: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[ShapeMismatch]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [ShapeMismatch(k, expected[k], tuple(sd[k].shape)) for k in expected
                  if k in sd and tuple(sd[k].shape) != expected[k]]
    return missing, unexpected, mismatched


def _is_regenerable(name: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """A fixed sin-cos table for another grid: not learned, so it is regenerated, not a mismatch."""
    return name in FIXED_TABLES and len(actual) == 3 and actual[-1] == expected[-1] and actual[0] == 1


def classify(sd: StateDict, config: MAEConfig | None = None) -> Classification:
    """full (every key), encoder-only (exactly the encoder keys), or incompatible, against `config`."""
    config = config or MAEConfig.vit_large()
    expected = expected_shapes(config)
    missing, unexpected, mismatched = _compare(sd, expected)
    mismatched = [m for m in mismatched if not _is_regenerable(m.name, m.actual, m.expected)]
    not_float = [k for k in expected if k in sd and not sd[k].is_floating_point()]
    encoder = [k for k in expected if key_part(k) == "encoder"]
    decoder_missing = [k for k in missing if key_part(k) == "decoder"]
    encoder_missing = [k for k in missing if key_part(k) == "encoder"]
    kind: Kind
    if unexpected or mismatched or encoder_missing or not_float:
        kind = "incompatible"
    elif not missing:
        kind = "full"
    elif len(decoder_missing) == len(expected) - len(encoder):
        kind = "encoder-only"
    else:  # some decoder keys but not all: a damaged or hand-edited file
        kind = "incompatible"
    looks_like = hint = None
    if kind == "incompatible":
        looks_like = _guess_architecture(sd, config)
        if looks_like:
            hint = f"this looks like {looks_like}, not {config.name or 'this model'}"
        elif decoder_missing and not encoder_missing and not unexpected and not mismatched:
            hint = "the decoder is only partly present; the file is damaged or was edited"
    if not_float and not hint:
        hint = f"{len(not_float)} tensors are not floating point ({_short_list(not_float)}, {sd[not_float[0]].dtype})"
    return Classification(kind, len(sd), len(expected), len(encoder), missing, unexpected, mismatched, looks_like, hint,
                          not_float)


def _guess_architecture(sd: StateDict, config: MAEConfig) -> str | None:
    """Name a known MAE size whose encoder shapes all match `sd` (ViT-B/L/H), if any."""
    for label, arch in KNOWN_ARCHITECTURES:
        if arch.embed_dim == config.embed_dim and arch.depth == config.depth and arch.patch_size == config.patch_size:
            continue  # that is this model's own size
        shapes = expected_shapes(arch)
        enc = {k: s for k, s in shapes.items() if key_part(k) == "encoder" and k not in FIXED_TABLES}
        if all(k in sd and tuple(sd[k].shape) == s for k, s in enc.items()) and not any(
            k.startswith("blocks.") and k not in shapes for k in sd
        ):
            return label
    return None


# ================================================================================================
# Loading
# ================================================================================================
@dataclass
class LoadReport:
    """What a load did. `kind` is `full` or `encoder-only` (incompatible files raise instead;
    `partial` only with strict=False)."""

    path: Path
    kind: Kind
    source_format: str
    container: str
    num_loaded: int  # tensors copied from the file
    num_expected: int  # keys the model has
    missing: list[str]  # model keys not in the file (the decoder, for encoder-only)
    unexpected: list[str]  # file keys not in the model (always empty: those raise)
    ignored: list[str]  # file keys deliberately not loaded (classifier heads, decoder for a classifier)
    fixes: list[str]  # each change made on the way, in order
    num_parameters: int  # parameters in the loaded tensors
    weights_only: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def decoder_random(self) -> bool:
        return self.kind == "encoder-only"


def _prepare(model: MaskedAutoencoderViT, data: CheckpointData, strict: bool) -> tuple[StateDict, Classification, list[str]]:
    """Check the file against the model and apply the fixes a load needs; raise on anything wrong."""
    result = classify(data.state_dict, model.config)
    if result.kind == "incompatible" and (strict or result.mismatched or result.unexpected or result.not_float):
        hint = f"; {result.hint}" if result.hint else ""
        raise IncompatibleCheckpointError(
            f"{data.path} does not fit {model.config.name or 'this model'}: {result.problem()}{hint}; nothing was loaded"
        )
    sd = dict(data.state_dict)
    fixes: list[str] = []
    expected = expected_shapes(model.config)
    for name in FIXED_TABLES:
        if name in sd and tuple(sd[name].shape) != expected[name]:
            # The table is a function of the grid, not learned: regenerating it is exact.
            sd[name] = sincos_2d(expected[name][-1], model.config.grid_size, cls_token=True).unsqueeze(0)
            fixes.append(f"regenerated the fixed sin-cos {name} for the {model.config.grid_size} patch grid "
                         f"(file has {list(data.state_dict[name].shape)})")
    cast: dict[str, int] = {}
    for name, tensor in sd.items():
        if tensor.dtype != torch.float32 and tensor.is_floating_point():
            sd[name] = tensor.float()
            cast[str(tensor.dtype).removeprefix("torch.")] = cast.get(str(tensor.dtype).removeprefix("torch."), 0) + 1
    for dtype, count in cast.items():
        fixes.append(f"cast {count} tensors from {dtype} to float32")
    for fix in fixes:
        log.info("%s: %s", data.path.name, fix)
    return sd, result, fixes


def _report(data: CheckpointData, result: Classification, sd: StateDict, fixes: list[str]) -> LoadReport:
    warns = [RANDOM_DECODER_WARNING.format(n=len(sd))] if result.kind == "encoder-only" else []
    # Only a strict=False load gets here with an incompatible classification: missing keys kept their init.
    kind: Kind = "partial" if result.kind == "incompatible" else result.kind
    if kind == "partial":
        warns.append(f"strict=False: {len(result.missing)} tensors were not in the file and keep their "
                     f"initial values ({_short_list(result.missing)})")
    return LoadReport(
        path=data.path, kind=kind, source_format=data.source_format, container=data.container,
        num_loaded=len(sd), num_expected=result.num_expected, missing=list(result.missing), unexpected=[],
        ignored=list(data.dropped), fixes=[*data.fixes, *fixes], num_parameters=sum(t.numel() for t in sd.values()),
        weights_only=data.weights_only, warnings=warns,
    )


def _announce(report: LoadReport) -> None:
    log.info("%s: %s checkpoint, %d/%d tensors loaded (%s, %s)", report.path.name, report.kind,
             report.num_loaded, report.num_expected, report.source_format, report.container)
    for message in report.warnings:
        log.warning("%s: %s", report.path.name, message)
        warnings.warn(f"{report.path.name}: {message}", UserWarning, stacklevel=4)


def load_into(model: MaskedAutoencoderViT, path: str | Path, *, strict: bool = True, trust: bool = False) -> LoadReport:
    """Load a checkpoint into an existing model (copying), all or nothing.

    A full file loads all tensors; an encoder-only file loads the encoder and leaves the decoder as it
    is (the official random init of a freshly built model), with a loud `UserWarning`. Anything else
    raises `IncompatibleCheckpointError` before a single tensor is copied.
    """
    data = read_checkpoint(path, trust=trust)
    sd, result, fixes = _prepare(model, data, strict)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or set(missing) != set(result.missing):  # cannot happen after _prepare; guard the invariant
        raise IncompatibleCheckpointError(
            f"{data.path}: unexpected load result (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    report = _report(data, result, sd, fixes)
    model.load_report = report
    _announce(report)
    return report


def from_pretrained(
    cls: type[MaskedAutoencoderViT],
    path: str | Path,
    config: MAEConfig | None = None,
    *,
    trust: bool = False,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> MaskedAutoencoderViT:
    """Build a model from a checkpoint without a random init of the weights it is about to replace.

    The module is built on the meta device (no memory, no init), the file is memory-mapped and its
    tensors are assigned, not copied. Whatever the file does not hold (the decoder of an encoder-only
    file) is materialised and given the official init. The model is returned in eval mode.
    """
    config = config or MAEConfig.vit_large()
    data = read_checkpoint(path, trust=trust)
    with torch.device("meta"):
        model = cls(config)
    sd, result, fixes = _prepare(model, data, strict)
    # Keep the fixed tables fixed: assign=True would otherwise take requires_grad from the file's tensor.
    model.load_state_dict(sd, strict=False, assign=True)
    for name in FIXED_TABLES:
        getattr(model, name).requires_grad_(False)
    if result.missing:
        _materialise_missing(model)
    report = _report(data, result, sd, fixes)
    model.load_report = report
    _announce(report)
    model = model.to(device)
    return model.eval()


def _materialise_missing(model: MaskedAutoencoderViT) -> None:
    """Give real memory and the official init to every parameter the file did not provide."""
    for module in model.modules():
        if module is model or not any(p.is_meta for p in module.parameters(recurse=False)):
            continue
        module.to_empty(device="cpu", recurse=False)
        if isinstance(module, torch.nn.Conv2d):  # the patch projection: xavier over the flattened patch
            torch.nn.init.xavier_uniform_(module.weight.data.view(module.weight.shape[0], -1))
            torch.nn.init.zeros_(module.bias)
        else:
            init_official_(module)
    for name in ("cls_token", "mask_token", *FIXED_TABLES):
        param = getattr(model, name)
        if not param.is_meta:
            continue  # loaded from the file: kept exactly as the file has it
        setattr(model, name, torch.nn.Parameter(torch.empty(param.shape), requires_grad=param.requires_grad))
        with torch.no_grad():
            if name in FIXED_TABLES:  # the decoder table of an encoder-only file: a function of the grid
                getattr(model, name).copy_(sincos_2d(param.shape[-1], model.config.grid_size, cls_token=True))
            else:
                torch.nn.init.normal_(getattr(model, name), std=0.02)


def _short_list(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:200] if message.strip() else "no details"

