"""Loading a checkpoint into a model: one chain for every model class.

    read -> convert -> classify -> fit -> assign -> materialise -> report

* read, convert: `checkpoint.read_checkpoint` (file or model folder -> tensors in official key names; each fix
  logged); a model folder's config.json is checked against the model's config (`check_folder_config`);
* classify: `checkpoint.classify` against the masked autoencoder's `ExpectedState`, once;
* fit: the model's own filter (timm's `filter_fn`) picks the tensors it loads and fixes them (a sin-cos
  table for another grid, a position table to interpolate, a classifier to keep or start fresh);
* assign: the model is built on the meta device and the tensors are assigned, not copied (memory-mapped
  from the file), or copied into an existing model; on the way each tensor is read once to check that
  it holds no NaN or infinity (`scan`): such a file is refused unless `allow_nonfinite=True`;
* materialise: what the file did not hold gets memory and the model's official init;
* report: a `LoadReport`, logged; its warnings are raised as `UserWarning`.

This module imports no model class: a model class hands itself in, with its filter. Nothing here prints.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from ..errors import IncompatibleCheckpointError, NonFiniteCheckpointError
from ..utils.device import resolve_device
from ..utils.nonfinite import describe_nonfinite, nonfinite_tensors
from .classify import Classification, ExpectedState, Kind, Part, classify
from .keys import HF_ACTIVATION, HF_CONFIG_SIZES, StateDict
from .read import CheckpointData, read_checkpoint

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)


@dataclass
class LoadReport:
    """What a load did. `kind` is `full` or `encoder-only` (incompatible files raise instead;
    `partial` only with strict=False)."""

    path: Path
    kind: Kind
    source_format: str
    container: str
    num_loaded: int  # tensors taken from the file
    num_expected: int  # keys the model has
    missing: list[str]  # model keys not in the file (the decoder, for encoder-only)
    unexpected: list[str]  # file keys not in the model (always empty: those raise)
    ignored: list[str]  # file keys deliberately not loaded (classifier heads, decoder for a classifier)
    fixes: list[str]  # each change made on the way, in order
    num_parameters: int  # parameters in the loaded tensors
    weights_only: bool
    warnings: list[str] = field(default_factory=list)
    # loaded tensors holding NaN or infinite values: name -> how many (only with allow_nonfinite=True)
    nonfinite: dict[str, int] = field(default_factory=dict)
    run: dict[str, Any] | None = None  # a training run's settings, when the file is a run's checkpoint

    @property
    def decoder_random(self) -> bool:
        return self.kind == "encoder-only"


@dataclass
class Fitted:
    """What a model's filter hands back: the tensors to load, and what it did to get them."""

    state: StateDict  # official names of the model, float32
    kind: Kind  # what the report calls the file
    ignored: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nonfinite: dict[str, int] = field(default_factory=dict)  # filled by `scan`


class Loadable(Protocol):
    """What a model class provides to be loaded by this chain."""

    load_report: LoadReport | None

    def init_missing_(self, names: Collection[str]) -> None: ...


# A model's filter: (file, its classification, the model to load into, meta or real) -> Fitted.
FitFn = Callable[[CheckpointData, Classification, Any], Fitted]


# ---- what a model expects ---------------------------------------------------------------------------
@cache
def expected_state_of(
    model_cls: type[nn.Module],
    config: Any,
    part_of: Callable[[str], Part],
    fixed: frozenset[str] = frozenset(),
    alternatives: tuple[tuple[str, Any], ...] = (),
) -> ExpectedState:
    """Key -> shape of `model_cls(config)` in state-dict order, built on the meta device (no memory, no
    init) and cached; `alternatives` are (label, config) pairs whose encoder shapes are listed too, built only
    when a classification asks for them (a file that does not fit): a load that fits pays for one build."""

    def shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = model_cls(cfg)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def encoder_shapes() -> Iterator[tuple[str, dict[str, tuple[int, ...]]]]:
        for label, cfg in alternatives:
            yield label, {k: s for k, s in shapes(cfg).items() if part_of(k) == "encoder"}

    own = shapes(config)
    name = getattr(config, "name", "") or config.architecture_name
    return ExpectedState(name, own, {k: part_of(k) for k in own}, fixed, _Lazy(encoder_shapes))


class _Lazy(Sequence):
    """A sequence computed on first use, then kept."""

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self._make, self._items = make, None

    def _all(self) -> list[Any]:
        if self._items is None:
            self._items = list(self._make())
        return self._items

    def __getitem__(self, i: Any) -> Any:
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())


# ---- the chain ----------------------------------------------------------------------------------------
def from_pretrained(
    model_cls: type[M],
    config: Any,
    path: str | Path | CheckpointData,
    *,
    reference: ExpectedState,
    fit: FitFn,
    trust: bool = False,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
) -> M:
    """Build `model_cls(config)` from a checkpoint without initialising the weights it is about to replace.

    The module is built on the meta device (no memory, no init), the file is memory-mapped and its tensors
    are assigned, not copied. Whatever the file does not hold is materialised and given the official
    init by the model (`init_missing_`). The report is kept as `model.load_report`. `device` goes through
    `resolve_device` (an unavailable one is a `DeviceError` before the file is read). A tensor holding NaN
    or infinite values raises `NonFiniteCheckpointError` unless `allow_nonfinite=True` (then the report
    warns, naming them).

    Args:
        model_cls: the model class to build; it provides `init_missing_` and takes the report as `load_report`.
        config: the config `model_cls` is built from; a model folder's config.json is checked against it
            (`check_folder_config`).
        path: a checkpoint file or model folder (`read_checkpoint`), or a `CheckpointData` already read (used as it is).
        reference: the masked autoencoder's `ExpectedState` (`expected_state_of`) the file is classified against.
        fit: the model's filter: picks and fixes the tensors to load (`FitFn`).
        trust: read a pickle file with `weights_only=False` (its pickle may run code); safetensors need no trust.
        device: where the built model goes (`resolve_device`).
        allow_nonfinite: load tensors holding NaN or infinite values (the report then names them) instead of raising.
    """
    target = resolve_device(device)
    data = read(path, trust=trust)
    notes = check_folder_config(data, config)
    result = classify(data.state_dict, reference, data.classifier)
    with torch.device("meta"):
        model = model_cls(config)
    fitted = fit(data, result, model)
    fitted.warnings[:0] = notes
    log.info("%s: fit: %d tensors to load (%s)", data.path.name, len(fitted.state), fitted.kind)
    assign(model, fitted, data.path, allow_nonfinite=allow_nonfinite)
    missing = materialise(model, fitted.state)
    finish(model, data, fitted, missing)
    return model.to(target)


def load_into(model: M, path: str | Path | CheckpointData, *, reference: ExpectedState, fit: FitFn, trust: bool = False,
              allow_nonfinite: bool = False) -> LoadReport:
    """Load a checkpoint into an existing model (copying), all or nothing: the filter and the scan for
    NaN / infinite values raise before a single tensor is copied; what the file does not hold keeps the
    model's current values.

    Args:
        model: the model to load into; its `config` (if any) is checked against a model folder's config.json.
        path: a checkpoint file or model folder (`read_checkpoint`), or a `CheckpointData` already read (used as it is).
        reference: the masked autoencoder's `ExpectedState` (`expected_state_of`) the file is classified against.
        fit: the model's filter: picks and fixes the tensors to load (`FitFn`).
        trust: read a pickle file with `weights_only=False` (its pickle may run code); safetensors need no trust.
        allow_nonfinite: load tensors holding NaN or infinite values (the report then names them) instead of raising.

    Returns the `LoadReport`, also kept as `model.load_report`."""
    data = read(path, trust=trust)
    notes = check_folder_config(data, getattr(model, "config", None))
    result = classify(data.state_dict, reference, data.classifier)
    fitted = fit(data, result, model)
    fitted.warnings[:0] = notes
    scan(fitted, data.path, allow_nonfinite=allow_nonfinite)  # the copy step's check, before any copy
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(fitted.state, strict=False)
    if unexpected:  # cannot happen after the filter; guard the invariant
        raise IncompatibleCheckpointError(f"{data.path}: unexpected keys after fitting: {unexpected[:3]}")
    log.info("%s: copied %d tensors, %d kept their values", data.path.name, len(fitted.state), len(missing))
    return finish(model, data, fitted, list(missing))


# ---- the steps ----------------------------------------------------------------------------------------
def read(path: str | Path | CheckpointData, *, trust: bool) -> CheckpointData:
    """read + convert, each fix logged (by `read_checkpoint`); a `CheckpointData` already read is used as it is
    (a caller that classified a file first to choose the model does not read it twice)."""
    if isinstance(path, CheckpointData):
        return path
    data = read_checkpoint(path, trust=trust)
    log.info("%s: read %d tensors (%s, %s)", data.path.name, len(data.state_dict), data.source_format, data.container)
    return data


def check_folder_config(data: CheckpointData, config: Any) -> list[str]:
    """Check a model folder's config.json against the model's `config`: every size of `convert.HF_CONFIG_SIZES`
    it states must be a whole number from 1 to 2**31 - 1 (`image_size` and `patch_size` also a pair of them), and
    each the model has must match, except `image_size` (a model at another input size regenerates its position tables,
    as from any file), (else `IncompatibleCheckpointError` naming the field and both values) and the
    activation must be the exact GELU. A different `layer_norm_eps` (a positive number) is not refused (the weights
    are the same): the model's value is used and the returned warning says what the folder's would change."""
    folder = data.folder_config
    if not folder or config is None:
        return []
    for field_name in HF_CONFIG_SIZES:  # the types first, whatever the model: a size that is not one is never used
        if field_name in folder and not _is_size(folder[field_name], pair=field_name in ("image_size", "patch_size")):
            raise IncompatibleCheckpointError(
                f"{data.path}: its config.json gives {field_name} as {_described(folder[field_name])}, not a whole "
                f"number from 1 to {_MAX_SIZE - 1}; the folder is damaged or not a ViTMAE model, fetch it again")
    for field_name, attr in HF_CONFIG_SIZES.items():
        if field_name not in folder or not hasattr(config, attr):
            continue
        if attr == "img_size":  # the input size is the model's to choose, as with any file: tables are regenerated
            continue
        theirs, ours = folder[field_name], getattr(config, attr)
        if theirs != ours:
            raise IncompatibleCheckpointError(
                f"{data.path}: its config.json says {field_name}={_plain(theirs)} but the model has {attr}={_plain(ours)}; "
                "build the model with the folder's sizes or give the folder of the model you mean"
            )
    act = folder.get("hidden_act", HF_ACTIVATION)
    if act != HF_ACTIVATION:
        shown = repr(act) if isinstance(act, str) and len(act) <= 40 else _described(act)
        raise IncompatibleCheckpointError(
            f"{data.path}: its config.json says hidden_act={shown} but this model's blocks use the exact GELU "
            f"({HF_ACTIVATION!r}); the weights were trained for another activation")
    eps, own = folder.get("layer_norm_eps"), getattr(config, "layer_norm_eps", None)
    if eps is not None and not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1):
        raise IncompatibleCheckpointError(
            f"{data.path}: its config.json gives layer_norm_eps as {_described(eps)}, not a positive number below 1; "
            "the folder is damaged or not a ViTMAE model, fetch it again")
    if eps is None or own is None or float(eps) == own:
        return []
    # LayerNorm divides by sqrt(var + eps): the two values differ by about |eps1 - eps2| / (2 var) relative,
    # measured with torch.nn.functional.layer_norm over 1024-wide tokens (tests/large/test_load.py checks these).
    return [f"config.json says layer_norm_eps={float(eps):g} but the model uses {own:g} (the official MAE value is "
            f"1e-6, which the weights were trained with), and {own:g} is used: LayerNorm divides by sqrt(var + eps), "
            "so the two differ by about 5e-7 relative on tokens of variance 1 (natural images), 0.5% at variance 1e-4 "
            "and 41% at 1e-6 (near-flat tokens); transformers runs this folder with its own value"]


_MAX_SIZE = 2**31


def _is_size(value: Any, *, pair: bool = False) -> bool:
    """A JSON whole number from 1 to 2**31 - 1 (not a bool, a float or a string); or, with `pair`, a list of two."""
    if pair and isinstance(value, list) and len(value) == 2:
        return all(_is_size(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX_SIZE


def _described(value: Any) -> str:
    """A config.json value in a message, without echoing more than a short number: `a string`, `300 digits`."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, int):
        digits = len(str(abs(value)))
        return str(value) if digits <= 12 else f"a number of {digits} digits"
    if isinstance(value, float):
        return repr(value)  # 1024.0: not a whole number to JSON readers that keep types
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _plain(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def scan(fitted: Fitted, path: Path, *, allow_nonfinite: bool) -> dict[str, int]:
    """Read each tensor about to be loaded once (`nonfinite.count_nonfinite`) and refuse the file if any
    holds NaN or infinite values, naming them, unless `allow_nonfinite`; then the tensors are noted in
    `fitted.nonfinite` and a warning names them. Only the tensors the model loads are read."""
    counts = nonfinite_tensors(fitted.state)
    if not counts:
        return counts
    named = describe_nonfinite(counts, fitted.state)
    if not allow_nonfinite:
        raise NonFiniteCheckpointError(
            f"{path} holds NaN or infinite values in {len(counts)} of the tensors to load ({named}), so nothing was "
            "loaded; the file is damaged or comes from a diverged run: fetch or export it again, or pass "
            "allow_nonfinite=True to load it anyway"
        )
    fitted.nonfinite.update(counts)
    fitted.warnings.append(f"loaded with allow_nonfinite=True: {len(counts)} tensors hold NaN or infinite values "
                           f"({named}), so outputs that depend on them will not be finite")
    return counts


def assign(model: nn.Module, fitted: Fitted, path: Path, *, allow_nonfinite: bool = False) -> None:
    """Assign the fitted tensors into a meta-built model (the tensors become the parameters: no copy),
    each read once on the way for NaN / infinite values (`scan`, which may refuse the file)."""
    scan(fitted, path, allow_nonfinite=allow_nonfinite)
    state = fitted.state
    # Parameters that do not train (the fixed sin-cos tables) must stay so: assign=True would take
    # requires_grad from the file's tensor.
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    model.load_state_dict(state, strict=False, assign=True)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)


def materialise(model: nn.Module, loaded: Mapping[str, torch.Tensor]) -> list[str]:
    """Give real memory to every parameter still on the meta device and let the model initialise them
    (`init_missing_`, its official init). Returns their names."""
    missing = [k for k, v in model.state_dict().items() if v.is_meta]
    if not missing:
        return []
    for module in model.modules():
        if module is not model and any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
    for name, param in list(model.named_parameters(recurse=False)):
        if param.is_meta:
            setattr(model, name, nn.Parameter(torch.empty(param.shape), requires_grad=param.requires_grad))
    with torch.no_grad():
        model.init_missing_(missing)  # type: ignore[operator]
    log.info("materialised %d tensors the file did not hold (%s ...)", len(missing), missing[0])
    return missing


def finish(model: nn.Module, data: CheckpointData, fitted: Fitted, missing: list[str]) -> LoadReport:
    """The report: kept on the model, logged, its warnings raised as `UserWarning`."""
    state = fitted.state
    report = LoadReport(
        path=data.path, kind=fitted.kind, source_format=data.source_format, container=data.container,
        num_loaded=len(state), num_expected=len(model.state_dict()), missing=missing, unexpected=[],
        ignored=[k for k in [*data.dropped, *fitted.ignored] if k not in state], fixes=[*data.fixes, *fitted.fixes],
        num_parameters=sum(t.numel() for t in state.values()), weights_only=data.weights_only,
        warnings=list(fitted.warnings), nonfinite=dict(fitted.nonfinite), run=data.run,
    )
    model.load_report = report  # type: ignore[assignment]
    log.info("%s: %s checkpoint, %d/%d tensors loaded (%s, %s)", data.path.name, report.kind, report.num_loaded,
             report.num_expected, report.source_format, report.container)
    for message in report.warnings:
        log.warning("%s: %s", data.path.name, message)
        warnings.warn(f"{data.path.name}: {message}", UserWarning, stacklevel=4)
    return report


def as_float32(state: StateDict, fixes: list[str]) -> StateDict:
    """Cast floating tensors stored in another precision to float32, noting each cast in `fixes`."""
    cast: dict[str, int] = {}
    out: StateDict = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            key = str(tensor.dtype).removeprefix("torch.")
            cast[key] = cast.get(key, 0) + 1
            tensor = tensor.float()
        out[name] = tensor
    fixes.extend(f"cast {count} tensors from {dtype} to float32" for dtype, count in cast.items())
    return out
