"""Mixup / CutMix and the losses of the official fine-tuning recipe, every draw from a given `random.Random`.

Follows timm (huggingface/pytorch-image-models) v0.3.2, commit 6504a42832cb6687e3f595c37e003ea920268365, the
version `main_finetune.py` (facebookresearch/mae, commit efb2a80) pins: `timm/data/mixup.py` (`Mixup` in "batch"
mode, `rand_bbox`, `cutmix_bbox_and_lam`, `mixup_target`) and `timm/loss/cross_entropy.py`
(`SoftTargetCrossEntropy`, `LabelSmoothingCrossEntropy`); unchanged in timm's current main (v1.0.28+).

Batch mode, per batch: with probability `prob` mix at all; then CutMix with probability `switch_prob` (when both
are on), lambda ~ Beta(cutmix_alpha, cutmix_alpha) for CutMix, Beta(mixup_alpha, mixup_alpha) for Mixup. Each
image is mixed with its mirror in the batch (`x.flip(0)`: image i with image B-1-i). CutMix pastes a box whose
sides are sqrt(1 - lambda) of the image's, centred uniformly and clipped at the borders, and then lambda is
corrected to 1 - box area / image area (`correct_lam`). Targets: one-hot with label smoothing (off = smoothing
/ classes, on = 1 - smoothing + off), mixed with the same lambda.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import invalid_argument

__all__ = [
    "CutBox",
    "LabelSmoothingCrossEntropy",
    "MixDraw",
    "Mixup",
    "SoftTargetCrossEntropy",
    "cutmix_box",
    "mixup_target",
    "one_hot",
    "recipe_criterion",
]


def one_hot(target: torch.Tensor, num_classes: int, on_value: float = 1.0, off_value: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, num_classes) float32 rows of `off_value` with `on_value` at the class."""
    index = target.long().view(-1, 1)  # (B, 1)
    rows = torch.full((index.shape[0], num_classes), off_value, dtype=torch.float32, device=target.device)
    return rows.scatter_(1, index, on_value)


def mixup_target(target: torch.Tensor, num_classes: int, lam: float = 1.0, smoothing: float = 0.0) -> torch.Tensor:
    """Smoothed one-hot targets mixed with those of the mirrored batch: lam y + (1 - lam) y.flip(0)."""
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = one_hot(target, num_classes, on, off)
    y2 = one_hot(target.flip(0), num_classes, on, off)
    return y1 * lam + y2 * (1.0 - lam)


@dataclass(frozen=True)
class CutBox:
    """A CutMix box in pixel rows [top, bottom) and columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def cutmix_box(height: int, width: int, lam: float, rng: random.Random) -> CutBox:
    """timm's `rand_bbox` (no margin): sides int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)), centre uniform over the
    image, half-sides floored, clipped to the image (so the box can be smaller than asked near a border)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randrange(height), rng.randrange(width)
    return CutBox(
        top=min(max(cy - cut_h // 2, 0), height), bottom=min(max(cy + cut_h // 2, 0), height),
        left=min(max(cx - cut_w // 2, 0), width), right=min(max(cx + cut_w // 2, 0), width),
    )


@dataclass(frozen=True)
class MixDraw:
    """What one batch gets: `lam` (after the CutMix area correction; 1.0 when not mixed), whether CutMix was
    chosen, its box, and `drawn_lam` (the Beta draw before correction)."""

    lam: float
    cutmix: bool
    box: CutBox | None
    drawn_lam: float


class Mixup:
    """timm's `Mixup` in "batch" mode: `mixup(x, target, rng) -> (mixed x, soft targets)`.

    The input batch is left untouched (timm mixes in place); the result is a new tensor.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", label_smoothing: float = 0.1, num_classes: int = 1000,
                 correct_lam: bool = True) -> None:
        if mode != "batch":
            raise invalid_argument("mode", f"only the recipe's mode='batch' is implemented, got mode={mode!r}")
        if not (mixup_alpha >= 0 and cutmix_alpha >= 0 and (mixup_alpha > 0 or cutmix_alpha > 0)):
            raise invalid_argument("mixup_alpha", "mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (and neither "
                                   f"negative), got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= value <= 1.0:
                raise invalid_argument(name, f"{name} is a probability in [0, 1], got {name}={value}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise invalid_argument("num_classes", f"num_classes must be a positive integer, got {num_classes!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.mode = mode
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes
        self.correct_lam = correct_lam

    def sample(self, height: int, width: int, rng: random.Random) -> MixDraw:
        """The draws of one batch (timm's `_params_per_batch` then `cutmix_bbox_and_lam`)."""
        if not rng.random() < self.prob:
            return MixDraw(1.0, False, None, 1.0)
        both = self.mixup_alpha > 0 and self.cutmix_alpha > 0
        use_cutmix = rng.random() < self.switch_prob if both else self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = rng.betavariate(alpha, alpha)
        if lam == 1.0:  # timm returns before drawing a box: nothing is mixed
            return MixDraw(1.0, False, None, lam)
        if not use_cutmix:
            return MixDraw(lam, False, None, lam)
        box = cutmix_box(height, width, lam, rng)
        corrected = 1.0 - box.area / float(height * width) if self.correct_lam else lam
        return MixDraw(corrected, True, box, lam)

    def __call__(self, x: torch.Tensor, target: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W), target (B,) class indices -> (mixed x, (B, num_classes) float32 soft targets)."""
        if x.dim() != 4:
            raise invalid_argument("x", f"mixup expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[0] % 2 != 0:
            raise invalid_argument("batch_size", f"mixup / cutmix needs an even batch size (each image is mixed "
                                   f"with its mirror in the batch), got a batch of {x.shape[0]}")
        if target.shape != (x.shape[0],):
            raise invalid_argument("target", f"target must be ({x.shape[0]},) class indices, got {tuple(target.shape)}")
        draw = self.sample(x.shape[-2], x.shape[-1], rng)
        if draw.lam == 1.0 and not draw.cutmix:
            mixed = x.clone()
        elif draw.cutmix:
            assert draw.box is not None
            b = draw.box
            mixed = x.clone()
            mixed[:, :, b.top:b.bottom, b.left:b.right] = x.flip(0)[:, :, b.top:b.bottom, b.left:b.right]
        else:
            mixed = x * draw.lam + x.flip(0) * (1.0 - draw.lam)  # same rounding as timm's mul_ / add_
        return mixed, mixup_target(target, self.num_classes, draw.lam, self.label_smoothing)

    def __repr__(self) -> str:
        return (f"Mixup(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, prob={self.prob}, "
                f"switch_prob={self.switch_prob}, mode={self.mode!r}, label_smoothing={self.label_smoothing}, "
                f"num_classes={self.num_classes})")


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets: mean over the batch of sum_k -target_k log_softmax(x)_k."""

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sum(-target * F.log_softmax(x, dim=-1), dim=-1).mean()


class LabelSmoothingCrossEntropy(nn.Module):
    """timm's label-smoothing loss on class indices: (1 - s) NLL + s x the mean of -log_softmax over classes."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise invalid_argument("smoothing", f"smoothing must be in [0, 1), got smoothing={smoothing}")
        self.smoothing = float(smoothing)
        self.confidence = 1.0 - self.smoothing

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logprobs = F.log_softmax(x, dim=-1)
        nll = -logprobs.gather(dim=-1, index=target.long().unsqueeze(1)).squeeze(1)  # (B,)
        smooth = -logprobs.mean(dim=-1)  # (B,)
        return (self.confidence * nll + self.smoothing * smooth).mean()

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


def recipe_criterion(mixup_active: bool, smoothing: float) -> nn.Module:
    """The loss `main_finetune.py` picks: soft-target CE with mixup / cutmix (the smoothing is in the targets),
    else label smoothing when `smoothing` > 0, else plain cross-entropy."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing)
    return nn.CrossEntropyLoss()
