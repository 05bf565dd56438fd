"""Images kept inside a data set's own files (a parquet row, an arrow row, a tar member): `Record`.

A job's inputs are a sequence of *image references*: a `Path` (an image file) or a `Record`. A record is small and
picklable (the DataLoader hands it to worker processes); it knows its container file and where the image lies in it,
and reads the encoded bytes on demand (`read`), in whichever process decodes it. `str(record)` is its identity,
written into feature files and runs so that every row can be traced back: `train-00000-of-00004.parquet#12` (row 12 of that
file), `shard-0003.tar#n01440764_10026` (the sample key in that shard).

`Records` is a lazy sequence of them: a data set of a million rows holds a few arrays, not a million objects.
Nothing here prints or imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

__all__ = ["MAX_CLASSES", "ImageRef", "Record", "Records", "check_label", "ref_name", "ref_stem"]

# A class number above this is not a class: ImageNet-21k has 21,841, the largest public label sets a few hundred
# thousand. The bound matters: class names, heads and per-class counts are sized by the largest label.
MAX_CLASSES = 1 << 20


class Record:
    """One image stored inside `container`. Subclasses set `container` and implement `read` and `locator`."""

    __slots__ = ()
    container: Path

    def read(self) -> bytes:
        """The image's encoded bytes (`ImageError` naming the record when they cannot be had)."""
        raise NotImplementedError

    @property
    def locator(self) -> str:
        """Where the image lies inside its container: a row number or a sample key."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The short name, as a file's `name` (titles, galleries): `train-00000-of-00004.parquet#12`."""
        return f"{self.container.name}#{self.locator}"

    @property
    def stem(self) -> str:
        """A file stem for outputs drawn from this image (`train-00000-of-00004-12`)."""
        tail = self.locator.replace("/", "_").replace(os.sep, "_")
        return f"{self.container.name.split('.')[0]}-{tail}"

    def __str__(self) -> str:
        """The identity written into results: `container#locator`, the container as the source named it."""
        return f"{self.container}#{self.locator}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


ImageRef = Path | Record


def ref_name(ref: ImageRef | str | os.PathLike[str]) -> str:
    """The name of an image reference in results: a record's identity, a file's path."""
    return str(ref)


def ref_stem(ref: ImageRef) -> str:
    return ref.stem if isinstance(ref, Record) else Path(ref).stem


class Records(Sequence[Record]):
    """A lazy, picklable sequence of records: `record(i)` builds the i-th when asked. Slices are lists."""

    def __len__(self) -> int:
        raise NotImplementedError

    def record(self, index: int) -> Record:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self.record(i) for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"record {index} of {n}")
        return self.record(index)

    def __iter__(self) -> Iterator[Record]:
        return (self.record(i) for i in range(len(self)))


class Concatenated(Records):
    """Several record sequences one after another (a source of many files)."""

    def __init__(self, parts: Sequence[Records]) -> None:
        self.parts = list(parts)
        self.starts: list[int] = []
        total = 0
        for part in self.parts:
            self.starts.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    @property
    def pieces(self) -> tuple[tuple[int, int], ...]:
        """(start, end) of each part in the whole, in order (`Source.pieces`)."""
        return tuple(zip(self.starts, [*self.starts[1:], self.total], strict=True))

    def record(self, index: int) -> Record:
        from bisect import bisect_right

        k = bisect_right(self.starts, index) - 1
        return self.parts[k].record(index - self.starts[k])


def check_label(value: int | str, where: str) -> int:
    """`value` (an int, or the digits of a `.cls` member), a class number read from a data set, refused (one line,
    `label_column`) when it is no class number a classifier could have: `MAX_CLASSES` or more. `where` names it."""
    digits = str(value).lstrip("0") or "0"
    if len(digits) > 18 or int(digits) >= MAX_CLASSES:  # 18 digits: int() of any length is not needed to refuse
        from ..errors import invalid_argument

        text = digits if len(digits) <= 30 else f"a {len(digits)}-digit number"
        raise invalid_argument("label_column", f"{where} is {text}, not a class number (at most {MAX_CLASSES - 1:,}); "
                                               "name the column or member that holds class numbers with label_column=NAME")
    return int(digits)
