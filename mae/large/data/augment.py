"""The image transforms of the official fine-tuning recipe, every random draw from a generator passed in.

The official `main_finetune.py` (facebookresearch/mae, commit efb2a8062c206524e35e47d04501ed4f544c0ae8) builds
its training transform in `util/datasets.py` with timm v0.3.2's `create_transform(is_training=True,
input_size=224, color_jitter=None, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25,
re_mode='pixel', re_count=1, mean, std)`; in timm (huggingface/pytorch-image-models, v0.3.2 = commit
6504a42832cb6687e3f595c37e003ea920268365, `timm/data/transforms_factory.py: transforms_imagenet_train`) that is

    RandomResizedCropAndInterpolation(224, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)   (`timm/data/transforms.py`)
    RandomHorizontalFlip(0.5)
    RandAugment('rand-m9-mstd0.5-inc1', translate_const=int(224 * 0.45), img_mean=round(255 * mean), bicubic)
    ToTensor, Normalize(mean, std)
    RandomErasing(0.25, mode='pixel', max_count=1)                                         (`timm/data/random_erasing.py`)

(no colour jitter: timm uses it only without auto-augment). `TrainTransform` is that chain; `EvalTransform` is
the evaluation chain of `util/datasets.py` (Resize(int(size / (224 / 256))) bicubic for sizes up to 224, else
Resize(size); CenterCrop(size); ToTensor; Normalize), in torchvision's float32 arithmetic. Mixup / CutMix and
the losses are in `mixup.py`, RandAugment in `rand_augment.py`.

Determinism: nothing here touches the global `random`, `numpy` or `torch` generators. A training loop keys a
`random.Random` by (seed, epoch, sample index) per image and by (seed, epoch, step) for mixup, and gets the
same tensors on any machine and any number of workers.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import torch
from PIL import Image

from ..errors import invalid_argument
from .images import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, eval_transform, to_rgb_image, to_tensor
from .mixup import (
    Mixup,
    recipe_criterion,
)
from .rand_augment import RandAugment, rand_augment_transform

__all__ = ["AugmentConfig", "EvalTransform", "RandomErasing", "TrainTransform", "random_resized_crop_box"]

Box = tuple[int, int, int, int]  # (top, left, height, width), torchvision's (i, j, h, w)



def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: random.Random) -> Box:
    """timm's `RandomResizedCropAndInterpolation.get_params`: up to 10 tries of an area fraction ~ U(scale) and a
    log-uniform aspect ratio (w / h) in `ratio`; a box that fits is placed uniformly. Else the fallback: the
    centred largest box of the image clamped to the ratio range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomErasing:
    """timm's `RandomErasing` on a normalised (C, H, W) tensor (or each image of a (B, C, H, W) batch).

    With probability `probability`, erase 1..`max_count` boxes: per box up to 10 tries of an area fraction ~
    U(min_area, max_area) / count and a log-uniform aspect ratio (h / w) in [min_aspect, 1 / min_aspect]; the
    first that fits strictly inside is filled. `mode` "pixel": per-pixel N(0, 1) noise (in normalised units),
    "rand": one N(0, 1) colour per channel, "const": zeros. Returns the tensor, erased in place.

    The generator is either a `random.Random` (the box draws come from it and the noise from a
    `torch.Generator` seeded by its `getrandbits(63)`, drawn only when a box is filled) or a `torch.Generator`
    (both from it).
    """

    def __init__(self, probability: float = 0.25, mode: str = "pixel", max_count: int = 1, *, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: float | None = None,
                 min_count: int = 1) -> None:
        if not 0.0 <= probability <= 1.0:
            raise invalid_argument("re_prob", f"the erasing probability must be in [0, 1], got {probability}")
        if mode not in ("pixel", "rand", "const"):
            raise invalid_argument("re_mode", f"the erasing mode must be 'pixel', 'rand' or 'const', got {mode!r}")
        if not 1 <= min_count <= max_count:
            raise invalid_argument("re_count", f"the erasing count must be at least 1, got max_count={max_count}")
        if not 0.0 < min_area <= max_area <= 1.0 or not min_aspect > 0:
            raise invalid_argument("re_prob", "the erased area range must lie in (0, 1] and the aspect be positive")
        self.probability = float(probability)
        self.mode = mode
        self.min_count, self.max_count = int(min_count), int(max_count)
        self.min_area, self.max_area = float(min_area), float(max_area)
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))

    def boxes(self, height: int, width: int, rng: random.Random | torch.Generator) -> list[Box]:
        """The boxes one image gets (empty when not erased); draws in timm's order."""
        draw = _Draws(rng)
        if draw.random() > self.probability:
            return []
        area = height * width
        count = self.min_count if self.min_count == self.max_count else draw.randint(self.min_count, self.max_count)
        found: list[Box] = []
        for _ in range(count):
            for _ in range(10):
                target_area = draw.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(draw.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    found.append((draw.randint(0, height - h), draw.randint(0, width - w), h, w))
                    break
        return found

    def __call__(self, x: torch.Tensor, generator: random.Random | torch.Generator) -> torch.Tensor:
        if x.dim() == 4:
            for image in x:  # each image its own draws, in batch order
                self(image, generator)
            return x
        if x.dim() != 3:
            raise invalid_argument("x", f"random erasing expects (C, H, W) or (B, C, H, W), got {tuple(x.shape)}")
        channels, height, width = x.shape
        found = self.boxes(height, width, generator)
        if not found:
            return x
        noise = generator if isinstance(generator, torch.Generator) else \
            torch.Generator().manual_seed(generator.getrandbits(63))
        for top, left, h, w in found:
            if self.mode == "const":
                fill = torch.zeros((channels, 1, 1), dtype=x.dtype)
            else:
                shape = (channels, h, w) if self.mode == "pixel" else (channels, 1, 1)
                fill = torch.empty(shape, dtype=torch.float32).normal_(generator=noise).to(x.dtype)
            x[:, top:top + h, left:left + w] = fill.to(x.device)
        return x

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.probability}, mode={self.mode!r}, count=({self.min_count}, {self.max_count}))"


class _Draws:
    """Uniform draws from a `random.Random` or a `torch.Generator`, with the `random` module's semantics."""

    def __init__(self, source: random.Random | torch.Generator) -> None:
        if not isinstance(source, (random.Random, torch.Generator)):
            raise invalid_argument("generator", f"expected a random.Random or torch.Generator, got {type(source).__name__}")
        self.source = source

    def random(self) -> float:
        if isinstance(self.source, random.Random):
            return self.source.random()
        return float(torch.rand((), dtype=torch.float64, generator=self.source))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:  # both ends included
        if isinstance(self.source, random.Random):
            return self.source.randint(a, b)
        return int(torch.randint(a, b + 1, (), generator=self.source))


class TrainTransform:
    """The recipe's training transform: `transform(img, rng) -> (3, size, size)` normalised float32 tensor.

    Draws, all from `rng`, in order: the crop box, the flip, RandAugment's plan, the erasing boxes and the
    seed of the erasing noise. `auto_augment=None` skips RandAugment, `re_prob=0` the erasing.
    """

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1", re_prob: float = 0.25,
                 re_mode: str = "pixel", re_count: int = 1, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, interpolation: str = "bicubic") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise invalid_argument("size", f"size must be a positive integer, got {size!r}")
        if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
            raise invalid_argument("scale", f"scale must be 0 < min <= max <= 1 and ratio 0 < min <= max, got {scale}, {ratio}")
        if not 0.0 <= hflip <= 1.0:
            raise invalid_argument("hflip", f"hflip is a probability in [0, 1], got {hflip}")
        if interpolation not in ("bicubic", "bilinear"):
            raise invalid_argument("interpolation", f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        self.size = size
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resample = Image.Resampling.BICUBIC if interpolation == "bicubic" else Image.Resampling.BILINEAR
        self.rand_augment: RandAugment | None = None
        if auto_augment:
            # create_transform's hparams: translate_const int(0.45 size), fill = the mean in 0..255, its filter.
            self.rand_augment = rand_augment_transform(auto_augment, {
                "translate_const": int(size * 0.45),
                "img_mean": tuple(min(255, round(255 * c)) for c in self.mean),
                "interpolation": interpolation,
            })
        self.erasing = RandomErasing(re_prob, mode=re_mode, max_count=re_count) if re_prob > 0 else None

    def crop(self, img: Image.Image, rng: random.Random) -> tuple[Image.Image, Box]:
        """The random resized crop (torchvision's `resized_crop`: crop, then resize the crop)."""
        top, left, h, w = box = random_resized_crop_box(img.size[0], img.size[1], self.scale, self.ratio, rng)
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), self.resample), box

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if not isinstance(rng, random.Random):
            raise invalid_argument("rng", f"rng must be a random.Random, got {type(rng).__name__}")
        if img.mode != "RGB":
            img = to_rgb_image(img)
        img, _ = self.crop(img, rng)
        if rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        x = to_tensor(img, self.mean, self.std)
        return self.erasing(x, rng) if self.erasing is not None else x

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
                f"{self.rand_augment!r}, {self.erasing!r})")


class EvalTransform:
    """The official evaluation transform: `transform(img) -> (3, size, size)` normalised float32 tensor.

    torchvision's Resize(resize) (the shorter side to `resize`, the other int(resize x long / short)), bicubic;
    CenterCrop(size) (offsets int(round((side - size) / 2))); ToTensor; Normalize, in torchvision's float32
    arithmetic: `images.eval_transform`, the same as `image.preprocess(crop="eval")` (no enlargement above 224).
    """

    def __init__(self, size: int = 224, resize: int | None = None, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise invalid_argument("size", f"size must be a positive integer, got {size!r}")
        resize = eval_resize_size(size) if resize is None else resize
        if isinstance(resize, bool) or not isinstance(resize, int) or resize < size:
            raise invalid_argument("resize", f"resize must be an integer of at least size={size}, got {resize!r}")
        self.size, self.resize = size, resize
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return eval_transform(img, (self.size, self.size), self.resize, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(resize={self.resize}, bicubic, center_crop={self.size})"


@dataclass(frozen=True)
class AugmentConfig:
    """The official fine-tuning recipe's augmentation and loss settings (`main_finetune.py` defaults for ViT-L,
    FINETUNE.md: `--mixup 0.8 --cutmix 1.0 --reprob 0.25`), with builders for each piece."""

    input_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = "bicubic"
    color_jitter: float | None = None  # unused while auto_augment is set (timm's rule)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    smoothing: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def mixup_active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def eval_resize(self) -> int:
        return eval_resize_size(self.input_size)

    def train_transform(self) -> TrainTransform:
        return TrainTransform(self.input_size, self.scale, self.ratio, self.hflip, self.auto_augment, self.re_prob,
                              self.re_mode, self.re_count, self.mean, self.std, self.interpolation)

    def eval_transform(self) -> EvalTransform:
        return EvalTransform(self.input_size, self.eval_resize, self.mean, self.std)

    def mixup_fn(self, num_classes: int) -> Mixup | None:
        """The batch mixer, or None when mixup and cutmix are both off (as `main_finetune.py`)."""
        if not self.mixup_active:
            return None
        return Mixup(self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob, self.mixup_mode,
                     self.smoothing, num_classes)

    def criterion(self) -> torch.nn.Module:
        return recipe_criterion(self.mixup_active, self.smoothing)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), for printing and for a checkpoint's `args`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
