"""The linear probe's optimiser and learning-rate schedule, as the official MAE code defines them.

`LARS` follows facebookresearch/mae `util/lars.py` (itself from MoCo v3): SGD with momentum where every
parameter of more than one dimension (a weight matrix) gets weight decay added to its gradient and the
update rescaled by the trust ratio `trust_coefficient * ||p|| / ||update||` (1 where either norm is 0);
parameters of one dimension or fewer (biases, normalisation scales) get neither, only momentum.
The momentum buffer takes the rescaled update without dampening: `mu = momentum * mu + update`,
`p -= lr * mu`.

`cosine_lr` follows `util/lr_sched.adjust_learning_rate`: a linear warmup from 0 over `warmup_epochs`,
then a half-cycle cosine down to `min_lr`, evaluated per iteration at the fractional epoch
`epoch + step / steps_per_epoch` (as `engine_finetune.train_one_epoch` calls it).

Both are written from the published description, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..errors import invalid_argument


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling; no weight decay and no trust ratio for parameters of <= 1 dimension."""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum),
                            ("trust_coefficient", trust_coefficient)):
            if not math.isfinite(value) or value < 0:
                raise invalid_argument(name, f"{name}={value!r} must be a finite number >= 0; pass one")
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "trust_coefficient": trust_coefficient}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:  # a weight matrix: decay, then scale to the trust ratio
                    update = update.add(param, alpha=group["weight_decay"])
                    weight_norm = torch.linalg.vector_norm(param)
                    update_norm = torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * weight_norm / update_norm
                    usable = (weight_norm > 0) & (update_norm > 0)
                    update = update * torch.where(usable, ratio, torch.ones_like(ratio))
                state = self.state[param]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(param)
                buffer = state["mu"]
                buffer.mul_(group["momentum"]).add_(update)
                param.add_(buffer, alpha=-group["lr"])
        return loss


def cosine_lr(epoch: float, *, lr: float, epochs: int, warmup_epochs: float, min_lr: float = 0.0) -> float:
    """The learning rate at (fractional) `epoch`: linear warmup from 0 to `lr`, then half-cycle cosine to `min_lr`."""
    # The official expression, in the official order of operations (`util/lr_sched.adjust_learning_rate`):
    # `math.pi * (epoch - w) / (E - w)` is not `math.pi * ((epoch - w) / (E - w))` in its last bit.
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate (times its `lr_scale` where a group has one, as the official code does)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
