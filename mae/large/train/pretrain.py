"""Pre-training a masked autoencoder: the official recipe (facebookresearch/mae `main_pretrain.py`,
`engine_pretrain.py`, PRETRAIN.md for ViT-L) on a folder of the user's images, from scratch or continued.

The loop is `trainer.py`'s, in `engine_pretrain.train_one_epoch`'s order; this recipe brings the data (any images:
RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + ImageNet normalisation, keyed per sample and epoch),
the masking (the official `random_masking` with noise drawn from `derive_seed(seed, "mask", epoch, index)`, or the
paper's block / grid masks) and the loss (the model's: norm-pix by default, as PRETRAIN.md). AdamW (0.9, 0.95)
over timm 0.3.2's weight-decay groups (`pretrain_model.weight_decay_groups`); lr = blr x effective batch / 256.
After each epoch (rank 0): held-out losses at fixed masks, `preview.png`, `loss.png`, optionally k-NN top-1 of the
encoder, a `log.jsonl` line; `checkpoint-last.pth` every epoch and `checkpoint-{epoch}.pth` at epoch 0, every
`save_every` and at the end (the official rule). The checkpoint's `model` is an official-layout state dict.
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

from ..checkpoints.folders import checkpoint_inputs
from ..checkpoints.read import read_checkpoint
from ..config import MAEConfig
from ..data import augment
from ..data.labelled import (
    LabelledBatch,
    TrainImages,
    epoch_plan,
    epoch_steps,
    labelled_source,
    loader,
    raise_on_failures,
    stream_settings,
)
from ..data.loader import Source, default_workers
from ..data.sources import open_source
from ..errors import DatasetError, invalid_argument
from ..models.mae import check_mask_ratio
from ..models.masks import build_mask, parse_mask
from ..utils import cancel
from ..utils.compile import eager
from ..utils.device import AMP_CHOICES, resolve_amp, resolve_device
from ..utils.distributed import DistContext, destroy, init_distributed
from ..utils.keyed import derive_seed
from ..utils.outputs import guard_output, guard_run_folder
from . import monitor
from .pretrain_model import build_model, freeze_encoder, weight_decay_groups
from .scalars import scalars
from .state import CONFIG, LAST, append_log, config_from_dict, load_run_checkpoint, plain, resume_file, truncate_log, write_json
from .trainer import LoopConfig, Position, Trainer, accumulation, compile_model

__all__ = ["MASKS", "PretrainConfig", "PretrainResult", "pretrain", "resumed_pretrain_config"]

Progress = Callable[[str, dict[str, Any]], None]  # (event, details), called on rank 0 only
MASKS = ("random", "block", "grid")  # random: the official rule; block, grid: the paper's Figure 6 alternatives
RESUMABLE_CHANGES = frozenset({"epochs", "workers", "save_every", "save_checkpoints", "device", "preview_every",
                               "knn_every", "compile"})


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe. Defaults are the official ViT-L pre-training (PRETRAIN.md: 800 epochs, 40 warm-up, blr 1.5e-4,
    effective batch 4096, weight decay 0.05, mask ratio 0.75, norm_pix_loss; `main_pretrain.py` for the rest)."""

    model: str | None = None  # an architecture of catalog.ARCHITECTURES; None: catalog.DEFAULT_ARCHITECTURE (ViT-L)
    input_size: int = 224
    patch_size: int | None = None  # None: the architecture's (16); the encoder sizes below change `model`'s
    encoder_depth: int | None = None  # None: the architecture's (24 blocks)
    encoder_dim: int | None = None  # None: 1024
    encoder_heads: int | None = None  # None: 16
    decoder_depth: int | None = None  # None: the architecture's (8 blocks)
    decoder_dim: int | None = None  # None: 512
    decoder_heads: int | None = None  # None: 16
    target: str = "auto"  # auto (norm-pix, or a continued decoder's own), norm-pix, pixels
    mask: str = "random"
    mask_ratio: float = 0.75
    freeze_encoder: bool = False
    epochs: int = 800
    warmup_epochs: float = 40.0
    batch_size: int = 64  # per process and micro-step
    accum_iter: int | None = None  # None: effective_batch / (batch_size x world size)
    effective_batch: int = 4096
    lr: float | None = None  # None: blr x effective batch / 256
    blr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None  # official: no clipping
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop's area range
    amp: str = "auto"
    seed: int = 0
    workers: int | None = None
    save_every: int = 20  # checkpoint-{epoch}.pth at epoch 0, every N and the last (official: 20)
    save_checkpoints: bool = True
    preview_every: int = 1  # preview.png every N epochs (0: none)
    preview_images: int = 8
    knn_every: int = 0  # k-NN top-1 of the encoder every N epochs on `knn` trees (0: none)
    compile: bool = False  # the training step through torch.compile (trainer.compile_model); monitoring stays eager
    device: str = "auto"
    image_column: str | None = None  # a data set's image column (parquet, arrow) or member extension (tar shards)
    label_column: str | None = None  # the k-NN data's label column (pre-training itself uses no labels)
    shuffle_buffer: int = 1000  # tar shards (a stream): the samples each reader shuffles among (`data.stream`)

    def __post_init__(self) -> None:
        for name in ("input_size", "epochs", "batch_size", "effective_batch", "preview_images", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_argument(name, f"{name} must be a positive integer, got {value!r}")
        for name in ("accum_iter", "patch_size", "encoder_depth", "encoder_dim", "encoder_heads", "decoder_depth",
                     "decoder_dim", "decoder_heads", "workers"):
            value = getattr(self, name)
            least = 0 if name == "workers" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise invalid_argument(name, f"{name} must be an integer >= {least} or None, got {value!r}")
        for name in ("save_every", "preview_every", "knn_every"):
            if getattr(self, name) < 0:
                raise invalid_argument(name, f"{name} must be >= 0 (0: never), got {getattr(self, name)}")
        for name in ("warmup_epochs", "blr", "min_lr", "weight_decay"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise invalid_argument(name, f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise invalid_argument("lr", f"lr must be a finite number > 0 or None (blr x batch / 256), got {self.lr!r}")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise invalid_argument("clip_grad", f"clip_grad must be > 0 or None (no clipping), got {self.clip_grad!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise invalid_argument("mask_ratio", f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if self.mask not in MASKS:
            raise invalid_argument("mask", f"mask must be {', '.join(MASKS)}, got {self.mask!r}")
        if self.mask == "grid" and self.mask_ratio != 0.75:
            raise invalid_argument("mask_ratio", "the grid mask keeps one patch of each 2x2: its ratio is 0.75")
        if self.target not in ("auto", "norm-pix", "pixels"):
            raise invalid_argument("target", f"target must be auto, norm-pix or pixels, got {self.target!r}")
        if self.amp not in AMP_CHOICES:
            raise invalid_argument("amp", f"amp must be {', '.join(AMP_CHOICES)}, got {self.amp!r}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise invalid_argument("scale", f"scale must be 0 < min <= max <= 1, got {self.scale!r}")
        if not isinstance(self.compile, bool):
            raise invalid_argument("compile", f"compile must be True or False, got {self.compile!r}")

    def architecture(self) -> MAEConfig:
        """The masked autoencoder this run trains: the architecture's sizes, with the encoder and decoder sizes asked
        for (a run records it, and every command builds it again from the run's checkpoint)."""
        encoder = {k: v for k, v in (("patch_size", self.patch_size), ("depth", self.encoder_depth),
                                     ("embed_dim", self.encoder_dim), ("num_heads", self.encoder_heads)) if v is not None}
        decoder = {k: v for k, v in (("decoder_depth", self.decoder_depth), ("decoder_embed_dim", self.decoder_dim),
                                     ("decoder_num_heads", self.decoder_heads)) if v is not None}
        try:
            config = MAEConfig.from_architecture(self.model, img_size=(self.input_size, self.input_size), **encoder,
                                                 **decoder)
        except ValueError as exc:
            raise invalid_argument("model", f"the model asked for cannot be built: {exc}") from None
        return config.replace(name=config.architecture_name) if encoder else config

    def to_dict(self) -> dict[str, Any]:
        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainConfig:
        return config_from_dict(cls, data, ("betas", "scale"))

    def replace(self, **changes: Any) -> PretrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PretrainResult:
    """Where the run is, this call's epoch records and the settings it ran with."""

    run_dir: Path
    history: list[dict[str, Any]]
    args: dict[str, Any] = field(default_factory=dict)


def resumed_pretrain_config(path: str | os.PathLike[str], **changes: Any) -> PretrainConfig:
    """The settings of the pre-training run that wrote `path` (a checkpoint or a run folder), with `changes`."""
    state = load_run_checkpoint(resume_file(path))
    return PretrainConfig.from_dict(state["args"]["config"]).replace(**changes)


def pretrain(
    data: str | os.PathLike[str] | list[str | os.PathLike[str]] | None,
    out_dir: str | os.PathLike[str],
    config: PretrainConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    val: str | os.PathLike[str] | None = None,
    knn: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    resume: str | os.PathLike[str] | None = None,
    trust: bool = False,
    on_progress: Progress | None = None,
    ctx: DistContext | None = None,
    stop: Callable[[], bool] = cancel.requested,
) -> PretrainResult:
    """Pre-train (or continue pre-training) a masked autoencoder on the images of `data`; checkpoints, `config.json`,
    `log.jsonl`, `preview.png` and `loss.png` go to `out_dir` (rank 0 writes).

    Args:
        data: the training images: a folder (its sub-folders too: an ImageFolder tree's labels are not used), files, or
            a list file; None with `resume`: the run's own.
        out_dir: the run folder; one that holds a run is continued only with `resume`.
        config: the recipe (default `PretrainConfig()`, the official ViT-L pre-training).
        checkpoint: None to start from scratch (the official init), or a checkpoint to continue: a full one (encoder
            and decoder continue), or an encoder-only one (a fresh decoder); not used with `resume`.
        val: held-out images for the per-epoch losses and the preview (default: the training images, said so).
        knn: (train, val) labelled ImageFolder trees for the k-NN top-1 every `config.knn_every` epochs.
        resume: a checkpoint or a run folder to continue, from its epoch or from the update a stop request ended it
            at; the settings must be the run's own (`resumed_pretrain_config`), but for a few (`RESUMABLE_CHANGES`).
        trust: read a pickle checkpoint with `weights_only=False` (its pickle may run code).
        on_progress: `on_progress(event, details)` hears "start", "epoch_start", "step", "compile" (with
            `config.compile`: the compile time of the training step), "epoch" (rank 0 only).
        ctx: this process's place in a run whose process group the caller set up (default: set up here).
        stop: polled at every update (default `utils.cancel.requested`, set by the CLI on SIGTERM, SIGUSR1 or Ctrl-C):
            True ends the run there with a mid-epoch `checkpoint-last.pth` and raises `trainer.RunStopped`.
    """
    config = config or PretrainConfig()
    own_ctx = ctx is None
    ctx = ctx or init_distributed(resolve_device(config.device))
    try:
        return _pretrain(data, Path(out_dir), config, checkpoint, val, knn, resume, trust, on_progress, ctx, stop)
    finally:
        if own_ctx:
            destroy(ctx)


def _pretrain(data: Any, out_dir: Path, config: PretrainConfig, checkpoint: Any, val: Any, knn: Any, resume: Any,
              trust: bool, on_progress: Progress | None, ctx: DistContext, stop: Callable[[], bool]) -> PretrainResult:
    device, world = ctx.device, ctx.world_size
    notify = on_progress if (on_progress is not None and ctx.is_main) else (lambda *_: None)
    state = load_run_checkpoint(resume_file(resume)) if resume is not None else None
    if data is None and state is None:
        raise invalid_argument("data", "name the training images (or a run to resume, whose images are used)")
    if data is None:  # a resumed run trains on its own images
        data = state["args"]["data"]
        val = val if val is not None else state["args"].get("val")
    inputs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    source = _images(inputs, "data", config.image_column)
    held_source = _images([val], "val", config.image_column) if val else source
    columns = {"image_column": config.image_column, "label_column": config.label_column}
    knn_sources = (labelled_source(knn[0], "knn", **columns), labelled_source(knn[1], "knn", **columns)) \
        if knn and config.knn_every else None
    data_files = [f for s in (source, held_source, *(knn_sources or ())) for f in s.origin.get("files", [])]
    read = [*inputs, *([val] if val else []), *(knn or []), *data_files,
            *(checkpoint_inputs(checkpoint) if checkpoint else [])]
    guard_output(out_dir, read, argument="out_dir")
    guard_run_folder(out_dir, resume is not None)
    workers = default_workers(device_type=device.type) if config.workers is None else config.workers
    steps = epoch_steps(source, config.batch_size, world, workers)
    accum = accumulation(config.batch_size, config.accum_iter, config.effective_batch, len(source.paths), world,
                         steps=steps)
    amp = resolve_amp(config.amp, device)
    lr = config.lr if config.lr is not None else config.blr * config.batch_size * accum * world / 256

    stream = stream_settings(source, world, workers, config.shuffle_buffer)
    if state is not None:  # before the model is built: another size or architecture is a setting, not a crash
        _check_resume(state["args"], {"config": config.to_dict(), "world_size": world, "accum_iter": accum,
                                      "effective_batch": config.batch_size * accum * world, "stream": stream})
    start_from = None  # the checkpoint a new run starts from, read once (its recorded sizes, then its tensors)
    if state is None and checkpoint is not None:
        start_from = read_checkpoint(checkpoint, trust=trust)
        config = _sizes_of(start_from, config)
    arch = config.architecture()
    if config.mask != "grid":  # before the model is built: a ratio that leaves no patch visible on this grid
        check_mask_ratio(config.mask_ratio, arch.num_patches)
    started = build_model(arch, start_from, target=config.target, seed=config.seed,
                          device=device, trust=trust)
    model = started.model
    if state is not None:
        target = state["args"]["target"]
        model.norm_pix_loss = target == "norm-pix"
        model.load_state_dict(state["model"])
    else:
        target = started.target.target
    frozen = freeze_encoder(model) if config.freeze_encoder else 0
    args = {"config": config.to_dict(), "architecture": model.config.replace(norm_pix_loss=target == "norm-pix").to_dict(),
            "target": target, "world_size": world, "accum_iter": accum, "effective_batch": config.batch_size * accum * world,
            "lr": lr, "amp": amp, "device": str(device), "workers": workers, "start": started.start if state is None else
            state["args"]["start"], "checkpoint": os.fspath(checkpoint) if checkpoint and state is None else
            (state["args"].get("checkpoint") if state else None), "data": [os.fspath(p) for p in inputs],
            "val": os.fspath(val) if val else None, "frozen_encoder_tensors": frozen,
            "sources": {"data": source.describe(), **({"val": held_source.describe()} if val else {})},
            "stream": stream}
    optimizer = torch.optim.AdamW(weight_decay_groups(model, config.weight_decay), lr=lr, betas=config.betas)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    net: nn.Module = model
    if ctx.is_distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:  # the run's own model, compiled for the run; the held-out previews and k-NN run eagerly
        compile_model(model)
    loop = LoopConfig(config.epochs, steps, accum, lr, config.warmup_epochs, config.min_lr, config.clip_grad, amp,
                      config.seed, compile=config.compile)
    trainer = Trainer(model, net, optimizer, scaler, loop, ctx, out_dir, args, save_checkpoints=config.save_checkpoints,
                      keep=lambda epoch: (config.save_every and epoch % config.save_every == 0) or epoch + 1 == config.epochs,
                      notify=notify, stop=stop)
    # The run's own generator stream (a checkpoint's generator state is the same in any process); TensorBoard scalars.
    with trainer.generators(), scalars(out_dir, "pretrain", accum, notify, enabled=ctx.is_main) as notify:
        trainer.notify = notify
        start, records = Position(0), []  # records: the log's epochs before this call's (loss.png's curve)
        if state is not None:
            start = trainer.restore(state)
            if ctx.is_main:
                records = truncate_log(out_dir, start.epoch - 1)
        transform = augment.TrainTransform(config.input_size, config.scale, hflip=0.5, auto_augment=None, re_prob=0.0)
        recipe = _Recipe(TrainImages(source, transform, config.seed), model.config, config, ctx, workers)
        held = monitor.heldout_images(held_source, config.preview_images, model.config.img_size, model.config.num_patches,
                                      config.seed) if ctx.is_main else None
        if held is not None:  # before any update: the curve's starting point
            with eager():
                args["heldout_initial"] = (state["args"].get("heldout_initial") if state is not None else
                                           monitor.heldout_losses(model, held, config.mask_ratio, device, amp)[0])
                if knn_sources and state is None:  # the k-NN curve's starting point too
                    args["heldout_initial"]["knn_top1"] = monitor.knn_top1(model, *knn_sources, device)
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / CONFIG, args)
        notify("start", {**args, "start_epoch": start.epoch, "start_step": start.step, "steps": steps,
                         "images": len(source.paths), "notes": started.notes if state is None else [],
                         "heldout": os.fspath(val) if val else "the first training images"})
        history: list[dict[str, Any]] = []
        curve: list[tuple[float, float]] = []

        def on_step(event: str, info: dict[str, Any]) -> None:
            if event == "step":
                curve.append((info["epoch"] + (info["step"] + 1) / info["steps"], info["loss"]))
            notify(event, info)

        trainer.notify = on_step
        for epoch in range(start.epoch, config.epochs):
            at = start if epoch == start.epoch else Position(epoch)
            notify("epoch_start", {"epoch": epoch, "steps": steps})
            began = time.perf_counter()
            result = trainer.epoch(recipe, at, lambda: {})
            seconds = time.perf_counter() - began + at.seconds
            record = {"epoch": epoch, "train_loss": result.loss, "lr": result.lr, "seconds": seconds,
                      "images_per_s": steps * config.batch_size * world / seconds}
            if ctx.is_main and held is not None:
                with eager():  # once an epoch, at other shapes: not worth graphs of their own
                    losses, reconstruction = monitor.heldout_losses(model, held, config.mask_ratio, device, amp)
                    record.update(losses)
                    if config.preview_every and (epoch % config.preview_every == 0 or epoch + 1 == config.epochs):
                        record["preview"] = str(monitor.save_preview(model, held, reconstruction, out_dir, epoch))
                    if knn_sources and (epoch + 1) % config.knn_every == 0:
                        record["knn_top1"] = monitor.knn_top1(model, *knn_sources, device)
            trainer.save_epoch(epoch, {})
            if ctx.is_main:
                append_log(out_dir, record)
                records.append(record)
                monitor.save_loss_figure(out_dir, curve, records)
            history.append(record)
            notify("epoch", dict(record))
            if result.stop and epoch + 1 < config.epochs:
                raise trainer.stopped(Position(epoch + 1), out_dir / LAST if config.save_checkpoints else None)
        return PretrainResult(out_dir, history, args)


class _Recipe:
    """Pre-training's data and loss for the shared loop: keyed crops and flips (`labelled.TrainImages`), each image's
    mask keyed by (seed, epoch, sample), the model's own loss."""

    def __init__(self, dataset: TrainImages, arch: MAEConfig, config: PretrainConfig, ctx: DistContext,
                 workers: int) -> None:
        self.dataset, self.arch, self.config, self.ctx, self.workers = dataset, arch, config, ctx, workers
        self.spec = parse_mask(config.mask) if config.mask != "random" else None

    def batches(self, epoch: int, start: int) -> Any:
        batches = epoch_plan(self.dataset.source, self.config.batch_size, epoch=epoch, seed=self.config.seed,
                             rank=self.ctx.rank, world_size=self.ctx.world_size, workers=self.workers,
                             buffer=self.config.shuffle_buffer)
        return loader(self.dataset, batches[start:], workers=self.workers, pin_memory=self.ctx.device.type == "cuda")

    def masking(self, batch: LabelledBatch, epoch: int) -> dict[str, Any]:
        """Each image's masking, keyed by (seed, "mask", epoch, its sample index): the official noise (n, L) (the
        smallest kept), or the chosen kind's masks (n, L) bool."""
        assert batch.indices is not None
        keys = [derive_seed(self.config.seed, "mask", epoch, index) for index in batch.indices.tolist()]
        if self.spec is None:
            noise = torch.stack([torch.rand(self.arch.num_patches, generator=torch.Generator().manual_seed(key))
                                 for key in keys])
            return {"mask_ratio": self.config.mask_ratio, "noise": self._to_device(noise)}
        masks = torch.stack([build_mask(self.spec, self.arch.img_size, self.arch.patch_size,
                                        ratio=self.config.mask_ratio, seed=key) for key in keys])
        return {"mask": self._to_device(masks)}

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the run's device; on CUDA through pinned memory, so the copy waits for nothing (a copy
        from pageable memory would wait for the work queued before it: a host sync every step)."""
        if self.ctx.device.type != "cuda":
            return tensor.to(self.ctx.device)
        return tensor.pin_memory().to(self.ctx.device, non_blocking=True)

    def loss(self, net: nn.Module, batch: LabelledBatch, epoch: int, step: int) -> torch.Tensor:
        images = batch.images.to(self.ctx.device, non_blocking=True)
        return net(images, **self.masking(batch, epoch))[0]

    def failures(self, batch: LabelledBatch) -> int:
        return len(batch.failures)

    def raise_failures(self, batch: LabelledBatch) -> None:
        raise_on_failures(batch)


def _images(inputs: list[Any], name: str, image_column: str | None) -> Source:
    """The images of a run: every image under the folders (recursively), the files, a list file's, or a data set's
    (parquet, arrow, tar shards: `data.sources`; their labels are not used). A data set that lost samples (a
    truncated shard) is refused: the run does not go on without them."""
    source = open_source(inputs, recursive=True, image_column=image_column)
    if source.form in ("parquet", "arrow", "webdataset") and source.failures:
        more = f" (and {len(source.failures) - 1} more)" if len(source.failures) > 1 else ""
        raise DatasetError(f"{source.failures[0].reason}{more}; a training run needs every sample")
    if not len(source.paths):
        raise invalid_argument(name, f"{', '.join(map(str, inputs))} holds no readable image; give a folder of images")
    return dataclasses.replace(source, labels=None, classes=None, failures=[])


def _sizes_of(data: Any, config: PretrainConfig) -> PretrainConfig:
    """A run continued from a checkpoint of this tool's runs (`data`, read) has the model that run recorded (its
    encoder and decoder sizes), but for the sizes asked for; the run's settings then name them, so that `--resume`
    builds it again."""
    recorded = MAEConfig.from_run(data.run)
    if recorded is None:
        return config
    sizes = {"patch_size": recorded.patch_size, "encoder_depth": recorded.depth, "encoder_dim": recorded.embed_dim,
             "encoder_heads": recorded.num_heads, "decoder_depth": recorded.decoder_depth,
             "decoder_dim": recorded.decoder_embed_dim, "decoder_heads": recorded.decoder_num_heads}
    encoder = config.model is None and all(getattr(config, k) is None for k in sizes if k.startswith(("patch", "enc")))
    changes = {k: v for k, v in sizes.items() if getattr(config, k) is None and (encoder or k.startswith("decoder"))}
    return config.replace(**changes)


def _check_resume(saved: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    """A resumed run must compute what the interrupted one computed (but for `RESUMABLE_CHANGES`)."""
    ours, theirs = dict(args["config"]), dict(saved.get("config", {}))
    defaults = PretrainConfig().to_dict()  # a setting the run's version did not have was its default
    differs = sorted(k for k in set(ours) | set(theirs)
                     if k not in RESUMABLE_CHANGES and ours.get(k, defaults.get(k)) != theirs.get(k, defaults.get(k)))
    differs += [k for k in ("world_size", "accum_iter", "effective_batch") if saved.get(k) != args.get(k)]
    if saved.get("stream") != args.get("stream"):  # a tar stream's order depends on its readers (`data.stream`)
        differs.append(f"stream readers (world size x workers: {(saved.get('stream') or {}).get('readers')} then, "
                       f"{(args.get('stream') or {}).get('readers')} now)")
    if differs:
        raise invalid_argument("resume", f"the run being resumed used other settings ({', '.join(differs)}); resume "
                                         "with the run's own settings so it continues as it began (leave out the options that "
                                         "change them; in Python, resumed_pretrain_config(run))")


