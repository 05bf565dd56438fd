"""The training loop every recipe shares (fine-tuning, pre-training), in the official engines' order of operations.

`engine_finetune.train_one_epoch` and `engine_pretrain.train_one_epoch` (facebookresearch/mae) are one loop:
`optimizer.zero_grad()` once before the epoch; every `accum` micro-steps the learning rate is set by the half-cycle
cosine with warm-up at the fractional epoch `step / steps + epoch` (`util/lr_sched.adjust_learning_rate`, times each
group's `lr_scale`); the recipe's loss under autocast; the loss read (and checked) between the forward and the
backward; `loss / accum` backward through the gradient scaler; on the last micro-step of an accumulation the scaler
unscales, the gradients are clipped when asked, the optimiser steps and `optimizer.zero_grad()` follows. A non-finite
loss stops the run before the update (the official code exits). A recipe (`Recipe`) brings the batches of an epoch
and the loss of a batch; everything else is here.

What the official engines lack: every random draw of a step is keyed (`derive_seed(seed, "step", epoch, step,
rank)`), so a run resumed from any update repeats an uninterrupted one bit for bit on the CPU; a stop request
(`stop`, the CLI's SIGTERM / SIGUSR1 / Ctrl-C) ends the run at the next update with a mid-epoch checkpoint
(`RunStopped`), which `resume` continues from that very step; under torchrun every rank agrees on the step (the flag
rides on the loss's all-reduce, the one host sync per step the official loop has).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..data.labelled import steps_per_epoch
from ..errors import MAEError, invalid_argument
from ..models.layers import compile_blocks
from ..utils.compile import CompileOptions, CompileWatch
from ..utils.device import autocast
from ..utils.distributed import DistContext
from ..utils.keyed import derive_seed
from ..utils.optim import cosine_lr, set_lr
from .state import BEST, LAST, link_or_copy, rng_state, save_checkpoint, set_rng_state

__all__ = ["EpochResult", "LoopConfig", "Position", "Recipe", "RunStopped", "Trainer", "accumulation", "compile_model",
           "global_loss", "scaler_state", "train_epoch"]

Notify = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs of a recipe's settings."""

    epochs: int
    steps: int  # micro-steps of an epoch (global batches): the schedule's fraction and the mean's divisor
    accum: int  # micro-steps per optimiser update
    lr: float  # the schedule's peak
    warmup_epochs: float
    min_lr: float
    clip_grad: float | None
    amp: str  # off | bf16 | fp16, resolved (`utils.device.resolve_amp`)
    seed: int
    compile: bool = False  # the model's blocks are compiled (`compile_model`): the compile time is a "compile" event


class Recipe(Protocol):
    """What a recipe brings to the loop: its data and its loss."""

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """This rank's batches of `epoch` from micro-step `start` on, in order."""
        ...

    def loss(self, net: nn.Module, batch: Any, epoch: int, step: int) -> torch.Tensor:
        """The batch's loss (a scalar), computed by `net` (the model or its DDP wrapper) under the run's autocast."""
        ...

    def failures(self, batch: Any) -> int:
        """How many inputs of the batch could not be read (the run stops on them)."""
        ...

    def raise_failures(self, batch: Any) -> None:
        """Raise the error naming the batch's unreadable inputs."""
        ...


@dataclass(frozen=True)
class EpochResult:
    """An epoch's mean loss (over its steps, of the global batch means), the last learning rate set, and whether a
    stop was asked for at its last update."""

    loss: float
    lr: float
    stop: bool = False


@dataclass(frozen=True)
class Position:
    """Where a run is: `step` micro-steps of `epoch` done (0: at its start), their summed loss and seconds."""

    epoch: int
    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0


class RunStopped(MAEError):
    """A stop was requested: the run ended at an update and wrote a checkpoint to resume from (`path`)."""

    def __init__(self, message: str, position: Position, path: Path | None) -> None:
        super().__init__(message)
        self.position, self.path = position, path


class _Stop(Exception):
    def __init__(self, position: Position) -> None:
        self.position = position


def accumulation(batch_size: int, accum_iter: int | None, effective_batch: int, images: int, world: int, *,
                 mixup: bool = False, steps: int | None = None) -> int:
    """The micro-steps per update (`accum_iter`, or `effective_batch` / (batch x processes)), checked against the
    data (and, with `mixup`, an even batch): a refusal names the settings that would work. `steps`: the epoch's steps
    when they are not whole global batches of the images (a stream source's, `labelled.epoch_steps`)."""
    per_step = batch_size * world  # images per micro-step, all processes together
    accum = accum_iter
    if accum is None:
        accum, rest = divmod(effective_batch, per_step)
        if accum < 1 or rest:
            fits = [b for b in range(1, effective_batch // world + 1) if effective_batch % (b * world) == 0]
            near = sorted(fits, key=lambda b: (abs(b - batch_size), b))[:2]
            raise invalid_argument("batch_size", f"the effective batch {effective_batch} is not a multiple of "
                                   f"batch size {batch_size} x {world} processes; choose batch_size="
                                   f"{' or '.join(map(str, sorted(near)))}, or another effective_batch, or set accum_iter")
    steps = steps_per_epoch(images, batch_size, world) if steps is None else steps
    if steps < accum:
        most = steps * per_step  # the largest effective batch one epoch of these images holds at this batch size
        how = (f"use effective_batch={most} or less (accum_iter={steps} at this batch size)"
               if accum_iter is None and steps else
               f"use accum_iter={steps} or less" if steps else
               f"use batch_size={max(1, images // world)} or less (the data hold no full batch of {batch_size})")
        raise invalid_argument("effective_batch" if accum_iter is None else "accum_iter",
                               f"{images} training images make {steps} steps of batch {batch_size} x {world} "
                               f"process(es) per epoch, fewer than the {accum} micro-steps of one update (accum_iter="
                               f"{accum}, effective batch {accum * per_step}); {how}")
    if mixup and batch_size % 2:
        even = [b for b in (batch_size - 1, batch_size + 1) if b > 0]
        raise invalid_argument("batch_size", f"mixup / cutmix mix each image with its mirror in the batch, so batch size "
                               f"{batch_size} must be even; use batch_size={' or '.join(map(str, even))} (with an "
                               "effective_batch it divides), or turn both off with mixup=0 and cutmix=0")
    return accum


def global_loss(loss: torch.Tensor | None, failed: int, ctx: DistContext, stop: bool = False) -> tuple[float | None, bool]:
    """The mean loss over every rank's batch (the official `all_reduce_mean`), None when some rank could not read an
    image (every rank stops together instead of waiting for the one that failed); and whether any rank asks to stop."""
    value = loss.detach().float() if loss is not None else torch.zeros((), device=ctx.device)
    if not ctx.is_distributed:
        return (None if failed else float(value)), stop
    import torch.distributed as dist

    stats = torch.stack([value, torch.tensor(float(failed), device=value.device),
                         torch.tensor(float(stop), device=value.device)])
    dist.all_reduce(stats)
    total, failures, stops = stats.tolist()
    return (None if failures else total / ctx.world_size), stops > 0


def scaler_state(scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """The scaler's state; a disabled one (bf16, fp32) saves a fresh scaler's, not `{}`, so that the official
    `util/misc.load_model` (which loads `checkpoint["scaler"]` into an enabled scaler) can resume the file too."""
    return scaler.state_dict() if scaler.is_enabled() else torch.amp.GradScaler("cpu", enabled=True).state_dict()


def compile_model(model: nn.Module) -> Callable[[], None]:
    """The training step through `torch.compile`: the model's transformer blocks compiled in place
    (`layers.compile_blocks`: a forward and a backward graph per block shape, static shapes, since a run's micro-batches
    all have the batch size); the rest of the step (patch projection, masking, loss, optimiser) stays eager. A DDP
    wrapper around the model is unchanged: its gradient hooks fire block by block as before, so the all-reduce still
    overlaps the backward. Returns what undoes it; the run's evaluation and monitoring run eagerly (`utils.compile.eager`),
    at their own shapes."""
    return compile_blocks(model, CompileOptions())


def train_epoch(net: nn.Module, model: nn.Module, recipe: Recipe, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, loop: LoopConfig, ctx: DistContext, *, epoch: int,
                start: Position | None = None, notify: Notify = lambda *_: None,
                stop: Callable[[], bool] = lambda: False) -> EpochResult:
    """One epoch of the official engines' `train_one_epoch`: its mean loss and last learning rate (`EpochResult`).

    Args:
        net: what runs the forward and backward: `model`, or its `DistributedDataParallel` wrapper.
        model: the model itself (its parameters are the ones clipped).
        recipe: the batches and the loss (`Recipe`).
        optimizer: its groups' learning rates are set every `loop.accum` micro-steps (times a group's `lr_scale`).
        scaler: the gradient scaler (enabled for fp16 only).
        loop: the schedule, accumulation, clipping, precision and seed of the run.
        ctx: this process's place in the run (its device, its rank in the keyed draws).
        epoch: the epoch, counted from 0.
        start: where a resumed run stopped in this epoch (its step, summed loss and seconds; default the start).
        notify: called as `notify("step", details)` after each micro-step, and `notify("compile", details)` (seconds,
            graphs, a line of text) after one that compiled, when `loop.compile` says the net is compiled.
        stop: polled after each update; True on any rank ends the epoch there (`_Stop` with the position; at the
            epoch's last update the epoch completes and `EpochResult.stop` says so).
    """
    device = ctx.device
    start = start or Position(epoch)
    net.train()
    optimizer.zero_grad(set_to_none=True)
    losses, step_lr, stopping = start.loss_sum, 0.0, False
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    watch = CompileWatch() if loop.compile else None
    with torch.random.fork_rng(devices=cuda):  # a step's draws are keyed; the caller's stream is kept
        # The loader is iterated as it is: the main process keeps its own torch threads whatever the number of
        # workers, since the thread count changes CPU sums in their last bits and a run resumed with other `workers`
        # must continue bit for bit.
        for step, batch in enumerate(recipe.batches(epoch, start.step), start=start.step):
            if step % loop.accum == 0:  # a per-iteration (not per-epoch) schedule, set at each accumulation start
                step_lr = cosine_lr(step / loop.steps + epoch, lr=loop.lr, epochs=loop.epochs,
                                    warmup_epochs=loop.warmup_epochs, min_lr=loop.min_lr)
                set_lr(optimizer, step_lr)
            torch.manual_seed(derive_seed(loop.seed, "step", epoch, step, ctx.rank))
            failed = recipe.failures(batch)
            update = (step + 1) % loop.accum == 0
            sync = update or not ctx.is_distributed
            with contextlib.nullcontext() if sync else net.no_sync():  # type: ignore[operator]
                loss = None
                if not failed:
                    with autocast(loop.amp, device):
                        loss = recipe.loss(net, batch, epoch, step)
                # Read and checked between the forward and the backward, as the official engines do: every rank
                # learns of an unreadable image before the backward, whose gradient all-reduce it would block, and
                # a non-finite loss stops the run before the update. (Queuing the backward first made the bare
                # fine-tuning step 0.97x instead of 0.89x of plain PyTorch on an H200, but the whole command
                # 0.72-0.74x instead of 0.80x, so the official order stays; docs/benchmarks.md.)
                value, stopping = global_loss(loss, failed, ctx, update and stop())
                _check(value, failed, recipe, batch, epoch, step)
                scaler.scale(loss / loop.accum).backward()
            if update:
                if loop.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), loop.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            losses += value
            notify("step", {"epoch": epoch, "step": step, "steps": loop.steps, "loss": value, "lr": step_lr})
            compiled = watch.poll() if watch is not None else None
            if compiled is not None:  # the first step compiles the forward and, at its backward, the backward
                notify("compile", {"epoch": epoch, "step": step, "seconds": compiled.seconds, "graphs": compiled.graphs,
                                   "text": compiled.describe("the training step")})
            if stopping and step + 1 < loop.steps:
                raise _Stop(Position(epoch, step + 1, losses))
    return EpochResult(losses / loop.steps, step_lr, stopping)


def _check(value: float | None, failed: int, recipe: Recipe, batch: Any, epoch: int, step: int) -> None:
    """Stop on an unreadable image (on any rank) or a non-finite loss, as the official engines stop on one."""
    if failed:
        recipe.raise_failures(batch)
    if value is None:
        raise MAEError(f"an image of epoch {epoch}, step {step} could not be read on another process; "
                       "its message names the file")
    if not math.isfinite(value):
        raise MAEError(f"the loss is {value} at epoch {epoch}, step {step}: training diverged; lower the "
                       "learning rate (blr) or clip gradients (clip_grad), then resume from the last epoch")


class Trainer:
    """A run's state between epochs: the model, optimiser and scaler, the checkpoints it writes (rank 0), resume,
    and the stop request."""

    def __init__(self, model: nn.Module, net: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, loop: LoopConfig, ctx: DistContext, out_dir: Path, args: dict[str, Any],
                 *, save_checkpoints: bool = True, keep: Callable[[int], bool] = lambda epoch: False,
                 notify: Notify = lambda *_: None, stop: Callable[[], bool] = lambda: False) -> None:
        self.model, self.net, self.optimizer, self.scaler, self.loop, self.ctx = model, net, optimizer, scaler, loop, ctx
        self.out_dir, self.args, self.save_checkpoints, self.keep = out_dir, args, save_checkpoints, keep
        self.notify, self.stop = notify, stop

    @contextlib.contextmanager
    def generators(self) -> Iterator[None]:
        """The run's own generators: forked from the caller's (left as they were) and seeded by the run's seed, so the
        states a checkpoint carries, and a resumed run restores, are the same in any process."""
        device = self.ctx.device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(derive_seed(self.loop.seed, "run", self.ctx.rank))
            yield

    def restore(self, state: Mapping[str, Any]) -> Position:
        """Load a run checkpoint's optimiser, scaler and generators; where to go on from (`Position`)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.ctx.device)
        at = state.get("resume_at")
        if isinstance(at, Mapping):  # a mid-epoch checkpoint: that epoch, from that step
            return Position(int(at["epoch"]), int(at["step"]), float(at["loss_sum"]), float(at.get("seconds", 0.0)))
        return Position(int(state["epoch"]) + 1)

    def epoch(self, recipe: Recipe, start: Position, extra: Callable[[], dict[str, Any]]) -> EpochResult:
        """Train epoch `start.epoch` from `start`. On a stop request before its last update, rank 0 writes a mid-epoch
        `checkpoint-last.pth` (with `extra()`'s entries) and every rank raises `RunStopped`; at its last update the
        epoch completes (the caller saves it, then calls `stopped`)."""
        try:
            return train_epoch(self.net, self.model, recipe, self.optimizer, self.scaler, self.loop, self.ctx,
                               epoch=start.epoch, start=start, notify=self.notify, stop=self.stop)
        except _Stop as stopped:
            at = stopped.position
            path = None
            if self.ctx.is_main and self.save_checkpoints:
                # "epoch" is the last epoch done, as the official files say (the official `load_model` restarts at
                # the next one); `resume_at` says where this run goes on inside it.
                state = self._state(at.epoch - 1, extra())
                state["resume_at"] = {"epoch": at.epoch, "step": at.step, "loss_sum": at.loss_sum,
                                      "seconds": at.seconds}
                path = self.out_dir / LAST
                save_checkpoint(path, state)
            raise self.stopped(at, path) from None

    def stopped(self, at: Position, path: Path | None) -> RunStopped:
        """The error a stopped run ends with: where it stopped, and how to go on."""
        where = f"at epoch {at.epoch}, step {at.step} of {self.loop.steps}" if at.step else f"after epoch {at.epoch - 1}"
        saved = f"{path.name} holds it" if path else "no checkpoint was written (save_checkpoints is off)"
        return RunStopped(f"the run stopped as asked {where}; {saved}: resume='{self.out_dir}' goes on from there", at,
                          path)

    def save_epoch(self, epoch: int, extra: dict[str, Any], *, improved: bool = False) -> None:
        """The epoch's checkpoint (`util/misc.save_model` entries + rng + `extra`), rank 0 only: written as
        `checkpoint-best.pth` first when the recipe's measure improved, then `checkpoint-last.pth` linked to it (a run
        killed in between repeats the epoch identically on resume); `checkpoint-{epoch}.pth` where `keep(epoch)`."""
        if not (self.ctx.is_main and self.save_checkpoints):
            return
        state = self._state(epoch, extra)
        if improved:
            save_checkpoint(self.out_dir / BEST, state)
            link_or_copy(self.out_dir / BEST, self.out_dir / LAST)
        else:
            save_checkpoint(self.out_dir / LAST, state)
        if self.keep(epoch):
            link_or_copy(self.out_dir / LAST, self.out_dir / f"checkpoint-{epoch}.pth")

    def _state(self, epoch: int, extra: dict[str, Any]) -> dict[str, Any]:
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "epoch": epoch, "scaler": scaler_state(self.scaler),
                "args": self.args, "rng": rng_state(self.ctx.device), **extra}
