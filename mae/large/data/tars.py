"""WebDataset tar shards read in place: shard names (brace ranges, globs), one index per shard, members as records.

A shard is a plain (uncompressed) tar whose members are grouped into samples by key, as WebDataset spells it:
`n01440764_10026.jpg`, `n01440764_10026.cls` (the key is the member name up to the first dot of its base name, the
rest is the extension; a sample's members are consecutive). `shard_paths` expands `shards-{0000..0127}.tar` (ranges
keep the zero padding of their bounds; `{a,b}` lists), globs (`shards-*.tar`) and folders of `.tar` files.

The reader is the standard library's `tarfile` over the shard's headers, not the `webdataset` package: a shard is
scanned once (headers and the small label members; image bytes are skipped), which gives every sample's offset and
size, so an image is one `os.pread` in whichever process decodes it. That makes the shards usable both ways: read in
order (features, evaluation: exact order and resume like any map-style source) and streamed for training
(`data.stream`: whole shards per reader, a bounded shuffle buffer), and it keeps the failures in our words: a member
cut short, a shard truncated between members, a missing shard, a label that is not a number are each one sentence.

Labels: the `label_column` extension (default `cls`: text holding an integer), else that key of the sample's `.json`
(default `label`); the image is the `image_column` extension (default: the first of jpg, jpeg, png, webp, ppm, bmp,
tif, tiff, gif the sample has). Tar shards carry no class names.
"""

from __future__ import annotations

import glob as globbing
import os
import re
import tarfile
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError, ImageError, first_line, invalid_argument, short_list, shown
from .images import ImageFailure
from .loader import Source
from .records import Concatenated, Record, Records, check_label

__all__ = ["IMAGE_EXTENSIONS", "ShardIndex", "TarMember", "expand_braces", "scan_shard", "shard_paths", "tar_source"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff", "gif")
MAX_SHARDS = 1_000_000  # what one brace pattern may name
MAX_LABEL_BYTES = 1 << 16  # a .cls / .json member larger than this is not a label
# gzip, xz, zstd; bzip2 below (its "BZh" could begin a member name, so its block magic is checked too)
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")
OPEN_SHARDS = 8  # open files kept per process


def expand_braces(text: str) -> list[str]:
    """`a-{000..002}.tar` -> a-000.tar, a-001.tar, a-002.tar; `{x,y}` -> x, y; several braces multiply; text in
    braces that is neither stays as it is. A range keeps its bounds' zero padding (as `braceexpand` does)."""
    match = _BRACE.search(text)
    if match is None:
        return [text]
    body, head, tails = match.group(1), text[:match.start()], expand_braces(text[match.end():])
    numbers = _RANGE.fullmatch(body)
    if numbers:
        lo, hi = numbers.groups()
        width = max(len(lo), len(hi)) if (lo.startswith("0") or hi.startswith("0")) else 0
        step = 1 if int(hi) >= int(lo) else -1
        count = abs(int(hi) - int(lo)) + 1
        if count * len(tails) > MAX_SHARDS:
            raise invalid_argument("inputs", f"{shown(text)} names {count * len(tails)} shards, more than {MAX_SHARDS}")
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:
        options = ["{" + body + "}"]
    return [head + option + tail for option in options for tail in tails]


def is_pattern(text: str) -> bool:
    return bool(_BRACE.search(text)) or any(c in text for c in "*?[")


def shard_paths(inputs: list[str], *, suffix: str = ".tar", what: str = "shard") -> list[Path]:
    """The files the inputs name, in order: brace patterns expanded (every file must exist), globs sorted (at least
    one match), folders' `suffix` files sorted by name, files as given."""
    found: list[Path] = []
    for given in inputs:
        text = str(given)
        if _BRACE.search(text) and not Path(text).exists():
            names = [Path(n) for n in expand_braces(text)]
            missing = [str(n) for n in names if not n.is_file()]
            if missing:
                raise DatasetError(f"{what} {missing[0]} does not exist ({len(missing)} of the {len(names)} files "
                                   f"{text} names are missing: {short_list(missing)}); check the range or fetch them")
            found += names
        elif any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(globbing.glob(text))
            if not matches:
                raise DatasetError(f"no file matches {text}; check the pattern")
            found += [Path(m) for m in matches]
        elif Path(text).is_dir():
            files = sorted(p for p in Path(text).iterdir() if p.suffix == suffix and p.is_file())
            if not files:
                raise DatasetError(f"folder {text} holds no {suffix} file")
            found += files
        elif not Path(text).exists():
            raise DatasetError(f"{what} {text} does not exist; check the path")
        else:
            found.append(Path(text))
    for path in found:
        if suffix == ".tar" and path.name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")):
            raise DatasetError(f"{path} is a compressed tar: its images cannot be read in place; decompress the shards "
                               "(plain .tar, as WebDataset writes them)")
    return found


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, as WebDataset splits it: up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


@dataclass(frozen=True)
class TarMember(Record):
    """The image of sample `key` in `shard`: `size` bytes at `offset`; `whole` is False for a member the file cuts."""

    shard: Path
    key: str
    offset: int
    size: int
    whole: bool = True

    @property
    def container(self) -> Path:  # type: ignore[override]
        return self.shard

    @property
    def locator(self) -> str:
        return self.key

    def read(self) -> bytes:
        if not self.whole:
            raise ImageError(f"{self} is truncated: the shard ends inside it (the tar was cut short); "
                             "re-download the shard")
        try:
            with _LOCK:  # the descriptor stays open while it is read (the LRU closes others)
                data = os.pread(_fd(self.shard), self.size, self.offset)
        except OSError as exc:
            raise ImageError(f"{self} cannot be read ({exc.strerror or type(exc).__name__})") from None
        if len(data) != self.size:
            raise ImageError(f"{self} is truncated ({len(data)} of {self.size} bytes): the shard changed since it "
                             "was indexed; run again")
        return data


_FDS: OrderedDict[Path, int] = OrderedDict()  # per process; a forked worker opens its own (pid checked below)
_PID = [os.getpid()]
_LOCK = threading.Lock()


def _after_fork() -> None:  # a lock another thread held at the fork would never be released in the child
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def _fd(path: Path) -> int:
    if _PID[0] != os.getpid():  # a forked worker: the parent's descriptors share its file offsets; pread needs none,
        _FDS.clear()  # but the LRU bookkeeping is per process
        _PID[0] = os.getpid()
    fd = _FDS.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY)
        _FDS[path] = fd
        while len(_FDS) > OPEN_SHARDS:
            os.close(_FDS.popitem(last=False)[1])
    _FDS.move_to_end(path)
    return fd


class ShardIndex(Records):
    """One shard's samples in member order: keys, image offsets and sizes, labels (-1: none); `whole` says how many
    of them lie entirely inside the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: list[str] = []
        self.offsets, self.sizes, self.labels = array("q"), array("q"), array("q")
        self.whole = 0

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, index: int) -> TarMember:
        return TarMember(self.path, self.keys[index], self.offsets[index], self.sizes[index], index < self.whole)


def scan_shard(path: Path, image_ext: str | None, label_key: str | None) -> tuple[ShardIndex, list[ImageFailure]]:
    """Index one shard (headers and label members only); the samples it cannot use are failures."""
    index, failures = ShardIndex(path), []
    try:
        size = path.stat().st_size
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after tarfile is done with it
    except OSError as exc:
        raise DatasetError(f"shard {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    with handle:
        magic = handle.read(10)
        handle.seek(0)
        bzip2 = magic[:3] == b"BZh" and magic[3:4].isdigit() and magic[4:10] == b"1AY&SY"
        if magic.startswith(COMPRESSED_MAGIC) or bzip2:  # a compressed tar under a .tar name
            raise DatasetError(f"{path} is a compressed tar: its images cannot be read in place; decompress the shards "
                               "(plain .tar, as WebDataset writes them)")
        try:
            archive = tarfile.open(fileobj=handle, mode="r:")  # noqa: SIM115 - `handle` is closed by the with
        except tarfile.TarError as exc:
            raise DatasetError(f"{path} is not a tar file ({first_line(str(exc), 120)}); give WebDataset .tar "
                               "shards") from None
        sample: tuple[str, dict[str, tuple[int, int]]] | None = None
        end, problem, done = 0, None, set()
        while True:
            try:
                info = archive.next()
            except tarfile.TarError as exc:
                problem = first_line(str(exc), 120)
                break
            if info is None:
                break
            archive.members = []  # tarfile keeps every header it reads; an index needs none of them
            if not info.isfile():
                continue
            key, ext = split_name(info.name)
            if sample is None or sample[0] != key:
                if sample is not None:
                    _add(index, failures, sample, handle, image_ext, label_key)
                    done.add(sample[0])
                if key in done:  # WebDataset reads a sample's files in a row: this one is split (or its key repeated)
                    raise DatasetError(f"shard {path}: the files of sample {shown(key)} are not next to each other "
                                       f"({shown(info.name)} comes after another sample's), or the key is used twice; "
                                       "write each sample's files together under a key of its own (e.g. tar --sort=name)")
                sample = (key, {})
            sample[1][ext.lower()] = (info.offset_data, info.size)
            end = info.offset_data + info.size
            if end > size:
                break  # the file ends inside this member: nothing after it exists
        if sample is not None:
            _add(index, failures, sample, handle, image_ext, label_key, size=size)
    whole_end = -(-end // 512) * 512 + 1024  # the last member's padded data, then the two zero blocks that end a tar
    if end > size or problem is not None or (index.keys and size < whole_end):
        last = index.keys[-1] if index.keys else "its first member"
        why = ("it ends inside the member of sample " + last if end > size else
               f"it is damaged after sample {last} ({problem})" if problem else
               f"it ends after sample {last} without the end-of-archive blocks")
        failures.append(ImageFailure(path, f"shard {path} is truncated: {why}; the samples before it are read, "
                                           "re-download the shard for the rest"))
    return index, failures


def _add(index: ShardIndex, failures: list[ImageFailure], sample: tuple[str, dict[str, tuple[int, int]]],
         handle: object, image_ext: str | None, label_key: str | None, size: int | None = None) -> None:
    key, members = sample
    chosen = image_ext.lower() if image_ext is not None else next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if chosen is None or chosen not in members:
        have = ", ".join(f".{e}" for e in sorted(members)) or "none"
        want = f"a .{chosen or image_ext} member" if image_ext else "an image member (" + ", ".join(IMAGE_EXTENSIONS) + ")"
        failures.append(ImageFailure(index.path / key, f"sample {key} of shard {index.path} has no image: it lacks "
                                                       f"{want} (its members: {have})"))
        return
    offset, length = members[chosen]
    whole = size is None or offset + length <= size
    intact = {e: m for e, m in members.items() if size is None or m[0] + m[1] <= size}  # a cut label is no label
    label = _label(index.path, key, intact, handle, label_key) if whole else -1
    if whole and index.whole == len(index.keys):
        index.whole += 1
    index.keys.append(key)
    index.offsets.append(offset)
    index.sizes.append(length)
    index.labels.append(label)


def _label(shard: Path, key: str, members: dict[str, tuple[int, int]], handle: object, label_key: str | None) -> int:
    """The sample's class number from its `.cls`-like member or its `.json`, or -1 when it has none."""
    ext = label_key if label_key is not None else "cls"
    fd = handle.fileno()  # type: ignore[attr-defined]
    if ext in members:
        text = _small(fd, members[ext], shard, key, ext).decode("utf-8", "replace").strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise invalid_argument("label_column", f"member {key}.{ext} of {shard} holds {shown(text)}, not a class "
                                                   "number; name the member or .json key that holds one with "
                                                   "label_column=NAME")
        return check_label(text, f"member {key}.{ext} of {shard}")
    if "json" in members:
        from ..utils.jsontext import JSONProblem, parse_json

        field = label_key if label_key is not None else "label"
        try:
            meta = parse_json(_small(fd, members["json"], shard, key, "json"))
        except JSONProblem as exc:
            raise DatasetError(f"member {key}.json of {shard} is not JSON ({exc}); re-write the shard") from None
        value = meta.get(field) if isinstance(meta, dict) else None
        if value is None:
            return -1
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid_argument("label_column", f"{field!r} of {key}.json in {shard} is {shown(repr(value))}, not "
                                                   "a class number; name the key that holds one with label_column=NAME")
        return check_label(value, f"{field!r} of {key}.json in {shard}")
    return -1


def _small(fd: int, where: tuple[int, int], shard: Path, key: str, ext: str) -> bytes:
    offset, length = where
    if length > MAX_LABEL_BYTES:
        raise DatasetError(f"member {key}.{ext} of {shard} is {length} bytes, too large for a label")
    return os.pread(fd, length, offset)


def tar_source(inputs: list[str], *, image_column: str | None = None, label_column: str | None = None) -> Source:
    """A `Source` over the shards the inputs name (`shard_paths`), each shard one piece (`Source.pieces`)."""
    shards = shard_paths(inputs)
    parts, failures, labels = [], [], []
    for path in shards:
        index, failed = scan_shard(path, image_column, label_column)
        parts.append(index)
        failures += failed
        labels += index.labels.tolist()
    origin = {"path": " ".join(map(str, inputs)), "files": [str(p) for p in shards], "image_column": image_column,
              "label_column": label_column or "cls"}
    labelled = any(v >= 0 for v in labels)
    records = Concatenated(parts)
    return Source(records, labels if labelled else None, None, failures, form="webdataset", origin=origin,
                  pieces=records.pieces)
