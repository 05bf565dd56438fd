"""What a job reads, chosen by what the path is: one entry point (`open_source`) for every job that reads many images.

| form         | what the path is                                                          | read by               |
|--------------|---------------------------------------------------------------------------|-----------------------|
| files        | image files, folders of images (`recursive`: their sub-folders)           | `loader.image_source` |
| list         | one `.txt` / `.lst` / `.list` file, one image path per line               | `loader.list_file`    |
| image-folder | one folder of class folders `root/CLASS/image`                            | `loader.image_folder` |
| parquet      | `.parquet` files, a glob or brace pattern of them, a folder of them (or   | `tables`              |
|              | of `data/*.parquet`: the hub's layout, one split)                         |                       |
| arrow        | a folder written by `datasets.save_to_disk` (`state.json`, `*.arrow`)     | `tables`              |
| webdataset   | `.tar` shards: files, `shards-{0000..0127}.tar`, a glob, a folder of them | `tars`, `stream`      |

`image_column` / `label_column` choose the columns of a parquet or arrow source, the member extensions (or `.json`
keys) of a tar source. Nothing here prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import DatasetError, invalid_argument, short_list
from .loader import Source, image_source
from .tars import expand_braces, is_pattern

__all__ = ["CONTAINER_FORMS", "container_form", "container_source", "open_source"]

CONTAINER_FORMS = ("parquet", "arrow", "webdataset")
_SUFFIX_FORM = {".parquet": "parquet", ".tar": "webdataset", ".arrow": "arrow", ".gz": "webdataset",
                ".tgz": "webdataset"}
_HUB_SHARD = re.compile(r"^(.+?)-\d{5}-of-\d{5}\.parquet$")  # data/train-00000-of-00004.parquet


def _form_of_name(text: str) -> str | None:
    name = expand_braces(text)[0] if "{" in text else text
    if name.endswith((".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")):
        return "webdataset"
    return _SUFFIX_FORM.get(Path(name).suffix.lower())


def container_form(inputs: Sequence[str | os.PathLike[str]]) -> str | None:
    """`parquet`, `arrow` or `webdataset` when the inputs name a data set's files (the module's table), else None."""
    texts = [os.fspath(i) for i in inputs]
    if not texts:
        return None
    if len(texts) == 1:
        path = Path(texts[0])
        if path.is_dir():
            return _folder_form(path)
        return _form_of_name(texts[0]) if path.exists() or is_pattern(texts[0]) else None
    forms = {_form_of_name(t) for t in texts}
    if len(forms) == 1 and None not in forms:
        return forms.pop()
    if forms & set(CONTAINER_FORMS):
        raise invalid_argument("inputs", f"{short_list(texts)} mix data set files and other inputs; give the files of "
                                         "one data set (parquet, arrow or tar shards), or image files and folders")
    return None


def _folder_form(folder: Path) -> str | None:
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return "arrow"
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return None
    if any(n.endswith(".parquet") for n in names) or (
            (folder / "data").is_dir() and any(p.suffix == ".parquet" for p in (folder / "data").iterdir())):
        return "parquet"
    if any(n.endswith(".tar") for n in names) and not any((folder / n).is_dir() for n in names if not n.startswith(".")):
        return "webdataset"
    return None


def container_source(inputs: Sequence[str | os.PathLike[str]], *, image_column: str | None = None,
                     label_column: str | None = None) -> Source | None:
    """The `Source` of a data set's files (`container_form`), or None when the inputs are image files and folders."""
    form = container_form(inputs)
    if form is None:
        if image_column is not None or label_column is not None:
            which = "image_column" if image_column is not None else "label_column"
            raise invalid_argument(which, f"{which} chooses a column of a parquet, arrow or tar data set; "
                                          f"{short_list([os.fspath(i) for i in inputs])} are image files or folders")
        return None
    texts = [os.fspath(i) for i in inputs]
    if form == "webdataset":
        from .tars import tar_source

        return tar_source(texts, image_column=image_column, label_column=label_column)
    from .tables import arrow_folder_files, table_source

    if form == "arrow":
        folder = Path(texts[0])
        if folder.is_dir():
            _no_splits(folder)
            files = arrow_folder_files(folder)
        else:
            files = [Path(t) for t in texts]
        return table_source(files, "arrow", texts[0] if len(texts) == 1 else " ".join(texts),
                            image_column=image_column, label_column=label_column)
    return table_source(_parquet_files(texts), "parquet", " ".join(texts), image_column=image_column,
                        label_column=label_column)


def open_source(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False, image_column: str | None = None,
                label_column: str | None = None) -> Source:
    """The `Source` of any inputs (the module's table): a data set's files, else `loader.image_source`."""
    found = container_source(inputs, image_column=image_column, label_column=label_column)
    return found if found is not None else image_source(inputs, recursive=recursive)


def _no_splits(folder: Path) -> None:
    """A `DatasetDict` saved to disk holds one folder per split: the user names one."""
    if (folder / "dataset_dict.json").is_file() and not (folder / "state.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        raise DatasetError(f"{folder} holds the splits {', '.join(splits) or '(none)'} (a DatasetDict); name one, "
                           f"e.g. {folder / (splits[0] if splits else 'train')}")


def _parquet_files(texts: list[str]) -> list[Path]:
    from .tars import shard_paths

    if len(texts) == 1 and Path(texts[0]).is_dir():
        folder = Path(texts[0])
        here = sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and p.is_file())
        files = here or sorted(p for p in (folder / "data").iterdir() if p.suffix == ".parquet" and p.is_file())
        splits = sorted({m.group(1) for p in files if (m := _HUB_SHARD.match(p.name))})
        if len(splits) > 1:
            where = files[0].parent
            raise DatasetError(f"{folder} holds the splits {', '.join(splits)}; name one, e.g. "
                               f"'{where / (splits[0] + '-*.parquet')}'")
        return files
    return shard_paths(texts, suffix=".parquet", what="parquet file")
