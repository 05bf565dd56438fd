"""RandAugment: the op list, the choice, the magnitude noise, the level rules, single ops against PIL by hand."""

from __future__ import annotations

import math
import random
from collections import Counter
from statistics import median

import numpy as np
import pytest
from PIL import Image

from mae.large.data.rand_augment import INCREASING_OPS, RAND_OPS, AugmentOp, apply_op, rand_augment_transform
from mae.large.errors import InvalidArgumentError

RECIPE = "rand-m9-mstd0.5-inc1"


def _image(seed: int = 0, size: tuple[int, int] = (12, 10)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_recipe_parses_to_timm_settings() -> None:
    ra = rand_augment_transform(RECIPE, {"img_mean": (124, 116, 104), "interpolation": "bicubic"})
    assert ra.op_names == INCREASING_OPS and len(INCREASING_OPS) == 15 and ra.num_layers == 2
    assert {(op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) for op in ra.ops} == {(0.5, 9.0, 0.5, 10.0)}
    assert {(op.fill, op.resample) for op in ra.ops} == {((124, 116, 104), Image.Resampling.BICUBIC)}
    assert set(INCREASING_OPS) - set(RAND_OPS) == {"PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing",
                                                    "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"}
    plain = rand_augment_transform("rand-n3-inc0", {})
    assert plain.op_names == RAND_OPS and plain.num_layers == 3 and plain.ops[0].magnitude == 10.0
    # hparams win over the string, as timm's setdefault
    assert rand_augment_transform("rand-mstd0.5", {"magnitude_std": 1.0}).ops[0].magnitude_std == 1.0


@pytest.mark.parametrize("bad, part", [("rand-m9-foo", "foo"), ("rand-mx", "mx"), ("auto-m9", "auto"),
                                       ("rand-q3", "q3"), ("rand-m9.5", "m9.5"), ("rand-p2", "p2")])
def test_parse_errors_name_the_part(bad: str, part: str) -> None:
    with pytest.raises(InvalidArgumentError, match=repr(part)) as info:
        rand_augment_transform(bad, {})
    assert info.value.argument == "auto_augment"


def test_op_choice_is_uniform_with_replacement() -> None:
    ra = rand_augment_transform(RECIPE, {})
    rng = random.Random(0)
    plans = [ra.sample(rng) for _ in range(6000)]
    counts = Counter(op.name for plan in plans for op, _ in plan)
    n = sum(counts.values())
    assert set(counts) == set(INCREASING_OPS)
    chi2 = sum((counts[k] - n / 15) ** 2 / (n / 15) for k in INCREASING_OPS)
    assert chi2 < 36.1  # the 0.1 % critical value of chi-square with 14 degrees of freedom
    same = sum(plan[0][0].name == plan[1][0].name for plan in plans) / len(plans)
    assert abs(same - 1 / 15) < 5 * math.sqrt((1 / 15) * (14 / 15) / len(plans))  # both picks can be the same op
    applied = sum(draw is not None for plan in plans for _, draw in plan) / n
    assert abs(applied - 0.5) < 5 * math.sqrt(0.25 / n)


def _magnitudes(config: str, count: int, seed: int) -> list[float]:
    op = rand_augment_transform(config, {}).ops[3]  # Rotate
    rng = random.Random(seed)
    return [d.magnitude for d in (op.sample(rng) for _ in range(count)) if d is not None]


def test_magnitude_noise_is_gaussian_std_half() -> None:
    m = _magnitudes("rand-m5-mstd0.5-inc1", 8000, 1)  # far from the clip: plain N(5, 0.5)
    n = len(m)
    mean = sum(m) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in m) / (n - 1))
    assert abs(mean - 5) < 5 * 0.5 / math.sqrt(n)
    assert abs(std - 0.5) < 5 * 0.5 / math.sqrt(2 * n)
    m = sorted(_magnitudes(RECIPE, 8000, 2))  # N(9, 0.5) clipped to [0, 10]
    n = len(m)
    assert max(m) == 10.0 and min(m) > 6.5
    tail = 0.5 * math.erfc(2 / math.sqrt(2))  # P(N(9, 0.5) > 10) = 2.3 %
    assert abs(m.count(10.0) / n - tail) < 5 * math.sqrt(tail * (1 - tail) / n)
    # The clip leaves the median and the quartiles alone: 9 and 9 +- 0.674 x 0.5.
    assert abs(median(m) - 9) < 0.05
    iqr = m[3 * n // 4] - m[n // 4]
    assert abs(iqr - 2 * 0.6745 * 0.5) < 0.06


def test_no_noise_without_mstd() -> None:
    assert set(_magnitudes("rand-m7-inc1", 200, 3)) == {7.0}


@pytest.mark.parametrize("name, args", [
    ("Rotate", {27.0, -27.0}), ("ShearX", {0.27, -0.27}), ("TranslateYRel", {0.405, -0.405}),
    ("ColorIncreasing", {1.81, 0.19}), ("PosterizeIncreasing", {1}), ("SolarizeIncreasing", {26}),
    ("SolarizeAdd", {99}), ("Equalize", {None}), ("Color", {1.72}), ("Posterize", {3}), ("Solarize", {230}),
])
def test_level_rules_at_magnitude_9(name: str, args: set) -> None:
    op = AugmentOp(name, prob=1.0, magnitude=9.0)
    rng = random.Random(4)
    seen = {d.arg if not isinstance(d.arg, float) else round(d.arg, 6) for d in (op.sample(rng) for _ in range(200))}
    assert seen == args


def test_signs_are_even() -> None:
    op = AugmentOp("Rotate", prob=1.0, magnitude=9.0)
    rng = random.Random(5)
    n = 4000
    negative = sum(op.sample(rng).arg < 0 for _ in range(n))
    assert abs(negative / n - 0.5) < 5 * math.sqrt(0.25 / n)


def test_random_resampling_without_an_interpolation() -> None:
    op = rand_augment_transform("rand-m9", {}).ops[3]
    rng = random.Random(6)
    filters = Counter(d.resample for d in (op.sample(rng) for _ in range(2000)) if d is not None)
    assert set(filters) == {Image.Resampling.BILINEAR, Image.Resampling.BICUBIC}


def test_single_ops_by_hand() -> None:
    img = _image()
    a = np.asarray(img).astype(int)
    assert np.array_equal(np.asarray(apply_op(img, "PosterizeIncreasing", 1)), a & 0b1000_0000)
    # Magnitude 10 (the noise of mstd0.5 reaches it) keeps no bit: black, as timm's Pillow gave; not an error.
    assert np.array_equal(np.asarray(apply_op(img, "PosterizeIncreasing", 0)), np.zeros_like(a))
    assert np.array_equal(np.asarray(apply_op(img, "SolarizeIncreasing", 26)), np.where(a >= 26, 255 - a, a))
    assert np.array_equal(np.asarray(apply_op(img, "SolarizeAdd", 99)), np.where(a < 128, np.minimum(a + 99, 255), a))
    assert np.array_equal(np.asarray(apply_op(img, "Invert", None)), 255 - a)
    assert apply_op(img, "Posterize", 8) is img
    square = _image(1, (8, 8))
    s = np.asarray(square)
    rotated = apply_op(square, "Rotate", 90.0, resample=Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(rotated), np.rot90(s))  # counter-clockwise, as PIL
    fill = (1, 2, 3)
    shifted = np.asarray(apply_op(square, "TranslateXRel", 0.25, fill=fill, resample=Image.Resampling.NEAREST))
    assert np.array_equal(shifted[:, :6], s[:, 2:])  # output x reads input x + 2
    assert (shifted[:, 6:] == np.array(fill)).all()
    sheared = np.asarray(apply_op(square, "ShearY", 0.5, fill=fill, resample=Image.Resampling.NEAREST))
    assert np.array_equal(sheared[:, 0], s[:, 0])  # y' = y + 0.5 x: column 0 stays
    assert (sheared[7, 2:] == np.array(fill)).all()  # the bottom row reads below the image at x >= 2
    brighter = np.asarray(apply_op(img, "BrightnessIncreasing", 1.5)).astype(int)
    assert np.abs(brighter - np.minimum(a * 1.5, 255)).max() <= 1


def test_same_rng_same_image_and_no_global_state() -> None:
    ra = rand_augment_transform(RECIPE, {"img_mean": (124, 116, 104), "interpolation": "bicubic"})
    img = _image(2, (24, 20))
    random.seed(1)
    np.random.seed(1)
    first = [np.asarray(ra(img, random.Random(s))) for s in range(20)]
    random.seed(2)
    np.random.seed(2)
    state = random.getstate()
    again = [np.asarray(ra(img, random.Random(s))) for s in range(20)]
    assert random.getstate() == state
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert len({x.tobytes() for x in first}) > 10
