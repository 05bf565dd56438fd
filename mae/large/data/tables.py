"""Parquet files and arrow folders (`datasets.save_to_disk`) read in place with pyarrow: a map-style `Source`.

* **Parquet** (the Hugging Face hub's layout: `data/train-00000-of-00004.parquet` ...): each file's footer is read
  once (its row groups); a row's image is read by row group, only the image column, and this process keeps the last
  row group it read and nothing more (memory: one row group's image bytes per process, whatever the file's size).
* **Arrow folder** (`state.json`, `dataset_info.json`, `data-00000-of-00001.arrow`: arrow IPC streams): each file is
  memory-mapped and its record batches taken without a copy, as `datasets` itself reads them.

The image column (`image_column`, default `image`, else the first column the `datasets` metadata calls an Image, else
the first struct of bytes and path, else the first binary column) may be the hub's struct `{bytes, path}` (a null
`bytes` falls back to the file `path`, relative to the data file's folder), raw bytes, or text naming image files.
The label column (`label_column`, default `label` when there is one) must hold integers; null or negative values are
unlabelled rows. Class names come from the files' `huggingface` schema metadata (`info.features.<label>.names`, as
`datasets` writes it), else the folder's `dataset_info.json`, else the dataset card (`README.md` YAML
`dataset_info.features`) beside the data or one or two folders up.

Nothing here prints.
"""

from __future__ import annotations

import json
import os
import threading
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetError, ImageError, first_line, invalid_argument, short_list, shown
from .loader import Source
from .records import Concatenated, Record, Records, check_label

__all__ = ["TableFile", "TableRow", "arrow_folder_files", "table_source"]

_BINARY = ("binary", "large_binary", "binary_view")
_TEXT = ("string", "large_string", "utf8", "large_utf8", "string_view")
OPEN_FILES = 8  # footers (parquet) and mappings (arrow) kept open per process


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401 - the submodules are used through `pyarrow`
    except ImportError:
        raise DatasetError("reading parquet and arrow files needs pyarrow; install it with "
                           "pip install 'mae-large[datasets]'") from None
    return pyarrow


@dataclass(frozen=True)
class TableFile:
    """One parquet or arrow file of a source: its image column, how that column holds images (`struct`, `bytes` or
    `path`), and the first row of each row group (parquet) or record batch (arrow)."""

    path: Path
    kind: str  # parquet | arrow
    column: str
    layout: str  # struct | bytes | path
    group_starts: tuple[int, ...]
    rows: int


@dataclass(frozen=True)
class TableRow(Record):
    """Row `row` of `file`."""

    file: TableFile
    row: int

    @property
    def container(self) -> Path:  # type: ignore[override]
        return self.file.path

    @property
    def locator(self) -> str:
        return str(self.row)

    def read(self) -> bytes:
        return _CACHE.image_bytes(self)


class TableRows(Records):
    def __init__(self, file: TableFile) -> None:
        self.file = file

    def __len__(self) -> int:
        return self.file.rows

    def record(self, index: int) -> TableRow:
        return TableRow(self.file, index)


class _Cache:
    """What this process holds open: parquet footers and arrow mappings (a few files), and the image column of the
    last row group read (one)."""

    def __init__(self) -> None:
        self.open: OrderedDict[Path, Any] = OrderedDict()
        self.group: tuple[Path, int, Any, Any] | None = None  # (file, group, image values, paths or None)
        self.pid = os.getpid()
        self.lock = threading.Lock()  # a job may read ahead in a thread (reconstruct's overlap)

    def handle(self, file: TableFile) -> Any:
        handle = self.open.get(file.path)
        if handle is None:
            handle = _open(file.path, file.kind)[0]
            self.open[file.path] = handle
            while len(self.open) > OPEN_FILES:
                self.open.popitem(last=False)
        self.open.move_to_end(file.path)
        return handle

    def image_bytes(self, row: TableRow) -> bytes:
        with self.lock:
            return self._image_bytes(row)

    def after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork would never be released there."""
        self.lock = threading.Lock()
        self.open.clear()
        self.group, self.pid = None, os.getpid()

    def _image_bytes(self, row: TableRow) -> bytes:
        file = row.file
        g = bisect_right(file.group_starts, row.row) - 1
        if self.pid != os.getpid():  # a forked worker opens its own files: a handle is not shared across processes
            self.open.clear()
            self.group, self.pid = None, os.getpid()
        if self.group is None or self.group[:2] != (file.path, g):
            self.group = None  # the last group goes before the next is read: one in memory
            try:
                if file.kind == "parquet":
                    column = self.handle(file).read_row_group(g, columns=[file.column]).column(0).combine_chunks()
                else:
                    column = self.handle(file).column(file.column).chunk(g)
            except (OSError, ValueError) as exc:  # pyarrow's errors are OSError / ValueError subclasses
                raise ImageError(f"{row} cannot be read: row group {g} of {file.path} is damaged "
                                 f"({first_line(str(exc), 160)}); re-download the file") from None
            if file.layout == "struct":
                names = [column.type.field(i).name for i in range(column.type.num_fields)]
                self.group = (file.path, g, column.field("bytes"), column.field("path") if "path" in names else None)
            else:
                self.group = (file.path, g, column, None)
        _, _, values, paths = self.group
        i = row.row - file.group_starts[g]
        if file.layout != "path":
            data = values[i].as_py()
            if data is not None:
                return data
            where = paths[i].as_py() if paths is not None else None
            if where is None:
                raise ImageError(f"{row} holds no image (its {file.column!r} value is null)")
        else:
            where = values[i].as_py()
            if where is None:
                raise ImageError(f"{row} names no image file (its {file.column!r} value is null)")
        image = Path(where) if Path(where).is_absolute() else file.path.parent / where
        try:
            return image.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{row} names the image file {image}, which does not exist; fix the paths in "
                             f"column {file.column!r} or run from the folder they are relative to") from None
        except OSError as exc:
            raise ImageError(f"{row} names the image file {image}, which cannot be read "
                             f"({exc.strerror or type(exc).__name__})") from None


_CACHE = _Cache()  # one per process: a worker process starts with its own (fork copies an empty or small one)
os.register_at_fork(after_in_child=_CACHE.after_fork)


def _open(path: Path, kind: str) -> tuple[Any, Any, list[int]]:
    """(handle, schema, rows of each group) of a parquet file (its footer) or an arrow IPC stream (mapped)."""
    pa = _pyarrow()
    what = "parquet" if kind == "parquet" else "arrow (IPC stream)"
    try:
        if kind == "parquet":
            handle = pa.parquet.ParquetFile(str(path))
            meta = handle.metadata
            return handle, handle.schema_arrow, [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # zero-copy: batches over the mapping
        return table, table.schema, [len(c) for c in (table.column(0).chunks if table.num_columns else [])]
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise DatasetError(f"{path} is a folder, not a {what} file") from None
    except (OSError, ValueError) as exc:
        text = str(exc)
        why = ("its footer is missing: the file is truncated or not parquet" if "magic bytes" in text or
               "size" in text.lower() and kind == "parquet" else first_line(text, 160))
        raise DatasetError(f"{path} is not a readable {what} file ({why}); re-download or re-write it") from None


def arrow_folder_files(folder: Path) -> list[Path]:
    """The arrow files of a `save_to_disk` folder, from its `state.json` (`_data_files`)."""
    from ..utils.jsontext import JSONProblem, parse_json

    state = folder / "state.json"
    try:
        parsed = parse_json(state.read_bytes())
    except OSError as exc:
        raise DatasetError(f"{state} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except JSONProblem as exc:
        raise DatasetError(f"{state} is not JSON ({exc}); it is not a folder written by datasets.save_to_disk") from None
    entries = parsed.get("_data_files") if isinstance(parsed, dict) else None
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("filename"), str) and Path(e["filename"]).name == e["filename"]
            for e in entries):
        raise DatasetError(f"{state} lists no arrow files ('_data_files'); it is not a folder written by "
                           "datasets.save_to_disk")
    return [folder / e["filename"] for e in entries]


def table_source(files: list[Path], kind: str, given: str, *, image_column: str | None = None,
                 label_column: str | None = None) -> Source:
    """A map-style `Source` over parquet or arrow `files` (in this order); `given` is what the user named."""
    opened = [(path, *_open(path, kind)) for path in files]
    schema = opened[0][2]
    features = _hf_features(schema)
    column = _image_column(schema, features, image_column, files[0])
    label = label_column if label_column is not None else ("label" if "label" in schema.names else None)
    if label is not None and label not in schema.names:
        raise invalid_argument("label_column", f"{files[0]} has no column label_column={shown(label)}; its columns "
                                               f"are {short_list(list(schema.names), 8)}")
    if label is not None:
        _check_label_type(schema.field(label).type, label, files[0])
    parts, labels = [], []
    for path, handle, file_schema, groups in opened:
        if column not in file_schema.names or (label is not None and label not in file_schema.names):
            missing = column if column not in file_schema.names else label
            raise DatasetError(f"{path} has no column {missing!r}, which {files[0]} has; give files of one data set")
        layout = _layout(file_schema.field(column).type, column, path)  # each file's own (struct, binary, paths)
        if label is not None:
            _check_label_type(file_schema.field(label).type, label, path)
            labels += _labels(handle, kind, label, path)
        starts = tuple(sum(groups[:g]) for g in range(len(groups))) or (0,)
        parts.append(TableRows(TableFile(path, kind, column, layout, starts, sum(groups))))
    classes = _class_names(features, label, files) if label is not None else None
    if label is not None and all(v < 0 for v in labels):
        labels, classes = [], None  # a split without labels (the hub's test splits hold -1)
    origin = {"path": given, "files": [str(p) for p in files], "image_column": column, "label_column": label}
    records = Concatenated(parts)
    return Source(records, labels or None, classes, form=kind, origin=origin, pieces=records.pieces)


def _hf_features(schema: Any) -> dict[str, Any]:
    """The `datasets` features recorded in the schema metadata (`huggingface` -> info -> features), or {}."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        meta = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        return {}
    info = meta.get("info", meta) if isinstance(meta, dict) else {}
    features = info.get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else {}


def _image_column(schema: Any, features: dict[str, Any], chosen: str | None, path: Path) -> str:
    names = list(schema.names)
    if chosen is not None:
        if chosen not in names:
            raise invalid_argument("image_column", f"{path} has no column image_column={shown(chosen)}; its columns "
                                                   f"are {short_list(names, 8)}")
        return chosen
    if "image" in names:
        return "image"
    for name in names:
        if isinstance(features.get(name), dict) and features[name].get("_type") == "Image":
            return name
    for name in names:
        kind = schema.field(name).type
        if _is_struct(kind) and "bytes" in _field_names(kind):
            return name
    for name in names:
        if str(schema.field(name).type) in _BINARY:
            return name
    raise invalid_argument("image_column", f"{path} has no image column (no 'image', no struct of bytes and path, no "
                                           f"binary column) among {short_list(names, 8)}; name it with image_column=NAME")


def _is_struct(kind: Any) -> bool:
    return str(kind).startswith("struct<")


def _field_names(kind: Any) -> list[str]:
    return [kind.field(i).name for i in range(kind.num_fields)]


def _layout(kind: Any, column: str, path: Path) -> str:
    if _is_struct(kind) and "bytes" in _field_names(kind) and str(kind.field("bytes").type) in _BINARY:
        return "struct"
    if str(kind) in _BINARY:
        return "bytes"
    if str(kind) in _TEXT:
        return "path"
    raise invalid_argument("image_column", f"column {column!r} of {path} holds {kind}, not images (a struct of bytes "
                                           "and path, binary, or image file paths as text); name the image column "
                                           "with image_column=NAME")


def _check_label_type(kind: Any, column: str, path: Path) -> None:
    text = str(kind)
    if not (text.startswith("int") or text.startswith("uint")):
        raise invalid_argument("label_column", f"label column {column!r} of {path} holds {text}, not integer class "
                                               "numbers; name an integer column with label_column=NAME")


def _labels(handle: Any, kind: str, column: str, path: Path) -> list[int]:
    """The column's values, one int per row; null and negative values are -1 (unlabelled)."""
    try:
        values = handle.read(columns=[column]).column(0) if kind == "parquet" else handle.column(column)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the {column!r} column of {path} cannot be read ({first_line(str(exc), 160)}); "
                           "re-download the file") from None
    labels = [-1 if v is None or v < 0 else int(v) for v in values.to_pylist()]
    top = max(labels, default=-1)
    if top >= 0:
        check_label(top, f"the largest label of column {column!r} of {path} (row {labels.index(top)})")
    return labels


def _class_names(features: dict[str, Any], label: str, files: list[Path]) -> list[str] | None:
    """Class names from the schema's `datasets` metadata, else `dataset_info.json`, else the dataset card."""
    names = _names_of(features.get(label))
    if names is not None:
        return names
    folder = files[0].parent
    info = folder / "dataset_info.json"
    if info.is_file():
        from ..utils.jsontext import JSONProblem, parse_json

        try:
            parsed = parse_json(info.read_bytes())
        except (OSError, JSONProblem):
            parsed = {}
        found = _names_of((parsed.get("features") or {}).get(label)) if isinstance(parsed, dict) else None
        if found is not None:
            return found
    for card in (folder / "README.md", folder.parent / "README.md", folder.parent.parent / "README.md"):
        if card.is_file():
            return _card_names(card, label)
    return None


def _names_of(feature: Any) -> list[str] | None:
    if isinstance(feature, dict) and isinstance(feature.get("names"), list):
        names = feature["names"]
        if all(isinstance(n, str) for n in names):
            return list(names)
    return None


def _card_names(card: Path, label: str) -> list[str] | None:
    """`dataset_info.features[name == label].dtype.class_label.names` of a dataset card's YAML header, or None."""
    try:
        text = card.read_text(encoding="utf-8", errors="replace")
        import yaml
    except (OSError, ImportError):
        return None
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    try:
        header = yaml.safe_load(text[3:end if end > 0 else None])
    except Exception:  # noqa: BLE001 - a card that is not YAML names no classes
        return None
    infos = header.get("dataset_info") if isinstance(header, dict) else None
    for info in infos if isinstance(infos, list) else [infos]:
        features = info.get("features") if isinstance(info, dict) else None
        for feature in features if isinstance(features, list) else []:
            if isinstance(feature, dict) and feature.get("name") == label:
                names = ((feature.get("dtype") or {}).get("class_label") or {}).get("names") \
                    if isinstance(feature.get("dtype"), dict) else None
                if isinstance(names, dict):
                    try:
                        return [str(names[k]) for k in sorted(names, key=int)]
                    except (TypeError, ValueError):
                        return None
                if isinstance(names, list):
                    return [str(n) for n in names]
    return None
