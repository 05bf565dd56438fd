"""utils.optim: the cosine schedule bit for bit as the official `util/lr_sched.adjust_learning_rate` computes it."""

from __future__ import annotations

import itertools
import math

from mae.large.utils.optim import cosine_lr


def official_lr(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """facebookresearch/mae `util/lr_sched.py`, `adjust_learning_rate`, the expression as written there."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_the_schedule_is_the_official_expression_bit_for_bit() -> None:
    checked = differs = 0
    for lr, min_lr, warmup, epochs in itertools.product((5e-4, 1e-3, 1.5e-4 * 16, 0.1), (0.0, 1e-6, 1e-5),
                                                         (0, 0.4, 1, 5, 40), (5, 50, 90, 800)):
        if warmup >= epochs:
            continue
        steps = 6
        for i in range(epochs * steps):
            epoch = i / steps + 0  # the fractional epoch `data_iter_step / len(data_loader) + epoch`
            ours = cosine_lr(epoch, lr=lr, epochs=epochs, warmup_epochs=warmup, min_lr=min_lr)
            assert ours == official_lr(epoch, lr, min_lr, warmup, epochs), (lr, min_lr, warmup, epochs, epoch)
            checked += 1
            if epoch >= warmup:  # the other grouping gives another last bit somewhere on this grid
                other = min_lr + (lr - min_lr) * 0.5 * (1. + math.cos(math.pi * ((epoch - warmup) / (epochs - warmup))))
                differs += other != ours
    assert checked > 10_000 and differs > 0


def test_the_case_that_differed_by_one_ulp() -> None:
    # lr 5e-4, min_lr 1e-5, warm-up 0.4, 5 epochs, epoch 11/6: the grouping `pi * ((e - w) / (E - w))` is one ulp off.
    epoch = 11 / 6
    assert cosine_lr(epoch, lr=5e-4, epochs=5, warmup_epochs=0.4, min_lr=1e-5) == official_lr(epoch, 5e-4, 1e-5, 0.4, 5)
