"""The recipe's image transforms: crop boxes, flips, erasing, determinism, the evaluation transform, the config."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.augment import AugmentConfig, EvalTransform, RandomErasing, TrainTransform, random_resized_crop_box
from mae.large.data.images import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, preprocess, to_tensor
from mae.large.data.mixup import Mixup, SoftTargetCrossEntropy
from mae.large.errors import InvalidArgumentError
from mae.large.utils.keyed import keyed_rng
from tests.helpers import REPO


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_crop_boxes_follow_scale_and_ratio() -> None:
    rng = random.Random(0)
    width, height = 400, 300
    areas, logs = [], []
    for _ in range(4000):
        top, left, h, w = random_resized_crop_box(width, height, (0.08, 0.3), (3 / 4, 4 / 3), rng)
        assert 0 <= top <= height - h and 0 <= left <= width - w
        areas.append(w * h / (width * height))
        logs.append(math.log(w / h))
    # At most 0.3 of the area every first try fits, so the draws are the plain laws (rounding aside).
    n = len(areas)
    assert min(areas) >= 0.08 - 0.01 and max(areas) <= 0.3 + 0.01
    assert abs(sum(areas) / n - 0.19) < 5 * math.sqrt(0.22 ** 2 / 12 / n) + 0.002
    span = 2 * math.log(4 / 3)
    assert max(abs(v) for v in logs) <= span / 2 + 0.02
    assert abs(sum(logs) / n) < 5 * math.sqrt(span ** 2 / 12 / n)
    assert abs(sum(v * v for v in logs) / n - span ** 2 / 12) < 0.004
    # The recipe's full range: boxes can be the whole image, never outside it.
    full = [random_resized_crop_box(width, height, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(2000)]
    assert all(t >= 0 and t + h <= height and le >= 0 and le + w <= width for t, le, h, w in full)
    assert max(h * w for _, _, h, w in full) > 0.9 * width * height


def test_crop_fallback_is_the_centred_clamped_box() -> None:
    # A strip far outside the ratio range: no try fits, so the centre box of the widest allowed ratio.
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0)) == (0, 493, 10, 13)
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), random.Random(0)) == (493, 0, 13, 10)


def test_flip_frequency() -> None:
    img = _image(8, 8)
    plain, flipped = to_tensor(img), to_tensor(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    t = TrainTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), auto_augment=None, re_prob=0.0)
    n = 5000
    flips = 0
    for s in range(n):
        x = t(img, random.Random(s))
        assert torch.equal(x, plain) or torch.equal(x, flipped)  # the full-image crop at the same size is the image
        flips += torch.equal(x, flipped)
    assert abs(flips / n - 0.5) < 4.5 * math.sqrt(0.25 / n)  # 0.03: a fixed seed, a 0.45 would show


def test_erasing_frequency_and_boxes() -> None:
    erase = RandomErasing(0.25, mode="pixel", max_count=1)
    rng = random.Random(1)
    height, width = 224, 224
    n = 8000
    boxes = [erase.boxes(height, width, rng) for _ in range(n)]
    erased = [b[0] for b in boxes if b]
    assert all(len(b) <= 1 for b in boxes)
    assert abs(len(erased) / n - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    areas = [h * w / (height * width) for _, _, h, w in erased]
    assert 0.02 - 0.002 <= min(areas) < 0.03 and 0.3 < max(areas) <= 1 / 3 + 0.01
    aspects = [h / w for _, _, h, w in erased]
    assert min(aspects) >= 0.3 * 0.9 and max(aspects) <= 1 / 0.3 * 1.1
    assert all(t >= 0 and t + h <= height and le >= 0 and le + w <= width and h < height and w < width
               for t, le, h, w in erased)


def test_erasing_fills_the_box_with_unit_noise() -> None:
    erase = RandomErasing(1.0, mode="pixel")
    for seed in range(5):
        x = torch.zeros(3, 64, 64)
        erase(x, random.Random(seed))
        [(top, left, h, w)] = erase.boxes(64, 64, random.Random(seed))
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert bool((x[:, inside] != 0).all()) and bool((x[:, ~inside] == 0).all())
    big = torch.zeros(3, 256, 256)
    RandomErasing(1.0, mode="pixel", min_area=0.3)(big, random.Random(0))
    noise = big[big != 0]
    assert noise.numel() > 50000 and abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    # "rand": one colour per channel; "const": zeros; a torch.Generator works as the source too.
    x = torch.ones(3, 32, 32)
    RandomErasing(1.0, mode="rand")(x, torch.Generator().manual_seed(0))
    assert all(len(set(c[c != 1].tolist())) == 1 for c in x)
    y = torch.ones(3, 32, 32)
    RandomErasing(1.0, mode="const")(y, random.Random(0))
    assert (y == 0).any() and set(y.unique().tolist()) == {0.0, 1.0}


def test_train_transform_determinism_and_no_global_rng() -> None:
    t = TrainTransform(32)
    img = _image(48, 40, seed=3)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    first = [t(img, random.Random(s)) for s in range(12)]
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    states = (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist())
    again = [t(img, random.Random(s)) for s in range(12)]
    assert (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()) == states
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert len({a.numpy().tobytes() for a in first}) == 12
    assert all(a.shape == (3, 32, 32) and a.dtype == torch.float32 for a in first)


def test_train_transform_settings_follow_create_transform() -> None:
    t = TrainTransform()
    assert t.rand_augment is not None
    assert {op.fill for op in t.rand_augment.ops} == {(124, 116, 104)}  # round(255 x the ImageNet mean)
    assert {op.resample for op in t.rand_augment.ops} == {Image.Resampling.BICUBIC}
    assert t.erasing is not None and (t.erasing.probability, t.erasing.mode, t.erasing.max_count) == (0.25, "pixel", 1)
    assert TrainTransform(auto_augment=None, re_prob=0.0).rand_augment is None
    with pytest.raises(InvalidArgumentError):
        TrainTransform(auto_augment="rand-m9-bad")


def test_crop_is_crop_then_bicubic_resize() -> None:
    t = TrainTransform(24, auto_augment=None, re_prob=0.0, hflip=0.0)
    img = _image(60, 50, seed=4)
    out, (top, left, h, w) = t.crop(img, random.Random(9))
    expected = img.crop((left, top, left + w, top + h)).resize((24, 24), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert torch.equal(t(img, random.Random(9)), to_tensor(expected))


def test_to_tensor_is_torchvision_arithmetic() -> None:
    img = _image(5, 4)
    a = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(to_tensor(img), (a - mean) / std)


@pytest.mark.parametrize("size, src", [(224, (300, 400)), (224, (401, 259)), (32, (50, 41)), (48, (48, 48))])
def test_eval_transform_is_the_official_eval_crop(size: int, src: tuple[int, int]) -> None:
    img = _image(*src, seed=5)
    x = EvalTransform(size)(img)
    assert x.shape == (3, size, size)
    # image.preprocess(crop="eval") has the same geometry, normalising in float64: the same to float rounding.
    assert torch.allclose(x, preprocess(img, size, crop="eval"), atol=1e-6, rtol=0)


def test_eval_resize_rule() -> None:
    assert (eval_resize_size(224), eval_resize_size(32), eval_resize_size(112)) == (256, 36, 128)
    assert eval_resize_size(448) == 448  # crop_pct 1.0 above 224
    img = _image(300, 240, seed=6)
    x = EvalTransform(240)(img)  # resize the short side to 240 (no change), crop the centre 240 x 240
    assert torch.equal(x, to_tensor(img.crop((30, 0, 270, 240))))
    with pytest.raises(InvalidArgumentError):
        EvalTransform(224, resize=200)


def test_config_defaults_and_builders() -> None:
    cfg = AugmentConfig()
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data
    assert (data["auto_augment"], data["mixup"], data["cutmix"], data["smoothing"], data["re_prob"]) == (
        "rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.1, 0.25)
    mix = cfg.mixup_fn(7)
    assert isinstance(mix, Mixup) and (mix.mixup_alpha, mix.cutmix_alpha, mix.switch_prob, mix.num_classes) == (
        0.8, 1.0, 0.5, 7)
    assert isinstance(cfg.criterion(), SoftTargetCrossEntropy)
    assert isinstance(cfg.train_transform(), TrainTransform) and cfg.eval_transform().resize == 256
    off = AugmentConfig(mixup=0.0, cutmix=0.0)
    assert off.mixup_fn(7) is None and not off.mixup_active
    assert type(off.criterion()).__name__ == "LabelSmoothingCrossEntropy"
    with pytest.raises(AttributeError):
        cfg.mixup = 0.5  # frozen


def test_the_recipe_crops_with_timms_default_scale() -> None:
    """`util/datasets.build_transform` calls timm v0.3.2's `create_transform(...)` without `scale` / `ratio`, so
    `transforms_imagenet_train` takes `scale = tuple(scale or (0.08, 1.0))`, `ratio = tuple(ratio or (3./4.,
    4./3.))` (timm/data/transforms_factory.py at 6504a428): crops from 8% of the image up."""
    from mae.large.train.finetune import FinetuneConfig, build_train_transform

    assert AugmentConfig().scale == (0.08, 1.0) and AugmentConfig().ratio == (3 / 4, 4 / 3)
    assert TrainTransform().scale == (0.08, 1.0) and TrainTransform().ratio == (3 / 4, 4 / 3)
    recipe = build_train_transform(FinetuneConfig())  # what `finetune` trains with
    assert (recipe.scale, recipe.ratio, recipe.size, recipe.hflip) == ((0.08, 1.0), (3 / 4, 4 / 3), 224, 0.5)
    # What it draws: area fractions ~ U(0.08, 1) (on a square image nearly every first try fits), so about
    # (0.2 - 0.08) / 0.92 = 13% of the crops are under a fifth of the image; none would be with scale (0.2, 1).
    img = _image(100, 100, seed=7)
    rng = random.Random(0)
    areas = [h * w / 100 ** 2 for _, (_, _, h, w) in (recipe.crop(img, rng) for _ in range(2000))]
    assert min(areas) < 0.09
    assert abs(sum(a < 0.2 for a in areas) / len(areas) - 0.12 / 0.92) < 0.04


def test_keyed_rng_is_a_function_of_its_keys() -> None:
    draws = keyed_rng(0, 3, 17).random(), keyed_rng(0, 3, 17).random()
    assert draws[0] == draws[1]
    others = {keyed_rng(0, 3, 18).random(), keyed_rng(0, 4, 17).random(), keyed_rng(1, 3, 17).random(),
              keyed_rng(0, 3, "17").random(), keyed_rng(0, 31, 7).random()}
    assert draws[0] not in others and len(others) == 5
    code = "from mae.large.utils.keyed import keyed_rng; print(repr(keyed_rng(0, 3, 17).random()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert float(done.stdout) == draws[0]  # another process, another hash salt: the same stream
    with pytest.raises(InvalidArgumentError):
        keyed_rng()
