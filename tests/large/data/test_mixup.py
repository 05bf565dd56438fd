"""Mixup / CutMix and the recipe's losses: the lambda distributions, the switch, the CutMix box, the targets."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from mae.large.data.mixup import (
    LabelSmoothingCrossEntropy,
    Mixup,
    SoftTargetCrossEntropy,
    cutmix_box,
    mixup_target,
    recipe_criterion,
)
from mae.large.errors import InvalidArgumentError


def beta_cdf(x: float, a: float, b: float, steps: int = 64) -> float:
    """The Beta(a, b) CDF by Simpson's rule after t = u^(1/a) (which removes the singularity at 0); the upper
    half through the symmetry of the mirrored distribution."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > 0.5:
        return 1.0 - beta_cdf(1.0 - x, b, a, steps)
    top = x ** a
    h = top / steps
    f = [(1.0 - (i * h) ** (1.0 / a)) ** (b - 1.0) / a for i in range(steps + 1)]
    integral = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    return integral / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))


def ks_statistic(sample: list[float], cdf) -> float:
    xs = sorted(sample)
    n = len(xs)
    return max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))


def test_beta_cdf_helper_is_right() -> None:  # the yardstick itself: uniform, and the symmetric median
    assert beta_cdf(0.3, 1.0, 1.0) == pytest.approx(0.3, abs=1e-6)
    assert beta_cdf(0.5, 0.8, 0.8) == pytest.approx(0.5, abs=1e-6)
    assert beta_cdf(0.1, 0.8, 0.8) == pytest.approx(beta_cdf(0.1, 0.8, 0.8, steps=4000), abs=1e-6)
    assert beta_cdf(0.25, 2.0, 1.0) == pytest.approx(0.0625, abs=1e-6)


def test_mixup_lambda_is_beta_08() -> None:
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=10)
    rng = random.Random(0)
    lams = [mix.sample(32, 32, rng).lam for _ in range(20000)]
    n = len(lams)
    mean = sum(lams) / n
    var = sum((v - mean) ** 2 for v in lams) / (n - 1)
    expected_var = 0.8 ** 2 / (1.6 ** 2 * 2.6)  # ab / ((a + b)^2 (a + b + 1))
    assert abs(mean - 0.5) < 5 * math.sqrt(expected_var / n)
    assert abs(var - expected_var) < 5 * 0.25 / math.sqrt(n)  # sd(var) <= sqrt(E(x - m)^4 / n) <= 1/4 / sqrt(n)
    # Kolmogorov-Smirnov on a sub-sample: 1.95 / sqrt(n) is the 0.1 % critical value.
    assert ks_statistic(lams[:3000], lambda x: beta_cdf(x, 0.8, 0.8)) < 1.95 / math.sqrt(3000)
    # ... and it would notice the wrong law (Beta(1, 1)).
    assert ks_statistic(lams, lambda x: x) > 2 * 1.95 / math.sqrt(n)


def test_switch_frequency_and_cutmix_lambda() -> None:
    mix = Mixup(num_classes=10)  # the recipe: mixup 0.8, cutmix 1.0, switch 0.5
    rng = random.Random(1)
    draws = [mix.sample(64, 64, rng) for _ in range(20000)]
    cut = [d for d in draws if d.cutmix]
    assert abs(len(cut) / len(draws) - 0.5) < 5 * math.sqrt(0.25 / len(draws))
    # CutMix's drawn lambda is Beta(1, 1), mixup's Beta(0.8, 0.8).
    assert ks_statistic([d.drawn_lam for d in cut[:3000]], lambda x: x) < 1.95 / math.sqrt(3000)
    mixed = [d.drawn_lam for d in draws if not d.cutmix][:3000]
    assert ks_statistic(mixed, lambda x: beta_cdf(x, 0.8, 0.8)) < 1.95 / math.sqrt(3000)


def test_cutmix_box_area_matches_lambda() -> None:
    mix = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=10)
    rng = random.Random(2)
    h, w = 64, 48
    inside = 0
    for _ in range(4000):
        d = mix.sample(h, w, rng)
        box = d.box
        assert d.cutmix and box is not None and 0 <= box.top <= box.bottom <= h and 0 <= box.left <= box.right <= w
        assert d.lam == pytest.approx(1.0 - box.area / (h * w))  # the correction: the area actually pasted
        cut_h, cut_w = int(h * math.sqrt(1 - d.drawn_lam)), int(w * math.sqrt(1 - d.drawn_lam))
        if box.top > 0 and box.bottom < h and box.left > 0 and box.right < w:  # not clipped by a border
            inside += 1
            assert (box.bottom - box.top, box.right - box.left) == (cut_h // 2 * 2, cut_w // 2 * 2)
            assert abs(box.area / (h * w) - (1 - d.drawn_lam)) <= 2 / h + 2 / w
        else:  # clipping only ever shrinks the box, so the corrected lambda grows
            assert d.lam >= d.drawn_lam - 2 / h - 2 / w
    assert 500 < inside < 3500


def test_cutmix_box_centre_is_uniform() -> None:
    rng = random.Random(3)
    boxes = [cutmix_box(100, 100, 0.99, rng) for _ in range(5000)]  # 10 x 10 boxes: the centre is (top + 5)
    centres = [b.top + 5 for b in boxes if b.top > 0 and b.bottom < 100]
    mean = sum(centres) / len(centres)
    assert abs(mean - 49.5) < 5 * math.sqrt((90 ** 2 / 12) / len(centres))


def test_mixed_pixels_and_targets() -> None:
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).contiguous()  # image i = i
    y = torch.tensor([0, 1, 2, 3])
    original = x.clone()
    for seed in range(40):
        mix = Mixup(num_classes=5, label_smoothing=0.1)
        mixed, target = mix(x, y, random.Random(seed))
        assert torch.equal(x, original)  # the input is not changed
        d = mix.sample(16, 16, random.Random(seed))  # the same draws again
        assert target.shape == (4, 5) and torch.allclose(target.sum(1), torch.ones(4))
        # By hand (timm/data/mixup.py `mixup_target`): smoothed one-hot rows, off = 0.1 / 5 = 0.02 and on =
        # 1 - 0.1 + 0.02 = 0.92; row i mixes its own class (weight lam) with its mirror's, class 3 - i (1 - lam).
        expected = [[0.02] * 5 for _ in range(4)]
        for i in range(4):
            for k in range(5):
                own = 0.92 if k == i else 0.02
                mirror = 0.92 if k == 3 - i else 0.02
                expected[i][k] = d.lam * own + (1 - d.lam) * mirror
        assert torch.allclose(target, torch.tensor(expected), rtol=0, atol=1e-6), (seed, d.lam)
        if d.cutmix:  # pixels from the mirror exactly in the box
            from_mirror = (mixed[:, 0] == x.flip(0)[:, 0]).sum(dim=(1, 2))
            assert torch.equal(from_mirror, torch.full((4,), d.box.area))
        else:
            assert torch.allclose(mixed, d.lam * x + (1 - d.lam) * x.flip(0))


def test_smoothing_values() -> None:
    y = torch.tensor([2, 0])
    t = mixup_target(y, 10, lam=1.0, smoothing=0.1)
    assert torch.allclose(t[0], torch.tensor([0.01, 0.01, 0.91, *[0.01] * 7]))
    t = mixup_target(y, 4, lam=0.3, smoothing=0.2)  # off 0.05, on 0.85; row 0 mixes class 2 (0.3) and 0 (0.7)
    assert torch.allclose(t[0], torch.tensor([0.7 * 0.85 + 0.3 * 0.05, 0.05, 0.3 * 0.85 + 0.7 * 0.05, 0.05]))
    assert torch.allclose(t.sum(1), torch.ones(2))


def test_no_mixing_when_prob_zero() -> None:
    mix = Mixup(prob=0.0, num_classes=3, label_smoothing=0.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mixed, target = mix(x, torch.tensor([1, 2]), random.Random(0))
    assert torch.equal(mixed, x) and torch.equal(target, F.one_hot(torch.tensor([1, 2]), 3).float())


def test_deterministic_and_global_state_free() -> None:
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6)
    mix = Mixup(num_classes=6)
    random.seed(1)
    torch.manual_seed(1)
    a = mix(x, y, random.Random(7))
    random.seed(2)
    torch.manual_seed(2)
    state = (random.getstate(), torch.get_rng_state())
    b = mix(x, y, random.Random(7))
    assert (random.getstate(), torch.get_rng_state().tolist()) == (state[0], state[1].tolist())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outs = {tuple(mix(x, y, random.Random(s))[1][0].tolist()) for s in range(10)}
    assert len(outs) > 5


def test_bad_input_is_refused() -> None:
    mix = Mixup(num_classes=3)
    with pytest.raises(InvalidArgumentError, match="even batch") as info:
        mix(torch.zeros(3, 3, 8, 8), torch.zeros(3, dtype=torch.long), random.Random(0))
    assert info.value.argument == "batch_size"
    with pytest.raises(InvalidArgumentError):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(InvalidArgumentError):
        Mixup(mode="elem")


def test_losses() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 10, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    soft = SoftTargetCrossEntropy()
    assert torch.allclose(soft(logits, F.one_hot(y, 10).float()), F.cross_entropy(logits, y))
    smooth = LabelSmoothingCrossEntropy(0.1)
    assert torch.allclose(smooth(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    # Soft-target CE on mixup's smoothed targets (no mixing) is label smoothing.
    assert torch.allclose(soft(logits, mixup_target(y, 10, 1.0, 0.1)), smooth(logits, y))
    with pytest.raises(InvalidArgumentError):
        LabelSmoothingCrossEntropy(1.0)


def test_recipe_criterion() -> None:
    assert isinstance(recipe_criterion(True, 0.1), SoftTargetCrossEntropy)
    picked = recipe_criterion(False, 0.1)
    assert isinstance(picked, LabelSmoothingCrossEntropy) and picked.smoothing == 0.1
    assert isinstance(recipe_criterion(False, 0.0), torch.nn.CrossEntropyLoss)
