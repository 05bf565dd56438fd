"""Feature files: one safetensors file for small runs, a folder of shards for data sets; one reader for both.

**One file** (`save_features`, format `mae-large-features/1`): a float32 tensor `features` (N, D); the metadata
holds `files` (a JSON list of the row names), optional `labels` / `classes` (JSON lists) and the writer's strings
(checkpoint, pool, layer, transform, size, dtype ...).

**A shard folder** (format `mae-large-features/2`): each rank writes `shard-r{rank:03d}-{k:05d}.safetensors`
files of at most `shard_size` rows (`ShardWriter`), each atomically as soon as it is full, with the tensors
`features` (n, D) float32, `positions` (n,) int64 (each row's position in the global input list) and `labels`
(n,) int64 (-1: unlabelled). Rank 0 then writes `index.json` from the shard files (`write_index`):
{"format", "rows", "dim", "files" (row names in global order), "labels" (or null), "classes" (or null),
"shards": [{"file", "rows", "rank"}], "checkpoint", "pool", "layer", "transform", "size", "dtype", "world_size",
"shard_size", "model", "source"}. Global row order is input order: rows sorted by position. A row's name is its
image's identity (a file's path, `file.parquet#row`, `shard.tar#key`); `source` says what was read (`Source.describe`:
the form, and for a data set its path, files and columns); one file records the same under its metadata `source`.

Resuming: every shard records the run's settings and which of its rank's inputs it covers (`inputs_end`, and the
failures among them), so a resumed run skips the inputs of complete shards and writes the same bytes.

**Reading**: `open_features(path)` gives a `FeatureSet` over either form: `rows`, `dim`, `names`, `labels`,
`classes`, `meta`, `chunks(size)` (memory-mapped, in global row order, never all at once) and `materialize()`.
Nothing here prints.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from ..errors import MAEError
from ..utils.atomic import atomic_path

__all__ = ["FEATURES_FORMAT", "INDEX_NAME", "SHARDS_FORMAT", "FeatureSet", "ShardWriter", "is_shard_folder",
           "load_features", "open_features", "save_features", "shard_name", "write_index"]

FEATURES_FORMAT = "mae-large-features/1"
SHARDS_FORMAT = "mae-large-features/2"
INDEX_NAME = "index.json"
_SHARD = re.compile(r"^shard-r(\d{3})-(\d{5})\.safetensors$")
_RESERVED = ("files", "labels", "classes")
_SHARD_KEY = "mae-large-shard"  # a shard's one metadata entry: JSON (format, rank, index, settings, inputs, failures)


def shard_name(rank: int, k: int) -> str:
    return f"shard-r{rank:03d}-{k:05d}.safetensors"


def _shards_in(folder: Path) -> list[tuple[int, int, Path]]:
    """(rank, k, path) of every shard file in `folder`, sorted."""
    found = [(int(m[1]), int(m[2]), p) for p in folder.iterdir() if (m := _SHARD.match(p.name))]
    return sorted(found)


def is_shard_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is meant as a shard folder: an existing folder, or a name without the .safetensors suffix."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() != ".safetensors"


def _write(target: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """A safetensors file, atomically; safetensors' I/O errors (a full disk) as `OSError` naming the file."""
    with atomic_path(target) as tmp:
        try:
            safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:  # safetensors reports I/O failures as its own error type
            code = re.search(r"os error (\d+)", str(exc))
            if code is None:
                raise
            errno_ = int(code.group(1))
            raise OSError(errno_, os.strerror(errno_), str(target)) from None
    return target


# ---- one file -------------------------------------------------------------------------------------------------
def save_features(path: str | os.PathLike[str], features: torch.Tensor, names: Sequence[str],
                  metadata: Mapping[str, str] | None = None, *, labels: Sequence[int] | None = None,
                  classes: Sequence[str] | None = None) -> Path:
    """Write `features` (N, D) and the `names` of its rows (optionally their integer `labels` and the `classes`
    they index) to one safetensors file, atomically: it appears complete or not at all, and an error or
    interrupt leaves no temporary file. Returns the path written.

    Args:
        path: the `.safetensors` file to write (replaced if it exists).
        features: the (N, D) tensor; written as float32 on the CPU.
        names: one name per row (stored as the `files` metadata entry).
        metadata: the writer's own str -> str entries (checkpoint, pool, layer ...); `files`, `labels` and `classes`
            are reserved.
        labels: one integer class per row, or None (unlabelled).
        classes: the class names the labels index, or None.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D tensor (N, D), got {shape}")
    names = [str(n) for n in names]
    if len(names) != features.shape[0]:
        raise ValueError(f"{len(names)} names for {features.shape[0]} feature rows; give one name per row")
    if labels is not None and len(labels) != len(names):
        raise ValueError(f"{len(labels)} labels for {len(names)} feature rows; give one label per row")
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata must map str to str, got {key!r}: {value!r}")
    clash = [k for k in _RESERVED if k in meta]
    if clash:
        raise ValueError(f"metadata key {clash[0]!r} is reserved; pass names, labels and classes as arguments")
    meta = {"format": FEATURES_FORMAT, **meta, "files": json.dumps(names)}
    if labels is not None:
        meta["labels"] = json.dumps([int(v) for v in labels])
    if classes is not None:
        meta["classes"] = json.dumps([str(c) for c in classes])
    tensor = features.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return _write(Path(path), {"features": tensor}, meta)


# ---- a shard folder -------------------------------------------------------------------------------------------
class ShardWriter:
    """One rank's shards of a run: rows come in the rank's input order (`add`), a shard is written as soon as it
    holds `shard_size` rows, the last one by `close`. Memory: one shard's rows.

    `settings` (JSON-able) identify the run; every shard records them. With `resume`, the rank's complete shards
    are kept: `skip` is how many of the rank's inputs they cover (the run restarts there), `failures` the inputs
    among them that failed. Without it, a folder that already holds shards is refused."""

    def __init__(self, folder: str | os.PathLike[str], *, rank: int, shard_size: int, dim: int,
                 settings: Mapping[str, Any], resume: bool = False) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            from ..errors import invalid_argument

            raise invalid_argument("shard_size", f"shard size must be a positive integer, got {shard_size!r}")
        self.folder, self.rank, self.shard_size, self.dim = Path(folder), rank, shard_size, dim
        self.settings = json.dumps(dict(settings), sort_keys=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.k = 0  # the next shard's number
        self.skip = 0  # this rank's inputs covered by the shards kept
        self.finished = False  # the kept shards include the rank's last one
        self.failures: list[dict[str, str]] = []  # failures of the inputs the kept shards cover
        existing = _shards_in(self.folder)
        if existing and not resume:
            raise MAEError(f"{self.folder} already holds feature shards; pass --resume to continue that run, or "
                           "write to another folder")
        if resume:
            self._resume(existing, int(settings.get("world_size", 1)))
        self._rows: list[torch.Tensor] = []
        self._positions: list[int] = []
        self._labels: list[int] = []
        self._pending: list[dict[str, str]] = []  # failures since the last shard
        self._start = self.skip

    def _resume(self, existing: list[tuple[int, int, Path]], world_size: int) -> None:
        foreign = [p.name for r, _, p in existing if r >= world_size]
        if foreign:
            raise MAEError(f"{self.folder} holds shards of rank {int(foreign[0][7:10])} ({foreign[0]}): it was written by "
                           f"more than {world_size} process(es); resume with the same number of processes")
        mine = [(k, p) for r, k, p in existing if r == self.rank]
        want = json.loads(self.settings)
        for expected_k, (k, path) in enumerate(mine):
            if k != expected_k:
                raise MAEError(f"{self.folder}: shard {shard_name(self.rank, expected_k)} is missing before {path.name}; "
                               "the folder was edited, so it cannot be resumed: write to another folder")
            with safetensors.safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get(_SHARD_KEY, "{}"))
            have = meta.get("settings", {})
            if have != want:
                key = next((k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)), "settings")
                raise MAEError(f"{self.folder} was written with {key}={have.get(key)!r} and this run has "
                               f"{key}={want.get(key)!r}; resume with the same settings and number of processes, "
                               "or write to another folder")
            self.skip = int(meta["inputs_end"])
            self.finished = bool(meta["final"])
            self.failures += meta["failed"]
            self.k = k + 1

    def add(self, local_index: int, position: int, vector: torch.Tensor | None, label: int = -1,
            failure: dict[str, str] | None = None) -> None:
        """The result of the rank's input `local_index` (global `position`): a vector (D,), or a failure."""
        if local_index < self.skip or self.finished:
            return  # covered by a kept shard
        if failure is not None:
            self._pending.append(failure)
            return
        assert vector is not None
        self._rows.append(vector)
        self._positions.append(position)
        self._labels.append(label)
        if len(self._rows) == self.shard_size:
            self._flush(local_index + 1, final=False)

    def close(self, total_inputs: int) -> None:
        """The rank has seen all its `total_inputs` inputs: write the last shard (also when it is empty, so a
        resumed run knows this rank finished)."""
        if not self.finished:
            self._flush(total_inputs, final=True)

    def _flush(self, inputs_end: int, *, final: bool) -> None:
        rows = torch.stack(self._rows) if self._rows else torch.zeros(0, self.dim)  # (n, D)
        # One metadata entry: safetensors writes its metadata map in no fixed order, and a resumed run must write
        # the same bytes.
        record = {"format": SHARDS_FORMAT, "rank": self.rank, "index": self.k, "settings": json.loads(self.settings),
                  "inputs_start": self._start, "inputs_end": inputs_end, "final": final, "failed": self._pending}
        meta = {_SHARD_KEY: json.dumps(record, sort_keys=True)}
        tensors = {"features": rows.float().contiguous(), "positions": torch.tensor(self._positions, dtype=torch.int64),
                   "labels": torch.tensor(self._labels, dtype=torch.int64)}
        _write(self.folder / shard_name(self.rank, self.k), tensors, meta)
        self.failures += self._pending
        self.k += 1
        self._start = inputs_end
        self._rows, self._positions, self._labels, self._pending = [], [], [], []
        self.finished = final


def write_index(folder: str | os.PathLike[str], names: Sequence[str], *, world_size: int,
                labels: bool, classes: Sequence[str] | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write `index.json` (atomically) from the shard files of ranks 0..world_size-1; `names[p]` is the name of
    input position p. Returns the index.

    Args:
        folder: the shard folder; `index.json` is written in it.
        names: the name of every input position, over all ranks (failed inputs included: only stored rows are named).
        world_size: how many ranks wrote shards; shards of higher ranks are left out.
        labels: read the shards' `labels` into the index (else its `labels` is null).
        classes: the class names the labels index, or None.
        settings: the run's JSON-able entries added to the index (the features job gives checkpoint, pool, layer,
            transform, size, dtype, world_size, shard_size, model).
    """
    folder = Path(folder)
    shards = [(r, p) for r, _, p in _shards_in(folder) if r < world_size]
    entries, positions, label_parts, dim = [], [], [], None
    for rank, path in shards:
        with safetensors.safe_open(str(path), "pt") as f:
            pos = f.get_tensor("positions")
            if labels:
                label_parts.append(f.get_tensor("labels"))
            dim = f.get_slice("features").get_shape()[1]
        entries.append({"file": path.name, "rows": int(pos.numel()), "rank": rank})
        positions.append(pos)
    all_pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(all_pos, stable=True)
    row_labels = torch.cat(label_parts)[order].tolist() if labels and label_parts else ([] if labels else None)
    index = {"format": SHARDS_FORMAT, "rows": int(all_pos.numel()), "dim": dim,
             "files": [str(names[p]) for p in all_pos[order].tolist()], "labels": row_labels,
             "classes": list(classes) if classes is not None else None, "shards": entries, **dict(settings)}
    with atomic_path(folder / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps(index))
    return index


# ---- reading --------------------------------------------------------------------------------------------------
class FeatureSet:
    """A features file or shard folder, read lazily. `rows`, `dim`, `names` (N), `labels` (int64 (N,) or None),
    `classes` (or None), `meta` (str -> str: checkpoint, pool, layer, transform, size, dtype, model, format ...);
    `chunks(size)` yields (<= size, D) float32 blocks in global row order from memory-mapped files;
    `materialize()` the whole (N, D) tensor, for small sets."""

    def __init__(self, path: Path, files: list[Path], names: list[str], labels: torch.Tensor | None,
                 classes: list[str] | None, meta: dict[str, str], dim: int, positions: list[torch.Tensor]) -> None:
        self.path, self._files, self.names, self.labels, self.classes, self.meta = path, files, names, labels, classes, meta
        self.rows, self.dim = len(names), dim
        sizes = [int(p.numel()) for p in positions]
        self._start = np.cumsum([0, *sizes])[:-1]
        self._file_of = np.repeat(np.arange(len(files)), sizes)  # (total,) which file holds each stored row
        all_pos = torch.cat(positions).numpy() if positions else np.zeros(0, dtype=np.int64)
        self._order = np.argsort(all_pos, kind="stable")  # global row g is stored row _order[g]

    def __len__(self) -> int:
        return self.rows

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk size must be a positive integer, got {size!r}")
        with ExitStack() as stack:
            handles: dict[int, Any] = {}
            for g0 in range(0, self.rows, size):
                stored = self._order[g0:g0 + size]
                which = self._file_of[stored]
                offsets = stored - self._start[which]
                out = torch.empty(len(stored), self.dim, dtype=torch.float32)  # (n, D)
                for i in np.unique(which):
                    if i not in handles:
                        handles[i] = stack.enter_context(safetensors.safe_open(str(self._files[i]), "pt"))
                    mask = which == i
                    offs = offsets[mask]
                    lo, hi = int(offs.min()), int(offs.max()) + 1  # a file's rows in a chunk are contiguous
                    block = handles[i].get_slice("features")[lo:hi]
                    out[torch.from_numpy(mask)] = block[torch.from_numpy(offs - lo)].float()
                yield out

    def materialize(self) -> torch.Tensor:
        """All rows, (N, D) float32."""
        parts = list(self.chunks(65536))
        return torch.cat(parts) if parts else torch.zeros(0, self.dim)


def open_features(path: str | os.PathLike[str]) -> FeatureSet:
    """A `FeatureSet` over a features file (`save_features`) or a shard folder (its `index.json`)."""
    path = Path(path)
    if path.is_dir():
        return _open_folder(path)
    if not path.is_file():
        raise MAEError(f"features file {path} does not exist")
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            if "features" not in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                raise MAEError(f"{path} holds no 'features' tensor; it is not a features file")
            rows, dim = f.get_slice("features").get_shape()
    except MAEError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; never echo the file's bytes
        raise MAEError(f"{path} is not a readable safetensors features file ({type(exc).__name__})") from None
    try:
        names = json.loads(meta.pop("files"))
        labels = json.loads(meta.pop("labels")) if "labels" in meta else None
        classes = json.loads(meta.pop("classes")) if "classes" in meta else None
    except (KeyError, ValueError, RecursionError):
        raise MAEError(f"{path} has no readable 'files' list in its metadata; it is not a features file") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != rows:
        raise MAEError(f"{path}: the 'files' metadata does not name the {rows} rows")
    if labels is not None and (not isinstance(labels, list) or not all(_count(x) for x in labels)):
        raise MAEError(f"{path}: the 'labels' metadata must be a list of class numbers 0, 1, 2, ...; write the "
                       "features again")
    if labels is not None and len(labels) != rows:
        raise MAEError(f"{path}: the 'labels' metadata has {len(labels)} entries for {rows} rows")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise MAEError(f"{path}: the 'classes' metadata must list the class names as text; write the features again")
    return FeatureSet(path, [path], names, torch.tensor(labels, dtype=torch.int64) if labels is not None else None,
                      classes, meta, dim, [torch.arange(rows)])


def _open_folder(folder: Path) -> FeatureSet:
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        what = "holds shards but no index.json (the run did not finish; resume it with --resume)" if _shards_in(
            folder) else "is not a features folder (no index.json)"
        raise MAEError(f"{folder} {what}")
    index = _read_index(index_path)
    files = [folder / s["file"] for s in index["shards"]]
    names, rows, dim = index["files"], index["rows"], index["dim"] or 0
    positions = []
    for path in files:
        try:
            with safetensors.safe_open(str(path), "pt") as f:
                positions.append(f.get_tensor("positions"))
        except Exception as exc:  # noqa: BLE001 - never the file's bytes in the message: only what it is not
            raise MAEError(f"shard {path} of {folder} cannot be read as a safetensors shard ({type(exc).__name__}); "
                           "the folder is incomplete or damaged, so write the features again") from None
    if sum(int(p.numel()) for p in positions) != rows or len(names) != rows:
        raise MAEError(f"{index_path} says {rows} rows but its shards hold {sum(int(p.numel()) for p in positions)}")
    labels = torch.tensor(index["labels"], dtype=torch.int64) if index.get("labels") is not None else None
    meta = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in index.items()
            if k not in ("files", "labels", "classes", "shards", "rows", "dim")}  # a file's metadata: str -> str
    return FeatureSet(folder, files, names, labels, index.get("classes"), meta, dim, positions)


def _read_index(path: Path) -> dict[str, Any]:
    """A shard folder's `index.json`, its schema checked before use: one line naming the file and what it should hold."""

    def bad(what: str) -> MAEError:
        return MAEError(f"{path} is not a features index ({what}); write the features again")

    try:
        index = json.loads(path.read_bytes())
    except RecursionError:
        raise bad("its JSON nests too deeply") from None
    except (OSError, ValueError) as exc:
        raise bad(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(index, dict):
        raise bad("not a JSON object")
    for key in ("rows", "dim"):
        if not _count(index.get(key)) and not (key == "dim" and index.get(key) is None):
            raise bad(f"'{key}' must be a count, got {_shown(index.get(key))}")
    shards, files = index.get("shards"), index.get("files")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and _plain_name(s.get("file")) for s in shards):
        raise bad("'shards' must list the shard files by their plain names inside the folder (no '..', no folder, "
                  "no absolute path)")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise bad("'files' must list each row's image as text")
    labels, classes = index.get("labels"), index.get("classes")
    if labels is not None and (not isinstance(labels, list) or not all(_count(x) for x in labels)):
        raise bad("'labels' must be a list of class numbers 0, 1, 2, ...")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise bad("'classes' must list the class names as text")
    return index


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and Path(name).name == name)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def load_features(path: str | os.PathLike[str]) -> tuple[torch.Tensor, list[str], dict[str, str]]:
    """A features file or shard folder, whole: (features (N, D) float32, row names, metadata)."""
    fs = open_features(path)
    return fs.materialize(), fs.names, fs.meta
