"""Fine-tuning an MAE encoder as a classifier: the official recipe (facebookresearch/mae `main_finetune.py`,
`engine_finetune.py`, FINETUNE.md for ViT-L) on current PyTorch, from one process to many nodes.

The loop is `trainer.py`'s, in `engine_finetune.train_one_epoch`'s order; this recipe brings its data (labelled
ImageFolder trees, `labelled`), its loss (mixup / cutmix on the batch, then the recipe's criterion) and its epoch
measure (val top-1, which decides `checkpoint-best.pth`). The optimiser is AdamW (0.9, 0.999) over
`vit.param_groups_lrd`; lr = blr x effective batch / 256 unless `lr` is given. Each epoch is evaluated, then saved
(the best checkpoint needs the val top-1).

What is this module's own: every random draw is keyed (`keyed.derive_seed`, `keyed.keyed_rng`; data order by epoch,
augmentation by epoch and sample, mixup and drop path by epoch, step and rank), so a resumed run repeats an
uninterrupted one bit for bit on the CPU, from an epoch or from the update where a stop request ended it; the data
order is defined on the global batch, so N processes see what one process with an N times larger batch sees; the
checkpoint is loadable with `weights_only=True`.
"""

from __future__ import annotations

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
    LabelledBatch,
    TrainImages,
    TrainTransform,
    epoch_plan,
    epoch_steps,
    labelled_source,
    loader,
    raise_on_failures,
    shared_classes,
    stream_settings,
)
from ..data.loader import default_workers
from ..errors import invalid_argument
from ..evaluate.accuracy import evaluate_model
from ..models.vit import VisionTransformer, ViTConfig, param_groups_lrd
from ..utils import cancel
from ..utils.compile import eager
from ..utils.device import AMP_CHOICES, resolve_amp, resolve_device
from ..utils.distributed import DistContext, destroy, init_distributed
from ..utils.keyed import derive_seed, keyed_rng
from ..utils.outputs import guard_output, guard_run_folder
from .scalars import scalars
from .state import (
    CONFIG,
    LAST,
    append_log,
    config_from_dict,
    load_run_checkpoint,
    plain,
    resume_file,
    truncate_log,
    write_json,
)
from .trainer import LoopConfig, Position, Trainer, accumulation, compile_model

Progress = Callable[[str, dict[str, Any]], None]  # (event, details), called on rank 0 only

# Settings that may change when a run is resumed without changing what it computes (or, for `epochs`, only
# the schedule's end, which is the point of extending a run).
RESUMABLE_CHANGES = frozenset({"epochs", "workers", "save_every", "save_checkpoints", "device", "eval_batch_size",
                               "compile"})


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
    compile: bool = False  # the training step through torch.compile (trainer.compile_model); evaluation stays eager
    seed: int = 0
    workers: int | None = None  # None: data.default_workers for the device
    save_every: int = 0  # also keep checkpoint-{epoch}.pth every N epochs; 0: only last and best
    save_checkpoints: bool = True  # False: config.json and log.jsonl only (sweeps, smoke runs)
    eval_batch_size: int | None = None  # None: batch_size
    device: str = "auto"
    image_column: str | None = None  # a data set's image column (parquet, arrow) or member extension (tar shards)
    label_column: str | None = None  # its label column, or the member extension / .json key of the label
    shuffle_buffer: int = 1000  # tar shards (a stream): the samples each reader shuffles among (`data.stream`)

    def __post_init__(self) -> None:
        positive = {"input_size": self.input_size, "epochs": self.epochs, "batch_size": self.batch_size,
                    "effective_batch": self.effective_batch, "shuffle_buffer": self.shuffle_buffer}
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
        if not isinstance(self.compile, bool):
            raise invalid_argument("compile", f"compile must be True or False, got {self.compile!r}")

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
        return config_from_dict(cls, data, ("betas",))

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
              device: torch.device, pretrained: str | None, train: str, val: str, workers: int,
              sources: dict[str, Any], stream: dict[str, int] | None) -> dict[str, Any]:
    return plain({
        "config": config.to_dict(), "architecture": config.model or catalog.DEFAULT_ARCHITECTURE,
        "num_classes": len(classes), "classes": classes, "world_size": world, "accum_iter": accum,
        "effective_batch": config.batch_size * accum * world, "lr": lr, "amp": amp, "device": str(device),
        "workers": workers, "pretrained": pretrained, "train": train, "val": val, "sources": sources, "stream": stream,
    })


def _check_resume(saved: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    """A resumed run must compute what the interrupted one computed: same settings (but `RESUMABLE_CHANGES`),
    same global batch, same classes."""
    defaults = FinetuneConfig().to_dict()  # a setting the run's version did not have was its default
    differs = [k for k, v in args["config"].items()
               if k not in RESUMABLE_CHANGES and saved["config"].get(k, defaults.get(k)) != v]
    if saved["effective_batch"] != args["effective_batch"] or saved["accum_iter"] != args["accum_iter"]:
        differs.append("effective batch (batch size x accum iter x processes)")
    if saved["classes"] != args["classes"]:
        differs.append("class folders")
    if saved.get("stream") != args["stream"]:  # a tar stream's order depends on the readers (`data.stream`)
        differs.append(f"stream readers (world size x workers: {(saved.get('stream') or {}).get('readers')} then, "
                       f"{(args['stream'] or {}).get('readers')} now)")
    if differs:
        raise invalid_argument("resume", f"the run being resumed used other settings ({', '.join(differs)}); resume "
                                         "with the run's own settings so it continues as it began (leave out the options that "
                                         "change them; in Python, resumed_config(run))")


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
    stop: Callable[[], bool] = cancel.requested,
) -> FinetuneResult:
    """Fine-tune the encoder of `pretrained` (an MAE checkpoint) on the labelled images `train`, evaluating on
    `val` after every epoch; checkpoints, `config.json` and `log.jsonl` go to `out_dir` (rank 0 writes).

    Under torchrun each process calls this (the process group is set up here unless `ctx` is given).

    Args:
        train, val: ImageFolder trees `root/CLASS/image` with the same class folders in the same order, or labelled
            data sets (`data.sources`: parquet, a `save_to_disk` folder, tar shards; `config.image_column` /
            `label_column` choose the columns), the same classes in the same order.
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
        stop: polled at every update (default: the process-wide request of `utils.cancel`, which the CLI sets on
            SIGTERM, SIGUSR1 or Ctrl-C): True ends the run there with a mid-epoch `checkpoint-last.pth` that `resume`
            continues from that step, and raises `trainer.RunStopped`.

    Returns a `FinetuneResult`: the run folder, this call's epoch records, the best val top-1 and the settings."""
    config = config or FinetuneConfig()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(resolve_device(config.device))
    try:
        return _finetune(Path(train), Path(val), Path(out_dir), config, pretrained, resume, train_transform,
                         on_progress, ctx, stop)
    finally:
        if own_ctx:
            destroy(ctx)


def _finetune(train: Path, val: Path, out_dir: Path, config: FinetuneConfig, pretrained: Any, resume: Any,
              train_transform: TrainTransform | None, on_progress: Progress | None, ctx: DistContext,
              stop: Callable[[], bool]) -> FinetuneResult:
    device, world = ctx.device, ctx.world_size
    notify = on_progress if (on_progress is not None and ctx.is_main) else (lambda *_: None)
    if pretrained is None and resume is None:
        raise invalid_argument("checkpoint", "fine-tuning needs a pre-trained checkpoint (or a run to resume)")
    columns = {"image_column": config.image_column, "label_column": config.label_column}
    train_source, val_source = labelled_source(train, "train", **columns), labelled_source(val, "val", **columns)
    data_files = [*train_source.origin.get("files", []), *val_source.origin.get("files", [])]
    guard_output(out_dir, [train, val, *data_files, *(checkpoint_inputs(pretrained) if pretrained is not None else [])],
                 argument="out_dir")
    guard_run_folder(out_dir, resume is not None)
    classes = shared_classes(train_source, val_source)
    if len(classes) < 2:
        raise invalid_argument("train", f"{train} holds {len(classes)} class folder ({', '.join(classes)}): a classifier "
                                        "learns nothing from one class (its loss is 0 and its top-1 100% whatever it "
                                        "does); give a tree with a folder per class, at least two")
    if config.num_classes is not None and config.num_classes != len(classes):
        raise invalid_argument("num_classes", f"num_classes={config.num_classes} but {train} has {len(classes)} class "
                                              "folders; leave it unset to take the folders' count")
    workers = default_workers(device_type=device.type) if config.workers is None else config.workers
    steps = epoch_steps(train_source, config.batch_size, world, workers)
    accum = accumulation(config.batch_size, config.accum_iter, config.effective_batch, len(train_source.paths), world,
                         mixup=config.mixup_active, steps=steps)
    amp = resolve_amp(config.amp, device)
    lr = config.lr if config.lr is not None else config.blr * config.batch_size * accum * world / 256
    args = _run_args(config, classes=classes, world=world, accum=accum, lr=lr, amp=amp, device=device,
                     pretrained=None if pretrained is None else os.fspath(pretrained), train=os.fspath(train),
                     val=os.fspath(val), workers=workers,
                     sources={"train": train_source.describe(), "val": val_source.describe()},
                     stream=stream_settings(train_source, world, workers, config.shuffle_buffer))

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
    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        compile_model(model)  # the run's own model: compiled for the run
    loop = LoopConfig(config.epochs, steps, accum, lr, config.warmup_epochs, config.min_lr, config.clip_grad, amp,
                      config.seed, compile=config.compile)
    trainer = Trainer(model, net, optimizer, scaler, loop, ctx, out_dir, args, save_checkpoints=config.save_checkpoints,
                      keep=lambda epoch: bool(config.save_every) and (epoch + 1) % config.save_every == 0,
                      notify=notify, stop=stop)
    # The run's own generator stream (a checkpoint's generator state is the same in any process); TensorBoard scalars.
    with trainer.generators(), scalars(out_dir, "finetune", accum, notify, enabled=ctx.is_main) as notify:
        trainer.notify = notify
        start, best = Position(0), -math.inf
        if state is not None:
            start, best = trainer.restore(state), float(state.get("best", -math.inf))
            if ctx.is_main:
                truncate_log(out_dir, start.epoch - 1)
        if ctx.is_main:
            write_json(out_dir / CONFIG, args)
        notify("start", {**args, "start_epoch": start.epoch, "steps": steps, "train_images": len(train_source.paths),
                         "val_images": len(val_source.paths)})

        recipe = _Recipe(TrainImages(train_source, train_transform or build_train_transform(config), config.seed),
                         build_criterion(config), config.augment.mixup_fn(len(classes)), config, ctx, workers)
        history: list[dict[str, Any]] = []
        for epoch in range(start.epoch, config.epochs):
            at = start if epoch == start.epoch else Position(epoch)
            notify("epoch_start", {"epoch": epoch, "steps": steps})
            began = time.perf_counter()
            result = trainer.epoch(recipe, at, lambda best=best: {"best": best})
            seconds = time.perf_counter() - began + at.seconds
            with eager():  # once an epoch, at other shapes: not worth graphs of its own
                accuracy = evaluate_model(net, val_source, batch_size=config.eval_batch_size or config.batch_size,
                                          device=device, amp=amp, ctx=ctx, workers=workers,
                                          on_batch=lambda done, total: notify("eval", {"done": done, "total": total}))
            improved = accuracy.top1 > best
            best = max(best, accuracy.top1)
            record = {"epoch": epoch, "train_loss": result.loss, "lr": result.lr, "val_loss": accuracy.loss,
                      "val_top1": accuracy.top1, "val_top5": accuracy.top5, "seconds": seconds,
                      "images_per_s": steps * config.batch_size * world / seconds, "best_top1": best}
            trainer.save_epoch(epoch, {"best": best}, improved=improved)
            if ctx.is_main:
                append_log(out_dir, record)
            history.append(record)
            notify("epoch", dict(record))
            if result.stop and epoch + 1 < config.epochs:
                raise trainer.stopped(Position(epoch + 1), out_dir / LAST if config.save_checkpoints else None)
        return FinetuneResult(out_dir, history, best, args)


class _Recipe:
    """Fine-tuning's data and loss for the shared loop: the keyed order and augmentation of `labelled`, mixup /
    cutmix keyed by (seed, epoch, step, rank), the recipe's criterion."""

    def __init__(self, dataset: TrainImages, criterion: nn.Module, mixup: Any, config: FinetuneConfig,
                 ctx: DistContext, workers: int) -> None:
        self.dataset, self.criterion, self.mixup, self.config, self.ctx, self.workers = (dataset, criterion, mixup,
                                                                                          config, ctx, workers)

    def batches(self, epoch: int, start: int) -> Any:
        batches = epoch_plan(self.dataset.source, self.config.batch_size, epoch=epoch, seed=self.config.seed,
                             rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.workers,
                             buffer=self.config.shuffle_buffer)
        return loader(self.dataset, batches[start:], workers=self.workers, pin_memory=self.ctx.device.type == "cuda")

    def loss(self, net: nn.Module, batch: LabelledBatch, epoch: int, step: int) -> torch.Tensor:
        images = batch.images.to(self.ctx.device, non_blocking=True)
        target = batch.labels.to(self.ctx.device, non_blocking=True)
        if self.mixup is not None:
            images, target = self.mixup(images, target, keyed_rng(self.config.seed, "mixup", epoch, step, self.ctx.rank))
        return self.criterion(net(images), target)

    def failures(self, batch: LabelledBatch) -> int:
        return len(batch.failures)

    def raise_failures(self, batch: LabelledBatch) -> None:
        raise_on_failures(batch)


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
