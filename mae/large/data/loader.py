"""Image files as a `torch.utils.data` data set: what a job runs over, decoded in worker processes.

* `image_source` turns the inputs into a `Source`: the image paths in a fixed order, and labels where the inputs
  give them. Three forms: files and folders (as `collect_images`), a list file (`.txt`: one path per line,
  relative to the list's folder, blank lines and `#` comments skipped), or an ImageFolder tree (one folder whose
  sub-folders `root/CLASS/...` hold the images: the sorted class names are the classes, their positions the
  integer labels, as `torchvision.datasets.ImageFolder` numbers them).
* `ImageDataset` loads one path (`image.load_image`); a file that cannot be read gives an `ImageFailure` in its
  place, never an exception, so a worker process never dies of a bad image.
* `image_loader` is the `DataLoader`: a deterministic order (no shuffle; the `indices` given, e.g. one rank's
  share), `workers` processes decoding ahead (`prefetch_factor`), pinned memory for CUDA, and `collate` keeping
  the failures in order beside the stacked images. `loader_batches` iterates it with the main process's torch
  thread count set for the run (a core left to each worker) and restored afterwards.

Nothing here prints.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..errors import ImageError, invalid_argument
from . import images as image
from .images import Crop, ImageFailure, check_crop, collect_images
from .records import ImageRef, Record, Records

__all__ = ["LIST_SUFFIXES", "Batch", "ImageDataset", "Source", "collate", "default_workers", "image_folder",
           "image_loader", "image_source", "list_file", "loader_batches", "source_form"]

LIST_SUFFIXES: frozenset[str] = frozenset({".txt", ".lst", ".list"})
MAX_DEFAULT_WORKERS = 8


def default_workers(cpus: int | None = None, device_type: str = "cuda") -> int:
    """Worker processes by default: for an accelerator, a core left for the main process, at most
    `MAX_DEFAULT_WORKERS`; for the CPU none, since the forward pass uses every core and decoding beside it
    only takes cores from it (bench/features_pipeline.py on 2 cores: 1 worker halves the throughput)."""
    if device_type == "cpu":
        return 0
    cpus = cpus if cpus is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else os.cpu_count() or 1)
    return max(0, min(cpus - 1, MAX_DEFAULT_WORKERS))


# ---- what to run over -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """The inputs of a job: `paths` in order (image files, or `records.Record`s: images inside a data set's files),
    `labels[i]` the class index of `paths[i]` (None: unlabelled; -1: this one has no label), `classes` the class
    names, `failures` the inputs that gave no image reference (a missing file, an empty folder, a tar sample without
    an image). A data set source (`sources.open_source`) also says what it read (`origin`: its path, files and
    columns) and each file's [start, end) of the positions (`pieces`)."""

    paths: Sequence[ImageRef]
    labels: list[int] | None = None
    classes: list[str] | None = None
    failures: list[ImageFailure] = field(default_factory=list)
    form: str = "files"  # files | list | image-folder | parquet | arrow | webdataset
    origin: dict[str, Any] = field(default_factory=dict)
    pieces: tuple[tuple[int, int], ...] = ()

    @property
    def streamed(self) -> bool:
        """Whether training reads it as a stream (`data.stream`: tar shards) rather than in a keyed permutation."""
        return self.form == "webdataset"

    def describe(self) -> dict[str, Any]:
        """What was read, for feature files and runs: the form, and for a data set its path, files and columns."""
        return {"form": self.form, "items": len(self.paths), **self.origin}


def source_form(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> str:
    """`list` (one list file: `.txt`, `.lst`, `.list`), `image-folder` (one folder that holds no image itself but
    sub-folders, without `recursive`: with it a folder is a plain tree of images, unlabelled) or `files`."""
    if len(inputs) == 1:
        only = Path(inputs[0])
        if only.is_file() and only.suffix.lower() in LIST_SUFFIXES:
            return "list"
        if only.is_dir() and not recursive and _is_image_folder(only):
            return "image-folder"
    return "files"


def image_source(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> Source:
    """The `Source` of the inputs, by `source_form`: a list file, an ImageFolder tree, or files and folders
    (`collect_images`)."""
    form = source_form(inputs, recursive=recursive)
    if form == "list":
        return list_file(inputs[0])
    if form == "image-folder":
        return image_folder(inputs[0])
    paths, failures = collect_images(inputs, recursive=recursive)
    return Source(list(paths), failures=list(failures))


def _is_image_folder(root: Path) -> bool:
    try:
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    except OSError:
        return False
    if any(p.is_file() and p.suffix.lower() in image.IMAGE_SUFFIXES for p in entries):
        return False
    return any(p.is_dir() for p in entries)


def image_folder(root: str | os.PathLike[str]) -> Source:
    """An ImageFolder tree `root/CLASS/...`: the sorted class folders are the classes (label = position), each
    walked recursively by name. A class folder without images is kept as a class (its label stays reserved) and
    reported as a failure."""
    root = Path(root)
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ImageError(f"folder {root} cannot be read ({exc.strerror or exc})") from exc
    if not classes:
        raise ImageError(f"{root} has no class folders; an ImageFolder tree is root/CLASS/image")
    paths: list[Path] = []
    labels: list[int] = []
    failures: list[ImageFailure] = []
    for label, name in enumerate(classes):
        found, failed = collect_images([root / name], recursive=True)
        paths += found
        labels += [label] * len(found)
        failures += failed
    return Source(paths, labels, classes, failures, form="image-folder")


def list_file(path: str | os.PathLike[str]) -> Source:
    """A list file: one image path per line (relative paths from the list's folder); blank lines and lines
    starting with `#` are skipped; a listed path that does not exist is a failure in its place."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as exc:
        raise ImageError(f"list file {path} cannot be read ({exc.strerror or exc})") from exc
    paths: list[Path] = []
    failures: list[ImageFailure] = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        listed = Path(text)
        listed = listed if listed.is_absolute() else path.parent / listed
        if listed.is_file():
            paths.append(listed)
        else:
            failures.append(ImageFailure(listed, f"{listed} (listed in {path}) does not exist or is not a file"))
    return Source(paths, failures=failures, form="list")


# ---- loading --------------------------------------------------------------------------------------------------
Sample = tuple[int, Path, "torch.Tensor | ImageFailure"]  # (position, path, image or why not)


class ImageDataset(Dataset):
    """`paths[i]` loaded and preprocessed (`image.load_image` at `size`, `crop`): `(i, path, tensor (3, H, W))`,
    or `(i, path, ImageFailure)` for a file that cannot be read or preprocessed."""

    def __init__(self, paths: Sequence[ImageRef | str | os.PathLike[str]], size: int | tuple[int, int],
                 crop: Crop) -> None:
        check_crop(crop)
        self.paths = paths if isinstance(paths, Records) else [p if isinstance(p, Record) else Path(p) for p in paths]
        self.size, self.crop = size, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        path = self.paths[index]
        try:
            return index, path, image.load_image(path, size=self.size, crop=self.crop)
        except ImageError as exc:
            return index, path, ImageFailure(path, str(exc))
        except Exception as exc:  # anything else a decoder raises stays this file's failure, not the worker's death
            return index, path, ImageFailure(path, f"image {path} could not be loaded ({type(exc).__name__}: {exc})")


@dataclass
class Batch:
    """A batch in input order: `items` (position, path, None or the failure) for every input, `images`
    (n, 3, H, W) the loaded ones in the same order (None when every input failed)."""

    items: list[tuple[int, Path, ImageFailure | None]]
    images: torch.Tensor | None

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (CUDA): page-locked images copy to the GPU asynchronously."""
        return Batch(self.items, self.images.pin_memory() if self.images is not None else None)

    def __len__(self) -> int:
        return len(self.items)


def collate(samples: list[Sample]) -> Batch:
    """Samples -> one `Batch`: the images stacked (in a worker, off the main process), failures kept in order."""
    tensors = [t for _, _, t in samples if isinstance(t, torch.Tensor)]
    items = [(i, p, t if isinstance(t, ImageFailure) else None) for i, p, t in samples]
    return Batch(items, torch.stack(tensors) if tensors else None)  # (n, 3, H, W)


def worker_init(_: int) -> None:
    """In each worker: signals are the main process's business. A terminal's Ctrl-C reaches the whole process
    group; the worker ignores it (the main process stops and shuts the workers down) and does not report it
    through the main process's wake-up socket, which it inherited."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # pragma: no cover - not the worker's main thread
        pass


def image_loader(
    paths: Sequence[ImageRef | str | os.PathLike[str]],
    size: int | tuple[int, int],
    crop: Crop,
    batch_size: int,
    *,
    indices: Sequence[int] | None = None,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A `DataLoader` over `ImageDataset(paths)` taking the positions `indices` (default all) in that order, in
    batches of `batch_size` inputs (the last one may be short); each batch is a `Batch`.

    Args:
        paths: the image files or records (`records.Record`); one that cannot be read is an `ImageFailure` in its
            batch, not an exception.
        size: the model's input size, (H, W) or one int for a square (`image.preprocess`).
        crop: `eval`, `resize` or `center` (`image.preprocess`).
        batch_size: inputs per batch, a positive integer.
        indices: the positions of `paths` to load, in this order (e.g. one rank's share; default all of them).
        workers: processes decoding ahead (0: in this process).
        pin_memory: page-locked batches, for a CUDA device.
        prefetch_factor: batches each worker loads ahead (only with `workers`).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_argument("batch_size", f"batch size must be a positive integer, got batch_size={batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise invalid_argument("workers", f"workers must be an integer >= 0 (0: load in this process), got {workers!r}")
    dataset = ImageDataset(paths, size, crop)
    order = range(len(dataset)) if indices is None else indices  # lazy: a range stays a range
    batches = BatchSampler(order, batch_size, drop_last=False)  # type: ignore[arg-type]
    extra = {"prefetch_factor": prefetch_factor, "worker_init_fn": worker_init} if workers else {}
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, **extra)


def loader_batches(loader: DataLoader, device: torch.device | str = "cpu") -> Iterator[Batch]:
    """The loader's batches. When the forward pass runs on an accelerator (`device`), this process's torch threads
    are set for the run: with W workers decoding, `cpus - W` (at least 1) are left to it; restored when the iteration
    ends (or is abandoned). On the CPU they are left alone: the thread count changes how a CPU matrix product splits
    its sums, hence the last bits of a result, and a result must not depend on the number of workers."""
    before = torch.get_num_threads()
    if loader.num_workers and torch.device(device).type != "cpu":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, min(before, cpus - loader.num_workers)))
    try:
        yield from loader
    finally:
        torch.set_num_threads(before)
