"""transformers model folders: which files of a `save_pretrained` folder or a downloaded hub snapshot hold the weights.

A folder holds `config.json` and one of `WEIGHT_FILES`: a single `model.safetensors` / `pytorch_model.bin`, or a
`*.index.json` whose `weight_map` names the shard of each tensor. A hub cache (`huggingface_hub`'s layout)
is `models--ORG--NAME/` with `refs/main` (the commit of the branch), `snapshots/<commit>/` (the files, as
relative symbolic links) and `blobs/` (the contents); both the `models--...` root and a snapshot are accepted.
Only names are resolved here; reading the tensors is `checkpoint.read_checkpoint`'s. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, shown
from ..utils.jsontext import JSONProblem, parse_json

# In the order transformers prefers them: safetensors first (no pickle, read lazily), then the pickles.
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                 "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ModelFolder:
    """Where a model folder's weights are, and its parsed `config.json` (None when it has none)."""

    path: Path  # the folder holding the files (for a hub cache: the snapshot)
    files: tuple[Path, ...]  # weight files in reading order (shards by name: model-00001-of-00003 first)
    weight_map: dict[str, str] | None  # tensor name -> shard file name, for a sharded folder
    config: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)  # what was resolved on the way, for the read report


def open_folder(path: Path) -> ModelFolder:
    """The weights and config of the model folder (or hub cache) `path`; `CheckpointError` naming the path
    and what was looked for when it holds none."""
    notes: list[str] = []
    if (path / "snapshots").is_dir():
        path = _snapshot(path, notes)
    found = next((name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if found is None:
        raise CheckpointError(
            f"{path} is a folder without model weights (looked for {', '.join(WEIGHT_FILES)}); give the path of a "
            ".pth or .safetensors file, or a transformers model folder"
        )
    config = _config(path)
    what = f"{found} and {CONFIG_FILE}" if config is not None else f"{found} (no {CONFIG_FILE}: sizes not checked)"
    version = (config or {}).get("transformers_version")
    version = version if isinstance(version, str) and _VERSION.fullmatch(version) else None  # shown: only a version
    notes.append(f"read the transformers model folder: {what}" + (f", written by transformers {version}" if version else ""))
    weight_map = None
    if found.endswith(".index.json"):
        weight_map = _weight_map(path / found)
        shards = sorted(set(weight_map.values()))
        files = tuple(path / name for name in shards)
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{path / found} names {len(absent)} shard(s) the folder lacks "
                                  f"({', '.join(shown(a) for a in absent[:3])}); "
                                  "the download is incomplete, fetch the folder again")
        notes.append(f"read the {len(files)} shards that {found} lists")
    else:
        files = (path / found,)
    return ModelFolder(path, files, weight_map, config, notes)


def _snapshot(root: Path, notes: list[str]) -> Path:
    """The snapshot of a hub cache `models--ORG--NAME` that `refs/main` names (or its only snapshot)."""
    snapshots = sorted(p for p in (root / "snapshots").iterdir() if p.is_dir())
    ref = root / "refs" / "main"
    commit = ref.read_bytes()[:100].decode("ascii", "replace").strip() if ref.is_file() else ""
    # A commit is a hash: anything else (a path such as ../.., text that is not one) is not followed.
    if _COMMIT.fullmatch(commit) and (root / "snapshots" / commit).is_dir():
        notes.append(f"took snapshot {commit[:12]} of the hub cache (refs/main)")
        return root / "snapshots" / commit
    if len(snapshots) == 1:
        notes.append(f"took the only snapshot {snapshots[0].name[:12]} of the hub cache")
        return snapshots[0]
    raise CheckpointError(f"{root} is a hub cache with {len(snapshots)} snapshots and no usable refs/main; "
                          "give the path of one snapshot folder")


_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")
_VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,40}")


def read_json_file(path: Path, what: str) -> Any:
    """The JSON value of the file `path` (`utils.jsontext.parse_json`'s bounds); `CheckpointError` naming the path,
    what it should be (`what`, e.g. "a JSON object of the model's settings") and the reason in words otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}); it should be {what}") from None
    try:
        return parse_json(data)
    except JSONProblem as exc:
        raise CheckpointError(f"{path} is not {what}: {exc}; fetch the folder again") from None


def _config(folder: Path) -> dict[str, Any] | None:
    """The folder's parsed `config.json` (a JSON object; its fields are checked where they are used:
    `load.check_folder_config` for the sizes, `models.target` for `norm_pix_loss`)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    config = read_json_file(path, CONFIG_WHAT)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {_json_type(config)}, not {CONFIG_WHAT}; fetch the folder again")
    return config


CONFIG_WHAT = "a JSON object of the model's settings (transformers' config.json)"
INDEX_WHAT = 'a shard index (a JSON object whose "weight_map" maps each tensor name to a shard file name)'


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (array, not list)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _weight_map(index: Path) -> dict[str, str]:
    """The index's tensor -> shard map; shard names must be plain file names inside the folder."""
    data = read_json_file(index, INDEX_WHAT)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        found = ("no weight_map" if not isinstance(data, dict) or "weight_map" not in data else
                 f"a weight_map that is a JSON {_json_type(weight_map)}" if not isinstance(weight_map, dict) else
                 "a weight_map with a shard name that is not a string")
        raise CheckpointError(f"{index} is not {INDEX_WHAT}: it has {found}; fetch it again")
    outside = [name for name in weight_map.values()
               if Path(name).name != name or name in ("", ".", "..") or "\0" in name or len(name.encode()) > 255]
    if outside:
        raise CheckpointError(f"{index} names a shard that is not a file name inside its folder ({shown(outside[0])}); "
                              "it is not a transformers index")
    return weight_map


def checkpoint_inputs(path: str | Path) -> list[Path]:
    """What loading `path` reads, for the output guard (`utils.outputs.guard_output`): a file itself, or a model
    folder (a hub cache too) with every file in it; the guard also follows each through its links (a snapshot's
    files are links into `blobs/`)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return [path]
    return [path, *(p for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink())]
