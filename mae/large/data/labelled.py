"""The data of a fine-tuning run: labelled sources, keyed augmentation, one order for any world size.

* `labelled_source`: an ImageFolder tree, or a data set with a label column (parquet, arrow, tar shards:
  `sources.open_source`); `shared_classes` the classes of a train / val pair.
* `epoch_batches`: the epoch's order is a permutation drawn from `derive_seed(seed, "order", epoch)`; global
  step `s` takes the `batch_size x world_size` positions `perm[s * G:(s + 1) * G]` (the last incomplete global
  batch is dropped, as the official loader's `drop_last=True`), and rank `r` the `r`-th `batch_size` of them.
  One process with batch `B x W` and `W` processes with batch `B` train on the same global batches. A stream source
  (tar shards) has its own order instead (`stream.stream_batches`); `epoch_plan` / `epoch_steps` pick.
* `TrainImages` loads sample `i` of epoch `e` and augments it with `keyed_rng(seed, "augment", e,
  i)`: what a sample gets depends on nothing but its key, so worker processes, resuming and the world size do
  not change it. A file that cannot be read is a failure marker (the worker never dies); the run then raises
  `ImageError` naming it.
* `EvalImages` is the official evaluation transform (`image.preprocess(crop="eval")`: resize 256/224, centre
  crop); distributed evaluation gives rank `r` the positions `r::W`, each counted once.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError, ImageError, invalid_argument, short_list
from ..utils.keyed import derive_seed, keyed_rng
from . import augment
from .images import ImageFailure, open_image, preprocess
from .loader import Source, image_folder, worker_init
from .records import ref_name
from .stream import SHUFFLE_BUFFER, stream_batches, stream_steps

TrainTransform = Callable[[Image.Image, random.Random], torch.Tensor]  # (PIL image, keyed rng) -> (3, H, W)
EvalTransform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class LabelledBatch:
    """Images (n, 3, H, W), labels (n,) (-1: unlabelled), the inputs that could not be read (the run stops on them),
    and each image's sample index (n,) (what keys its per-sample draws, such as pre-training's mask)."""

    images: torch.Tensor
    labels: torch.Tensor
    failures: list[ImageFailure]
    indices: torch.Tensor | None = None

    def pin_memory(self) -> LabelledBatch:
        return LabelledBatch(self.images.pin_memory(), self.labels.pin_memory(), self.failures, self.indices)


def labelled_folder(root: str | Path, name: str) -> Source:
    """An ImageFolder tree with at least one image (`name` says which argument it is in messages)."""
    source = image_folder(root)
    if not source.paths:
        raise invalid_argument(name, f"{root} holds no readable image in its class folders; give an ImageFolder "
                                     "tree root/CLASS/image")
    return source


NUMBERED = "numbered"  # `origin["classes"]` of a data set that names no classes: they are its label numbers


def labelled_source(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], name: str, *,
                    image_column: str | None = None, label_column: str | None = None) -> Source:
    """A labelled source with at least one image (`name` says which argument it is in messages): an ImageFolder tree,
    or a data set (parquet, arrow, tar shards) whose every image has a label. A data set without class names gets its
    label numbers as names ("0", "1", ...). A data set that lost samples (a truncated shard) is refused: a training
    run does not go on without them."""
    from .sources import container_source

    given = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    source = container_source(given, image_column=image_column, label_column=label_column)
    if source is None:
        return labelled_folder(given[0], name)
    shown_as = " ".join(map(str, given))
    if source.failures:
        more = f" (and {len(source.failures) - 1} more)" if len(source.failures) > 1 else ""
        raise DatasetError(f"{source.failures[0].reason}{more}; a training or evaluation run needs every sample")
    if not len(source.paths):
        raise invalid_argument(name, f"{shown_as} holds no image")
    if source.labels is None:
        raise invalid_argument("label_column", f"{shown_as} has no labels (no label column, .cls member or 'label' in "
                                               "a .json); name where they are with label_column=NAME")
    missing = [i for i, v in enumerate(source.labels) if v < 0]
    if missing:
        raise invalid_argument(name, f"{len(missing)} of the {len(source.paths)} images of {shown_as} have no label "
                                     f"(the first: {ref_name(source.paths[missing[0]])}); give a labelled split")
    if source.classes is None:
        numbered = [str(i) for i in range(max(source.labels) + 1)]
        return dataclasses.replace(source, classes=numbered, origin={**source.origin, "classes": NUMBERED})
    if max(source.labels) >= len(source.classes):
        raise DatasetError(f"{shown_as} has label {max(source.labels)} but names {len(source.classes)} classes; its "
                           "class names do not match its labels")
    return source


def shared_classes(train: Source, val: Source) -> list[str]:
    """The classes of a train / val pair: the same names in the same order (labels are class positions); where the
    data names no classes (tar shards), the label numbers of both."""
    if NUMBERED in (train.origin.get("classes"), val.origin.get("classes")):
        if train.origin.get("classes") != val.origin.get("classes"):
            raise invalid_argument("val", "one of train and val names its classes and the other does not; give both "
                                          "in the same form")
        return [str(i) for i in range(max(len(train.classes or []), len(val.classes or [])))]
    check_same_classes(train, val)
    return list(train.classes or [])


def check_same_classes(train: Source, val: Source) -> None:
    """TRAIN and VAL must name the same classes in the same order (labels are class positions)."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes or []) - set(val.classes or []))
        only_val = sorted(set(val.classes or []) - set(train.classes or []))
        detail = (f"only in train: {short_list(only_train) or '-'}; only in val: {short_list(only_val) or '-'}"
                  if only_train or only_val else "the same names in another order")
        what = "class folders" if train.form == "image-folder" and val.form == "image-folder" else "classes"
        raise invalid_argument("val", f"the train and val data have different {what} ({detail}); give both the same "
                                      "classes in the same order")


def _collate(samples: list[tuple]) -> LabelledBatch:
    """(image or failure, label[, index]) samples -> one batch, failures apart."""
    failures = [s[0] for s in samples if isinstance(s[0], ImageFailure)]
    kept = [s for s in samples if isinstance(s[0], torch.Tensor)]
    images = torch.stack([s[0] for s in kept]) if kept else torch.empty(0)  # (n, 3, H, W)
    indices = torch.tensor([s[2] for s in kept], dtype=torch.int64) if samples and len(samples[0]) > 2 else None
    return LabelledBatch(images, torch.tensor([s[1] for s in kept], dtype=torch.int64), failures, indices)


class TrainImages(Dataset):
    """Sample `(epoch, index)` -> (augmented image, label, index); the augmentation's rng is keyed by both and the
    seed. An unlabelled source (pre-training) gives label -1."""

    def __init__(self, source: Source, transform: TrainTransform, seed: int) -> None:
        self.source = source
        self.paths, self.labels = source.paths, source.labels or [-1] * len(source.paths)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | ImageFailure, int, int]:
        epoch, index = key
        path = self.paths[index]
        try:
            img = open_image(path)
        except ImageError as exc:
            return ImageFailure(path, str(exc)), self.labels[index], index
        rng = keyed_rng(self.seed, "augment", epoch, index)
        return self.transform(img, rng), self.labels[index], index


class EvalImages(Dataset):
    """Sample `index` -> (image through the evaluation transform, label)."""

    def __init__(self, source: Source, transform: EvalTransform) -> None:
        self.paths, self.labels, self.transform = source.paths, source.labels or [], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | ImageFailure, int]:
        try:
            return self.transform(open_image(self.paths[index])), self.labels[index]
        except ImageError as exc:
            return ImageFailure(self.paths[index], str(exc)), self.labels[index]


def official_eval_transform(size: tuple[int, int]) -> EvalTransform:
    """The official evaluation transform at `size` (`util/datasets.build_transform`: resize by 256/224 up to 224,
    none above, bicubic, centre crop; `augment.EvalTransform`); a non-square size keeps the aspect the same way
    (`image.preprocess(crop="eval")`)."""
    if size[0] == size[1]:
        return augment.EvalTransform(size[0])
    return _EvalCrop(size)


@dataclass(frozen=True)
class _EvalCrop:  # a class, not a closure: worker processes started by spawn pickle it
    size: tuple[int, int]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return preprocess(img, self.size, "eval")


def steps_per_epoch(samples: int, batch_size: int, world_size: int) -> int:
    """Global steps of an epoch: whole global batches only (`drop_last`)."""
    return samples // (batch_size * world_size)


def epoch_batches(samples: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[list[tuple[int, int]]]:
    """Rank `rank`'s batches of `epoch`: lists of `(epoch, index)` keys (see the module docstring).

    Args:
        samples: how many samples the dataset holds (indices `0..samples - 1`).
        batch_size: samples per batch on each rank; a global batch is `batch_size * world_size`.
        epoch: the epoch, which keys the order and appears in every key.
        seed: the run's seed; the order is drawn from `derive_seed(seed, "order", epoch)`.
        rank, world_size: this process's rank among `world_size` processes (default one process).
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    perm = torch.randperm(samples, generator=generator).tolist()
    glob = batch_size * world_size
    return [[(epoch, i) for i in perm[s * glob + rank * batch_size:s * glob + (rank + 1) * batch_size]]
            for s in range(steps_per_epoch(samples, batch_size, world_size))]


def epoch_steps(source: Source, batch_size: int, world_size: int, workers: int) -> int:
    """Global steps of an epoch over `source`: whole global batches (`steps_per_epoch`), or a stream's
    (`stream.stream_steps`)."""
    if source.streamed:
        return stream_steps(source.pieces, batch_size, world_size, workers)
    return steps_per_epoch(len(source.paths), batch_size, world_size)


def epoch_plan(source: Source, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
               workers: int = 0, buffer: int = SHUFFLE_BUFFER) -> list[list[tuple[int, int]]]:
    """Rank `rank`'s batches of `epoch` over `source`: `epoch_batches` (a keyed permutation), or for a stream source
    `stream.stream_batches` (whole shards per reader, a shuffle buffer of `buffer` samples)."""
    if source.streamed:
        return stream_batches(source.pieces, batch_size, epoch=epoch, seed=seed, rank=rank, world_size=world_size,
                              workers=workers, buffer=buffer)
    return epoch_batches(len(source.paths), batch_size, epoch=epoch, seed=seed, rank=rank, world_size=world_size)


def stream_settings(source: Source, world_size: int, workers: int, buffer: int) -> dict[str, int] | None:
    """What a stream source's order depends on beyond the seed (a resumed run must have the same), or None."""
    from .stream import readers

    return {"readers": readers(world_size, workers), "shuffle_buffer": buffer} if source.streamed else None


def loader(dataset: Dataset, batches: Sequence[Sequence[object]], *, workers: int, pin_memory: bool) -> DataLoader:
    """A `DataLoader` over the given batches in order, `workers` processes decoding ahead."""
    extra = {"prefetch_factor": 2, "worker_init_fn": worker_init} if workers else {}
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=_collate,
                      pin_memory=pin_memory, **extra)


def raise_on_failures(batch: LabelledBatch) -> None:
    """A training or evaluation batch with an unreadable file stops the run, naming the file."""
    if batch.failures:
        first = batch.failures[0]
        raise ImageError(f"{ref_name(first.path)} cannot be read ({first.reason}); remove it from the data or replace "
                         "it, then run again (--resume continues from the last finished epoch)")
