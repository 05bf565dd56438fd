"""A classifier's top-1 / top-5 accuracy and loss on a labelled ImageFolder tree, on one process or many.

As the official `engine_finetune.evaluate` (facebookresearch/mae): the evaluation transform (resize 256/224,
centre crop), plain cross-entropy (no label smoothing), autocast where the run uses it. Two differences, on
purpose: the loss is the mean over *images* (the official code averages the per-batch means, which depends on
the batch size; both agree when every batch is full), and a distributed evaluation gives rank `r` the
positions `r::W`, each image counted exactly once (the official `DistributedSampler` pads the shares with
repeated images, which shifts the numbers slightly), its sums all-reduced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.read import read_checkpoint
from ..data.images import check_size
from ..data.labelled import EvalImages, EvalTransform, loader, official_eval_transform, raise_on_failures
from ..data.loader import Source, default_workers
from ..errors import IncompatibleCheckpointError, invalid_argument
from ..models.vit import VisionTransformer, ViTConfig
from ..utils.device import autocast, resolve_amp, resolve_device
from ..utils.distributed import DistContext


@dataclass(frozen=True)
class Accuracy:
    """Top-1 / top-5 in percent, the mean cross-entropy per image, and how many images were counted."""

    top1: float
    top5: float
    loss: float
    images: int

    def as_dict(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "images": self.images}


@torch.no_grad()
def evaluate_model(model: nn.Module, source: Source, *, batch_size: int, device: torch.device, amp: str = "off",
                   ctx: DistContext | None = None, workers: int = 0, transform: EvalTransform | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> Accuracy:
    """`model` (in eval mode for the pass, its mode restored) on this rank's share of `source`; sums all-reduced.

    Args:
        model: the classifier, already on `device` (a DDP wrapper's `module` gives the config); it returns logits.
        source: the labelled images (`Source` with `labels`); an unreadable file raises `ImageError`.
        batch_size: images per batch on this rank.
        device: where the images go (a `torch.device`, already resolved).
        amp: `off`, `bf16` or `fp16`, already resolved (`resolve_amp`; `auto` is not accepted here).
        ctx: this process's place in the run (default one process on `device`); rank `r` counts positions `r::W`.
        workers: processes decoding images ahead (0: in this process).
        transform: the image transform (default the official evaluation transform at the model's input size).
        on_batch: called as `on_batch(done, total)` after each of this rank's batches.

    Returns the `Accuracy` over every rank's images (NaN with 0 images when there were none)."""
    ctx = ctx or DistContext(device=device)
    core = getattr(model, "module", model)
    transform = transform or official_eval_transform(tuple(core.config.img_size))
    mine = list(range(ctx.rank, len(source.paths), ctx.world_size))
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, images
    was_training = model.training
    model.eval()
    try:
        # Iterated as it is (not `data.loader_batches`): the thread count stays the process's, as in training.
        eval_loader = loader(EvalImages(source, transform), batches, workers=workers, pin_memory=device.type == "cuda")
        for done, batch in enumerate(eval_loader, 1):
            raise_on_failures(batch)
            images = batch.images.to(device, non_blocking=True)
            target = batch.labels.to(device, non_blocking=True)
            with autocast(amp, device):
                logits = model(images)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (n, k)
            sums += torch.stack([F.cross_entropy(logits, target, reduction="sum").double(),
                                 (top[:, 0] == target).sum().double(), (top == target[:, None]).any(1).sum().double(),
                                 torch.tensor(float(target.numel()), dtype=torch.float64, device=device)])
            if on_batch is not None:
                on_batch(done, len(batches))
    finally:
        model.train(was_training)
    if ctx.is_distributed:
        import torch.distributed as dist

        dist.all_reduce(sums)
    loss, hit1, hit5, count = sums.tolist()
    if count == 0:
        return Accuracy(float("nan"), float("nan"), float("nan"), 0)
    return Accuracy(100.0 * hit1 / count, 100.0 * hit5 / count, loss / count, int(count))


def load_classifier(path: str | Path, *, size: int | tuple[int, int] | None = None, device: str | torch.device = "cpu",
                    architecture: str | None = None, trust: bool = False) -> VisionTransformer:
    """A fine-tuned classifier file (official or from `finetune`) as a `VisionTransformer` with its own head: the
    number of classes and the pooling are read from the file."""
    data = read_checkpoint(path, trust=trust)
    classes = data.classes
    head = data.classifier.get("head.weight")
    if head is None or head.dim() != 2:
        raise IncompatibleCheckpointError(f"{path} holds no trained classifier (no head.weight); evaluate a "
                                          "fine-tuned checkpoint, or fine-tune this one first")
    global_pool = any(k.startswith("fc_norm.") for k in data.classifier) and "norm.weight" not in data.state_dict
    overrides: dict[str, object] = {"num_classes": int(head.shape[0]), "global_pool": global_pool}
    if size is not None:
        overrides["img_size"] = check_size(size)
    config = ViTConfig.from_architecture(architecture, **overrides)
    model = VisionTransformer.from_pretrained(data, config, head="file", trust=trust, device=device).eval()
    model.classes = classes  # the class names its head was trained on, when the file records them
    return model


def evaluate_checkpoint(val: str | Path, checkpoint: str | Path, *, batch_size: int = 64, device: str = "auto",
                        amp: str = "auto", workers: int | None = None, size: int | None = None,
                        ctx: DistContext | None = None,
                        on_batch: Callable[[int, int], None] | None = None, image_column: str | None = None,
                        label_column: str | None = None) -> tuple[Accuracy, Source]:
    """Evaluate a fine-tuned checkpoint on the labelled images `val` (its classes in order must be the classifier's);
    returns the accuracy and the data's `Source`.

    Args:
        val: the ImageFolder tree `val/CLASS/image`, one class folder per class of the classifier, or a labelled data
            set (`data.sources`: parquet, a `save_to_disk` folder, tar shards) of the classifier's classes.
        checkpoint: a fine-tuned classifier file; its number of classes and pooling are read from it (`load_classifier`).
        batch_size: images per batch on each rank, a positive integer.
        device: `auto`, `cpu`, `cuda`, `cuda:N` or `mps` (`resolve_device`); ignored when `ctx` is given (its device is used).
        amp: `auto` (bf16 on a GPU that has it, else fp16; off on the CPU), `bf16`, `fp16` or `off` (`resolve_amp`).
        workers: processes decoding images ahead (default: by device, `loader.default_workers`).
        size: the input size the classifier is built at (default the architecture's, 224).
        ctx: this process's place in a distributed run (default one process).
        on_batch: called as `on_batch(done, total)` after each of this rank's batches.
        image_column, label_column: a data set's columns (member extensions of tar shards); default `image`, `label`.
    """
    from ..data.labelled import NUMBERED, labelled_source

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_argument("batch_size", f"batch size must be a positive integer, got {batch_size!r}")
    target = ctx.device if ctx is not None else resolve_device(device)
    source = labelled_source(val, "val", image_column=image_column, label_column=label_column)
    model = load_classifier(checkpoint, size=size, device=target)
    classes = model.config.num_classes
    found = list(source.classes or [])
    if source.origin.get("classes") == NUMBERED:  # the data names no classes: its labels must be the head's
        if len(found) > classes:
            raise invalid_argument("val", f"{val} has label {len(found) - 1} and the classifier {classes} classes; "
                                          "evaluate on data labelled for this classifier")
        workers = default_workers(device_type=target.type) if workers is None else workers
        return evaluate_model(model, source, batch_size=batch_size, device=target, amp=resolve_amp(amp, target),
                              ctx=ctx, workers=workers, on_batch=on_batch), source
    if len(found) < 2:
        raise invalid_argument("val", f"{val} holds {len(found)} class folder: top-1 over one class says nothing; give "
                                      "the tree of every class the classifier knows")
    if len(found) != classes:
        raise invalid_argument("val", f"{val} has {len(found)} class folders and the classifier {classes} classes; "
                                      "evaluate on a tree with one folder per class of the model")
    trained = getattr(model, "classes", None)
    if trained is not None and trained != found:
        differ = next(i for i, (a, b) in enumerate(zip(trained, found)) if a != b)
        raise invalid_argument("val", f"{val}'s class folders are not the classes {checkpoint} was trained on (class "
                                      f"{differ}: folder {found[differ]!r}, trained {trained[differ]!r}); evaluate on "
                                      "a tree of the same class folders, so that each label means the same class")
    workers = default_workers(device_type=target.type) if workers is None else workers
    return evaluate_model(model, source, batch_size=batch_size, device=target, amp=resolve_amp(amp, target), ctx=ctx,
                          workers=workers, on_batch=on_batch), source
