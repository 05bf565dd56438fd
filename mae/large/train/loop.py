"""What every training step shares: the loss read across ranks between the forward and the backward, the stop on
an unreadable image or a non-finite loss, and the gradient scaler's state as the official files hold it."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..data.labelled import raise_on_failures
from ..errors import MAEError
from ..utils.distributed import DistContext

__all__ = ["checked_loss", "global_loss", "scaler_state"]


def checked_loss(loss: torch.Tensor | None, failed: int, batch: Any, ctx: DistContext, epoch: int, step: int) -> float:
    """The step's global loss (`global_loss`); raises for an unreadable image (on any rank) or a non-finite loss,
    as `engine_finetune.train_one_epoch` stops on one."""
    value = global_loss(loss, failed, ctx)
    if failed:
        raise_on_failures(batch)
    if value is None:
        raise MAEError(f"an image of epoch {epoch}, step {step} could not be read on another process; "
                       "its message names the file")
    if not math.isfinite(value):
        raise MAEError(f"the loss is {value} at epoch {epoch}, step {step}: training diverged; lower the "
                       "learning rate (blr) or clip gradients (clip_grad), then resume from the last epoch")
    return value


def global_loss(loss: torch.Tensor | None, failed: int, ctx: DistContext) -> float | None:
    """The mean loss over every rank's batch (the official `all_reduce_mean`); None when some rank could not
    read an image (every rank stops together instead of waiting for the one that failed)."""
    value = loss.detach().float() if loss is not None else torch.zeros((), device=ctx.device)
    if not ctx.is_distributed:
        return None if failed else float(value)
    import torch.distributed as dist

    stats = torch.stack([value, torch.tensor(float(failed), device=value.device)])
    dist.all_reduce(stats)
    total, failures = stats.tolist()
    return None if failures else total / ctx.world_size


def scaler_state(scaler: torch.amp.GradScaler) -> dict[str, Any]:
    """The scaler's state; a disabled one (bf16, fp32) saves a fresh scaler's, not `{}`, so that the official
    `util/misc.load_model` (which loads `checkpoint["scaler"]` into an enabled scaler) can resume the file too."""
    return scaler.state_dict() if scaler.is_enabled() else torch.amp.GradScaler("cpu", enabled=True).state_dict()
