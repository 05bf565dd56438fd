"""Fine-tuning an MAE encoder as a classifier: the official recipe (facebookresearch/mae `main_finetune.py`,
`engine_finetune.py`, FINETUNE.md for ViT-L) on current PyTorch, from one process to many nodes.

The order of operations follows `engine_finetune.train_one_epoch`: `optimizer.zero_grad()` once before the
epoch; every `accum_iter` micro-steps the learning rate is set by the half-cycle cosine with warm-up at the
fractional epoch `step / steps + epoch` (`util/lr_sched.adjust_learning_rate`, here `lars.cosine_lr` times each
group's layer-decay `lr_scale`); mixup / cutmix on the batch; the loss under autocast; `loss / accum_iter`
backward through the gradient scaler; on the last micro-step of an accumulation the scaler unscales, the
gradients are clipped when `clip_grad` is set, the optimiser steps (`util/misc.NativeScalerWithGradNormCount`)
and `optimizer.zero_grad()` follows. A non-finite loss stops the run (the official code exits). The
optimiser is AdamW (0.9, 0.999) over `vit.param_groups_lrd`; lr = blr x effective batch / 256 unless `lr` is
given. The model is saved, then evaluated, every epoch, as `main_finetune.py` does.

What is this module's own: every random draw is keyed (`keyed.derive_seed`, `keyed.keyed_rng`; data order by epoch,
augmentation by epoch and sample, mixup and drop path by epoch, step and rank), so a resumed run repeats an
uninterrupted one bit for bit on the CPU; the data order is defined on the global batch, so N processes see
what one process with an N times larger batch sees; the checkpoint is loadable with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import catalog
from ..checkpoints.folders import checkpoint_inputs
from ..data import augment
from ..data.labelled import (
    TrainImages,
    TrainTransform,
    check_same_classes,
    epoch_batches,
    labelled_folder,
    loader,
    steps_per_epoch,
)
from ..data.loader import default_workers
from ..errors import invalid_argument
from ..evaluate.accuracy import evaluate_model
from ..models.vit import VisionTransformer, ViTConfig, apply_lr_scale, param_groups_lrd
from ..utils.device import AMP_CHOICES, autocast, resolve_amp, resolve_device
from ..utils.distributed import DistContext, destroy, init_distributed
from ..utils.keyed import derive_seed, keyed_rng
from ..utils.optim import cosine_lr
from ..utils.outputs import guard_output, guard_run_folder
from .loop import checked_loss, scaler_state
from .state import (
    BEST,
    CONFIG,
    LAST,
    append_log,
    link_or_copy,
    load_run_checkpoint,
    plain,
    resume_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_log,
    write_json,
)

Progress = Callable[[str, dict[str, Any]], None]  # (event, details), called on rank 0 only

# Settings that may change when a run is resumed without changing what it computes (or, for `epochs`, only
# the schedule's end, which is the point of extending a run).
RESUMABLE_CHANGES = frozenset({"epochs", "workers", "save_every", "save_checkpoints", "device", "eval_batch_size"})


# The recipe's augmentation and loss defaults have one home, `augment.AugmentConfig`.
_RECIPE = augment.AugmentConfig()


@dataclass(frozen=True)
class FinetuneConfig:
    """The recipe. Defaults are the official ViT-L fine-tuning (FINETUNE.md: 50 epochs, effective batch 1024,
    blr 1e-3, layer decay 0.75, weight decay 0.05, drop path 0.2, mixup 0.8, cutmix 1.0, label smoothing 0.1,
    RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, `main_finetune.py` for the rest)."""

    model: str | None = None  # an architecture of catalog.ARCHITECTURES; None: catalog.DEFAULT_ARCHITECTURE (ViT-L)
    input_size: int = 224
    num_classes: int | None = None  # None: the number of class folders
    global_pool: bool = True  # mean of the patch tokens + fc_norm (official default)
    drop_path: float = 0.2
    epochs: int = 50
    warmup_epochs: float = 5.0
    batch_size: int = 32  # per process and micro-step
    accum_iter: int | None = None  # None: effective_batch / (batch_size x world size)
    effective_batch: int = 1024  # used when accum_iter is None
    lr: float | None = None  # None: blr x effective batch / 256
    blr: float = 1e-3
    min_lr: float = 1e-6
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None  # official default: no clipping
    smoothing: float = _RECIPE.smoothing
    mixup: float = _RECIPE.mixup
    cutmix: float = _RECIPE.cutmix
    mixup_prob: float = _RECIPE.mixup_prob
    mixup_switch_prob: float = _RECIPE.mixup_switch_prob
    mixup_mode: str = _RECIPE.mixup_mode
    auto_augment: str | None = _RECIPE.auto_augment
    re_prob: float = _RECIPE.re_prob
    amp: str = "auto"  # auto (bf16 on a GPU, fp16 + scaler where it lacks bf16, off on the CPU), bf16, fp16, off
    grad_checkpointing: bool = False
    seed: int = 0
    workers: int | None = None  # None: data.default_workers for the device
    save_every: int = 0  # also keep checkpoint-{epoch}.pth every N epochs; 0: only last and best
    save_checkpoints: bool = True  # False: config.json and log.jsonl only (sweeps, smoke runs)
    eval_batch_size: int | None = None  # None: batch_size
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = {"input_size": self.input_size, "epochs": self.epochs, "batch_size": self.batch_size,
                    "effective_batch": self.effective_batch}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, f"{name} must be a positive integer, got {value!r}")
        for name in ("accum_iter", "num_classes", "eval_batch_size", "workers"):
            value = getattr(self, name)
            least = 0 if name == "workers" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise invalid_argument(name, f"{name} must be an integer >= {least} or None, got {value!r}")
        for name in ("drop_path", "smoothing", "mixup_prob", "mixup_switch_prob", "re_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or (name == "drop_path" and value >= 1.0):
                raise invalid_argument(name, f"{name} must be in [0, 1), got {value!r}")
        for name in ("warmup_epochs", "blr", "min_lr", "layer_decay", "weight_decay", "mixup", "cutmix"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise invalid_argument(name, f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise invalid_argument("lr", f"lr must be a finite number > 0 or None (blr x batch / 256), got {self.lr!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise invalid_argument("clip_grad", f"clip_grad must be > 0 or None (no clipping), got {self.clip_grad!r}")
        if self.amp not in AMP_CHOICES:
            raise invalid_argument("amp", f"amp must be {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if self.mixup_mode != "batch":  # the recipe's mode, the one `mixup.Mixup` implements
            raise invalid_argument("mixup_mode", f"mixup_mode must be 'batch' (the official recipe's), got {self.mixup_mode!r}")
        if self.save_every < 0:
            raise invalid_argument("save_every", f"save_every must be >= 0 (0: last and best only), got {self.save_every}")

    @property
    def augment(self) -> augment.AugmentConfig:
        """The recipe's augmentation and loss settings of this run, whose builders make the pieces."""
        return augment.AugmentConfig(input_size=self.input_size, auto_augment=self.auto_augment, re_prob=self.re_prob,
                                     mixup=self.mixup, cutmix=self.cutmix, mixup_prob=self.mixup_prob,
                                     mixup_switch_prob=self.mixup_switch_prob, mixup_mode=self.mixup_mode,
                                     smoothing=self.smoothing)

    @property
    def mixup_active(self) -> bool:
        return self.augment.mixup_active

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """The config a run saved (`args["config"]`); unknown keys are an error, tuples come back as tuples."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise invalid_argument("resume", f"the run's settings name {', '.join(unknown)}, unknown here; resume "
                                             "with the version of the library that wrote the run")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def replace(self, **changes: Any) -> FinetuneConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FinetuneResult:
    """Where the run is, its log records (this call's epochs), the best val top-1 and the settings it ran with."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_top1: float
    args: dict[str, Any] = field(default_factory=dict)


def resumed_config(path: str | os.PathLike[str], **changes: Any) -> FinetuneConfig:
    """The settings of the run that wrote `path` (a checkpoint or a run folder), with `changes`."""
    state = load_run_checkpoint(resume_file(path))
    return FinetuneConfig.from_dict(state["args"]["config"]).replace(**changes)


def _run_args(config: FinetuneConfig, *, classes: list[str], world: int, accum: int, lr: float, amp: str,
              device: torch.device, pretrained: str | None, train: str, val: str, workers: int) -> dict[str, Any]:
    return plain({
        "config": config.to_dict(), "architecture": config.model or catalog.DEFAULT_ARCHITECTURE,
        "num_classes": len(classes), "classes": classes, "world_size": world, "accum_iter": accum,
        "effective_batch": config.batch_size * accum * world, "lr": lr, "amp": amp, "device": str(device),
        "workers": workers, "pretrained": pretrained, "train": train, "val": val,
    })


def _check_resume(saved: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    """A resumed run must compute what the interrupted one computed: same settings (but `RESUMABLE_CHANGES`),
    same global batch, same classes."""
    differs = [k for k, v in args["config"].items() if k not in RESUMABLE_CHANGES and saved["config"].get(k) != v]
    if saved["effective_batch"] != args["effective_batch"] or saved["accum_iter"] != args["accum_iter"]:
        differs.append("effective batch (batch size x accum iter x processes)")
    if saved["classes"] != args["classes"]:
        differs.append("class folders")
    if differs:
        raise invalid_argument("resume", f"the run being resumed used other settings ({', '.join(differs)}); resume "
                                         "with the run's own settings (resumed_config) so it continues as it began")


def _accumulation(config: FinetuneConfig, images: int, world: int) -> int:
    """The micro-steps per update (`accum_iter`, or effective batch / (batch x processes)), checked against the data:
    a refusal names the settings that would work."""
    per_step = config.batch_size * world  # images per micro-step, all processes together
    accum = config.accum_iter
    if accum is None:
        accum, rest = divmod(config.effective_batch, per_step)
        if accum < 1 or rest:
            fits = [b for b in range(1, config.effective_batch // world + 1) if config.effective_batch % (b * world) == 0]
            near = sorted(fits, key=lambda b: (abs(b - config.batch_size), b))[:2]
            raise invalid_argument("batch_size", f"the effective batch {config.effective_batch} is not a multiple of "
                                   f"batch size {config.batch_size} x {world} processes; choose batch_size="
                                   f"{' or '.join(map(str, sorted(near)))}, or another effective_batch, or set accum_iter")
    steps = steps_per_epoch(images, config.batch_size, world)
    if steps < accum:
        most = steps * per_step  # the largest effective batch one epoch of these images holds at this batch size
        how = (f"use effective_batch={most} or less (accum_iter={steps} at this batch size)"
               if config.accum_iter is None and steps else
               f"use accum_iter={steps} or less" if steps else
               f"use batch_size={max(1, images // world)} or less (the data hold no full batch of {config.batch_size})")
        raise invalid_argument("effective_batch" if config.accum_iter is None else "accum_iter",
                               f"{images} training images make {steps} steps of batch {config.batch_size} x {world} "
                               f"process(es) per epoch, fewer than the {accum} micro-steps of one update (accum_iter="
                               f"{accum}, effective batch {accum * per_step}); {how}")
    if config.mixup_active and config.batch_size % 2:
        even = [b for b in (config.batch_size - 1, config.batch_size + 1) if b > 0]
        raise invalid_argument("batch_size", f"mixup / cutmix mix each image with its mirror in the batch, so batch size "
                               f"{config.batch_size} must be even; use batch_size={' or '.join(map(str, even))} (with an "
                               "effective_batch it divides), or turn both off with mixup=0 and cutmix=0")
    return accum


def build_train_transform(config: FinetuneConfig) -> TrainTransform:
    """The official training transform: RandomResizedCrop bicubic + flip, RandAugment (`auto_augment`, None for
    none), random erasing (`re_prob`, 0 for none)."""
    return config.augment.train_transform()


def build_criterion(config: FinetuneConfig) -> nn.Module:
    """What `main_finetune.py` picks: SoftTargetCrossEntropy with mixup / cutmix, else label smoothing, else
    plain cross-entropy."""
    return config.augment.criterion()


def finetune(
    train: str | os.PathLike[str],
    val: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: FinetuneConfig | None = None,
    *,
    pretrained: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    train_transform: TrainTransform | None = None,
    on_progress: Progress | None = None,
    ctx: DistContext | None = None,
) -> FinetuneResult:
    """Fine-tune the encoder of `pretrained` (an MAE checkpoint) on the ImageFolder tree `train`, evaluating on
    `val` after every epoch; checkpoints, `config.json` and `log.jsonl` go to `out_dir` (rank 0 writes).

    Under torchrun each process calls this (the process group is set up here unless `ctx` is given).

    Args:
        train, val: ImageFolder trees `root/CLASS/image` with the same class folders in the same order.
        out_dir: the run folder (checkpoints, `config.json`, `log.jsonl`).
        config: the recipe (default `FinetuneConfig()`, the official ViT-L fine-tuning).
        pretrained: the MAE checkpoint whose encoder is fine-tuned (a fresh head); needed unless `resume` is given,
            and not used when it is (the run's own weights are).
        resume: a checkpoint or a run folder to continue after its epoch; the settings must be the run's own
            (`resumed_config`), but for `RESUMABLE_CHANGES`.
        train_transform: `train_transform(img, rng)` replaces the recipe's augmentation (default:
            `augment.TrainTransform`).
        on_progress: `on_progress(event, details)` hears "start", "epoch_start", "step", "eval", "epoch" (rank 0 only).
        ctx: this process's place in a run whose process group the caller set up (and tears down); its device is
            used, not `config.device`. Default: set up here from the torchrun environment on `config.device`.

    Returns a `FinetuneResult`: the run folder, this call's epoch records, the best val top-1 and the settings."""
    config = config or FinetuneConfig()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(resolve_device(config.device))
    try:
        return _finetune(Path(train), Path(val), Path(out_dir), config, pretrained, resume, train_transform,
                         on_progress, ctx)
    finally:
        if own_ctx:
            destroy(ctx)


def _finetune(train: Path, val: Path, out_dir: Path, config: FinetuneConfig, pretrained: Any, resume: Any,
              train_transform: TrainTransform | None, on_progress: Progress | None, ctx: DistContext) -> FinetuneResult:
    device, world = ctx.device, ctx.world_size
    notify = on_progress if (on_progress is not None and ctx.is_main) else (lambda *_: None)
    if pretrained is None and resume is None:
        raise invalid_argument("checkpoint", "fine-tuning needs a pre-trained checkpoint (or a run to resume)")
    guard_output(out_dir, [train, val, *(checkpoint_inputs(pretrained) if pretrained is not None else [])],
                 argument="out_dir")
    guard_run_folder(out_dir, resume is not None)
    train_source, val_source = labelled_folder(train, "train"), labelled_folder(val, "val")
    check_same_classes(train_source, val_source)
    classes = list(train_source.classes or [])
    if len(classes) < 2:
        raise invalid_argument("train", f"{train} holds {len(classes)} class folder ({', '.join(classes)}): a classifier "
                                        "learns nothing from one class (its loss is 0 and its top-1 100% whatever it "
                                        "does); give a tree with a folder per class, at least two")
    if config.num_classes is not None and config.num_classes != len(classes):
        raise invalid_argument("num_classes", f"num_classes={config.num_classes} but {train} has {len(classes)} class "
                                              "folders; leave it unset to take the folders' count")
    accum = _accumulation(config, len(train_source.paths), world)
    steps = steps_per_epoch(len(train_source.paths), config.batch_size, world)
    amp = resolve_amp(config.amp, device)
    workers = default_workers(device_type=device.type) if config.workers is None else config.workers
    lr = config.lr if config.lr is not None else config.blr * config.batch_size * accum * world / 256
    args = _run_args(config, classes=classes, world=world, accum=accum, lr=lr, amp=amp, device=device,
                     pretrained=None if pretrained is None else os.fspath(pretrained), train=os.fspath(train),
                     val=os.fspath(val), workers=workers)

    state = load_run_checkpoint(resume_file(resume)) if resume is not None else None
    if state is not None:
        _check_resume(state["args"], args)
        args["pretrained"] = state["args"].get("pretrained")
    model = _build_model(config, len(classes), pretrained if state is None else None, device)
    if state is not None:
        model.load_state_dict(state["model"])
    model.set_grad_checkpointing(config.grad_checkpointing)
    groups = param_groups_lrd(model, config.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                              layer_decay=config.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=config.betas)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    start, best = 0, -math.inf
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start, best = int(state["epoch"]) + 1, float(state.get("best", -math.inf))
        set_rng_state(state["rng"], device)
        if ctx.is_main:
            truncate_log(out_dir, start - 1)
    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if ctx.is_main:
        write_json(out_dir / CONFIG, args)
    notify("start", {**args, "start_epoch": start, "steps": steps, "train_images": len(train_source.paths),
                     "val_images": len(val_source.paths)})

    transform = train_transform or build_train_transform(config)
    dataset = TrainImages(train_source, transform, config.seed)
    criterion, mixup = build_criterion(config), config.augment.mixup_fn(len(classes))
    history: list[dict[str, Any]] = []
    for epoch in range(start, config.epochs):
        notify("epoch_start", {"epoch": epoch, "steps": steps})
        began = time.perf_counter()
        batches = epoch_batches(len(train_source.paths), config.batch_size, epoch=epoch, seed=config.seed,
                                rank=ctx.rank, world_size=world)
        batch_loader = loader(dataset, batches, workers=workers, pin_memory=device.type == "cuda")
        loss_mean, last_lr = train_epoch(net, model, batch_loader, optimizer, scaler, criterion, mixup, config, ctx,
                                          epoch=epoch, steps=steps, accum=accum, lr=lr, amp=amp, notify=notify)
        seconds = time.perf_counter() - began
        accuracy = evaluate_model(net, val_source, batch_size=config.eval_batch_size or config.batch_size,
                                  device=device, amp=amp, ctx=ctx, workers=workers,
                                  on_batch=lambda done, total: notify("eval", {"done": done, "total": total}))
        improved = accuracy.top1 > best
        best = max(best, accuracy.top1)
        record = {"epoch": epoch, "train_loss": loss_mean, "lr": last_lr, "val_loss": accuracy.loss,
                  "val_top1": accuracy.top1, "val_top5": accuracy.top5, "seconds": seconds,
                  "images_per_s": steps * config.batch_size * world / seconds, "best_top1": best}
        if ctx.is_main:
            if config.save_checkpoints:
                _save_epoch(out_dir, model, optimizer, scaler, args, epoch, best, improved, config.save_every, device)
            append_log(out_dir, record)
        history.append(record)
        notify("epoch", dict(record))
    return FinetuneResult(out_dir, history, best, args)


def _build_model(config: FinetuneConfig, classes: int, pretrained: Any, device: torch.device) -> VisionTransformer:
    """The classifier: the encoder from `pretrained` and a fresh head (trunc-normal std 2e-5), or a fresh model to
    load a resumed state into. The head's draw is seeded (and the global generator left as it was)."""
    vit = ViTConfig.from_architecture(config.model, num_classes=classes, drop_path_rate=config.drop_path,
                                      global_pool=config.global_pool, img_size=(config.input_size, config.input_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, "init"))
        if pretrained is None:
            return VisionTransformer(vit).to(device)
        return VisionTransformer.from_pretrained(pretrained, vit, device=device, head="fresh")


def train_epoch(net: nn.Module, model: VisionTransformer, batches: Any, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, criterion: nn.Module, mixup: Any, config: FinetuneConfig,
                 ctx: DistContext, *, epoch: int, steps: int, accum: int, lr: float, amp: str,
                 notify: Callable[[str, dict[str, Any]], None]) -> tuple[float, float]:
    """One epoch of `engine_finetune.train_one_epoch`; returns the mean loss (over steps, of the global batch
    means) and the last learning rate set.

    Args:
        net: what runs the forward and backward: `model`, or its `DistributedDataParallel` wrapper.
        model: the classifier itself (its parameters are the ones clipped).
        batches: this rank's `LabelledBatch`es of the epoch, in order (`labelled.loader`); an unreadable image on any
            rank stops the run.
        optimizer: the AdamW over `param_groups_lrd`; its learning rate is set every `accum` steps (times `lr_scale`).
        scaler: the gradient scaler (enabled for fp16 only).
        criterion: the loss (`build_criterion`).
        mixup: the mixup / cutmix function (`config.augment.mixup_fn`), or None.
        config: the recipe: `epochs`, `warmup_epochs`, `min_lr` (schedule), `clip_grad`, `seed` (keyed draws).
        ctx: this process's place in the run (its device, its rank in the keyed draws).
        epoch: the epoch, counted from 0.
        steps: the steps of an epoch (`steps_per_epoch`): the schedule's fraction and the mean's divisor.
        accum: micro-steps per optimiser step.
        lr: the peak learning rate of the schedule.
        amp: `off`, `bf16` or `fp16`, already resolved (`resolve_amp`).
        notify: called as `notify("step", details)` after each step.
    """
    device = ctx.device
    net.train()
    optimizer.zero_grad(set_to_none=True)
    losses, step_lr = 0.0, 0.0
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # drop path's draws are keyed per step; the caller's stream is kept
        # The loader is iterated as it is: the main process keeps its own torch threads whatever the number of
        # workers (`data.loader_batches` would lower them), since the thread count changes CPU sums in their last
        # bits, and a run resumed with other `workers` must continue bit for bit.
        for step, batch in enumerate(batches):
            if step % accum == 0:  # a per-iteration (not per-epoch) schedule, set at each accumulation start
                step_lr = cosine_lr(step / steps + epoch, lr=lr, epochs=config.epochs,
                                    warmup_epochs=config.warmup_epochs, min_lr=config.min_lr)
                apply_lr_scale(optimizer, step_lr)
            torch.manual_seed(derive_seed(config.seed, "step", epoch, step, ctx.rank))
            failed = len(batch.failures)
            images = batch.images.to(device, non_blocking=True)
            target = batch.labels.to(device, non_blocking=True)
            if mixup is not None and not failed:
                images, target = mixup(images, target, keyed_rng(config.seed, "mixup", epoch, step, ctx.rank))
            update = (step + 1) % accum == 0
            sync = update or not ctx.is_distributed
            with contextlib.nullcontext() if sync else net.no_sync():  # type: ignore[operator]
                loss = None
                if not failed:
                    with autocast(amp, device):
                        loss = criterion(net(images), target)
                # Read and checked between the forward and the backward, as `engine_finetune.py` does: every rank
                # learns of an unreadable image before the backward, whose gradient all-reduce it would block, and
                # a non-finite loss stops the run before the update. (Queuing the backward first made the bare step
                # 0.97x instead of 0.89x of plain PyTorch on an H200, but the whole command 0.72-0.74x instead of
                # 0.80x, so the official order stays; docs/benchmarks.md.)
                value = checked_loss(loss, failed, batch, ctx, epoch, step)
                scaler.scale(loss / accum).backward()
            if update:
                if config.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            losses += value
            notify("step", {"epoch": epoch, "step": step, "steps": steps, "loss": value, "lr": step_lr})
    return losses / steps, step_lr


def _save_epoch(out_dir: Path, model: VisionTransformer, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, args: dict[str, Any], epoch: int, best: float, improved: bool,
                save_every: int, device: torch.device) -> None:
    """The epoch's checkpoint (`util/misc.save_model` entries + rng + best). Written as `checkpoint-best.pth`
    first when val top-1 improved, then `checkpoint-last.pth` linked to it: a run killed in between repeats the
    epoch identically on resume."""
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
             "optimizer": optimizer.state_dict(), "epoch": epoch, "scaler": scaler_state(scaler), "args": args,
             "rng": rng_state(device), "best": best}
    if improved:
        save_checkpoint(out_dir / BEST, state)
        link_or_copy(out_dir / BEST, out_dir / LAST)
    else:
        save_checkpoint(out_dir / LAST, state)
    if save_every and (epoch + 1) % save_every == 0:
        link_or_copy(out_dir / LAST, out_dir / f"checkpoint-{epoch}.pth")

