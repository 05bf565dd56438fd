"""What a training run keeps between epochs: generator states, checkpoints, the run folder's files.

* Every random draw of a run (the epoch's data order, a sample's augmentation, a step's mixup and drop path)
  takes its own seed from `keyed` (a hash of the run's seed and what the draw is for); what is kept here is
  the generator states a checkpoint carries (`rng`).
* Checkpoints follow the official `util/misc.save_model` (facebookresearch/mae): `{"model", "optimizer",
  "epoch", "scaler", "args"}`, with `args` as plain data (the official file pickles an `argparse.Namespace`,
  which `weights_only=True` refuses), plus `rng` (the generator states) and `best` (the best val top-1 so far).
  Every entry is a tensor, a number, a string or a container of them, so the file loads with
  `torch.load(weights_only=True)`; `checkpoint.read_checkpoint` takes the model from the `model` entry.
* Retention: `checkpoint-last.pth` every epoch, `checkpoint-best.pth` when val top-1 improves, and
  `checkpoint-{epoch}.pth` every `save_every` epochs (the official name, 0-based epoch). The copies are hard
  links of the last file where the file system allows (a ViT-L checkpoint with AdamW state is ~3.6 GB).
* `log.jsonl`: one JSON object per finished epoch; a resumed run first drops the lines of epochs after its
  checkpoint (an epoch whose log line was written but whose checkpoint was not is run again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.containers import save_torch
from ..checkpoints.read import torch_load
from ..errors import CheckpointError, CheckpointNotFoundError, MAEError, invalid_argument
from ..utils.atomic import atomic_path
from ..utils.jsontext import JSONProblem, parse_json

LAST = "checkpoint-last.pth"
BEST = "checkpoint-best.pth"
LOG = "log.jsonl"
CONFIG = "config.json"
RUN_ENTRIES = ("model", "optimizer", "epoch", "scaler", "args")  # the official ones; ours add rng and best


def rng_state(device: torch.device) -> dict[str, Any]:
    """The generator states of this process (torch CPU, and the CUDA device's when it is one)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved (a CUDA state only on a CUDA device)."""
    if isinstance(state.get("torch"), torch.Tensor):
        torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)


def plain(value: Any) -> Any:
    """`value` as data `weights_only` and JSON both accept: tuples and paths become lists and strings."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) is not plain data")


def config_from_dict(cls: Any, data: Mapping[str, Any], tuples: tuple[str, ...]) -> Any:
    """The frozen config dataclass `cls` a run saved (`args["config"]`, `plain` data): unknown keys are an error (a
    run of another version), the fields named in `tuples` come back as tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise invalid_argument("resume", f"the run's settings name {', '.join(unknown)}, unknown here; resume "
                                         "with the version of the library that wrote the run")
    values = dict(data)
    for name in tuples:
        if name in values:
            values[name] = tuple(values[name])
    return cls(**values)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """`torch.save(state)` atomically: a reader (or a run killed meanwhile) never sees half a file."""
    with atomic_path(path) as tmp:
        save_torch(dict(state), tmp, path)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source`, atomically: a hard link (no second 3.6 GB on disk) or a byte copy."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(source, tmp)


def resume_file(path: str | os.PathLike[str]) -> Path:
    """The checkpoint to resume from: `path` itself, or the run folder's `checkpoint-last.pth`."""
    path = Path(path)
    if path.is_dir():
        last = path / LAST
        if not last.is_file():
            error = CheckpointNotFoundError(f"{path} holds no {LAST}; name a checkpoint file or the folder of a run "
                                            "that finished at least one epoch")
            error.argument = "resume"
            raise error
        return last
    if not path.is_file():
        error = CheckpointNotFoundError(f"no checkpoint at {path}; name a checkpoint file or a run folder to resume")
        error.argument = "resume"
        raise error
    return path


RESUME_ADVICE = ("a training run's checkpoints hold only tensors and plain data, so resume from one written by a "
                 "run (checkpoint-last.pth)")


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by a run (`torch.load(weights_only=True)`, as `checkpoints.read.torch_load` reads every
    pickle: one that asks for more is refused naming the globals), with every entry resuming needs."""
    try:
        state = torch_load(path, advice=RESUME_ADVICE, damaged="it cannot be resumed from: name a checkpoint "
                           "written by a training run (checkpoint-last.pth)")
    except CheckpointError as exc:  # a pickle that carries code, or a damaged file: the run's file to fix
        exc.argument = "resume"
        raise
    missing = [k for k in (*RUN_ENTRIES, "rng") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)} entr{'y' if len(missing) == 1 else 'ies'}; resume "
                              "from a checkpoint written by a training run (checkpoint-last.pth)")
    return state


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


LOG_WHAT = "one JSON object per finished epoch"


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `log.jsonl` (none when it does not exist); a line that is not a JSON object (with a whole
    `epoch`, when it has one) is a `MAEError` naming the file, the line and what each line should be."""
    path = run_dir / LOG
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, allow_nan=True)  # a diverged epoch logs NaN, as json.dumps writes it
        except JSONProblem as exc:
            raise _log_error(path, number, str(exc)) from None
        if not isinstance(record, dict):
            raise _log_error(path, number, "not a JSON object")
        epoch = record.get("epoch", 0)
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise _log_error(path, number, "its epoch is not a whole number")
        records.append(record)
    return records


def _log_error(path: Path, number: int, reason: str) -> MAEError:
    reason = reason.replace("(line 1, column", "(column")  # a log line is one line
    error = MAEError(f"{path} line {number} is {reason if reason.startswith('not') else f'not usable ({reason})'}; "
                     f"the run's log holds {LOG_WHAT}: remove the damaged line (or the file) to resume the run")
    error.argument = "resume"
    return error


def append_log(run_dir: Path, record: Mapping[str, Any]) -> None:
    """One more line of `log.jsonl`: the file is rewritten atomically (a few lines per epoch), never torn."""
    records = [*read_log(run_dir), dict(record)]
    with atomic_path(run_dir / LOG) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def truncate_log(run_dir: Path, last_epoch: int) -> list[dict[str, Any]]:
    """Keep the log lines of epochs <= `last_epoch` (the checkpoint a run resumes from); returns them (none without
    a log)."""
    records = read_log(run_dir)
    kept = [r for r in records if r.get("epoch", -1) <= last_epoch]
    if kept != records:
        with atomic_path(run_dir / LOG) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept
