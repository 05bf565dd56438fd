"""RandAugment as the official fine-tuning recipe runs it (`--aa rand-m9-mstd0.5-inc1`), every draw from a given
`random.Random`.

Follows timm's `timm/data/auto_augment.py` (huggingface/pytorch-image-models, v0.3.2 =
commit 6504a42832cb6687e3f595c37e003ea920268365, the version `main_finetune.py` pins; checked against the
current main, commit aa4b5850c1543fa488abf260f18390eda46cf85d, v1.0.28+, whose ops and level rules give the same
arguments for magnitudes in [0, 10]):

* each image gets `n` ops (default 2) chosen uniformly *with* replacement (timm's `np.random.choice` without
  weights), applied in order;
* each op runs with probability `p` (0.5), its magnitude drawn from N(m, mstd) and clipped to [0, mmax]
  (10: timm's `_MAX_LEVEL` / `_LEVEL_DENOM`), then turned into the op's argument by its level rule;
  signed arguments (rotate, shear, translate, the "increasing" enhancements) are negated with probability 0.5;
* `inc1` picks the ops whose severity increases with the magnitude (`PosterizeIncreasing`,
  `SolarizeIncreasing`, `*Increasing` enhancements);
* geometric ops fill with `img_mean` (the dataset mean in 0..255, as `create_transform` passes it) and
  resample with `interpolation` (bicubic in the recipe; without it, bilinear or bicubic at random, as timm).

The draws come in timm's order (the op choices, then per op: apply?, magnitude, sign, resampling), so a
plan (`RandAugment.sample`) is a pure function of the generator's state; `keyed_rng` makes that generator a
pure function of keys such as (seed, epoch, sample index). Torch-free.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

from ..errors import invalid_argument

__all__ = ["INCREASING_OPS", "MAX_LEVEL", "OpDraw", "RAND_OPS", "AugmentOp", "RandAugment", "apply_op",
    "rand_augment_transform"]

MAX_LEVEL = 10.0  # timm's _MAX_LEVEL: a magnitude of 10 is an op's full strength
_FILL = (128, 128, 128)  # timm's default fill when hparams name no img_mean
_RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in timm's order (the order only matters for which
# index a draw maps to; the choice is uniform).
RAND_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
INCREASING_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)


# ---- the ops: (image, argument) -> image ----------------------------------------------------------
def _affine(img: Image.Image, matrix: tuple[float, ...], fill: tuple[int, ...], resample: int) -> Image.Image:
    # PIL's AFFINE maps each output pixel (x, y) to the input (a x + b y + c, d x + e y + f).
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    # timm: pixels below the threshold get `add` more (saturating at 255); other modes pass through untouched.
    if img.mode not in ("L", "RGB"):
        return img
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(lut * (3 if img.mode == "RGB" else 1))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    # Keep the `bits` high bits of each channel. At magnitude 10 `PosterizeIncreasing` asks for 0 bits (a black
    # image under the Pillow of timm 0.3.2); Pillow >= 11 refuses 0 in `ImageOps.posterize`, so the same
    # lookup table is applied here for every count.
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


_Pixel = Callable[[Image.Image, Any], Image.Image]
_Geometric = Callable[[Image.Image, float, tuple[int, ...], int], Image.Image]

_PIXEL_OPS: dict[str, _Pixel] = {
    "AutoContrast": lambda img, _: ImageOps.autocontrast(img),
    "Equalize": lambda img, _: ImageOps.equalize(img),
    "Invert": lambda img, _: ImageOps.invert(img),
    "Posterize": _posterize,
    "Solarize": lambda img, threshold: ImageOps.solarize(img, threshold),
    "SolarizeAdd": _solarize_add,
    "Color": lambda img, factor: ImageEnhance.Color(img).enhance(factor),
    "Contrast": lambda img, factor: ImageEnhance.Contrast(img).enhance(factor),
    "Brightness": lambda img, factor: ImageEnhance.Brightness(img).enhance(factor),
    "Sharpness": lambda img, factor: ImageEnhance.Sharpness(img).enhance(factor),
}
_GEOMETRIC_OPS: dict[str, _Geometric] = {
    "Rotate": lambda img, deg, fill, resample: img.rotate(deg, resample=resample, fillcolor=fill),
    "ShearX": lambda img, f, fill, resample: _affine(img, (1, f, 0, 0, 1, 0), fill, resample),
    "ShearY": lambda img, f, fill, resample: _affine(img, (1, 0, 0, f, 1, 0), fill, resample),
    # Relative translations: a fraction of the image's width / height, in pixels.
    "TranslateXRel": lambda img, pct, fill, resample: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill, resample),
    "TranslateYRel": lambda img, pct, fill, resample: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill, resample),
}


def _base(name: str) -> str:
    """The op an "increasing" variant runs (`ColorIncreasing` -> `Color`): only its level rule differs."""
    return name.removesuffix("Increasing")


# ---- level rules: magnitude in [0, 10] -> argument (timm's *_level_to_arg) -------------------------
def _signed(value: float, rng: random.Random) -> float:
    # timm's _randomly_negate: negative when the draw is above 0.5.
    return -value if rng.random() > 0.5 else value


def _level(name: str, m: float, hparams: Mapping[str, Any], rng: random.Random) -> Any:
    frac = m / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return _signed(frac * 30.0, rng)  # degrees in [-30, 30]
    if name == "Posterize":
        return int(frac * 4)  # bits kept, 0..4: severity decreases with the magnitude
    if name == "PosterizeIncreasing":
        return 4 - int(frac * 4)  # bits kept, 4..0
    if name == "Solarize":
        return min(256, int(frac * 256))  # threshold; 256 inverts nothing
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(frac * 256))
    if name == "SolarizeAdd":
        return min(128, int(frac * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return frac * 1.8 + 0.1  # enhancement factor in [0.1, 1.9]
    if name.endswith("Increasing"):  # the enhancements: away from 1.0 (no change) either way
        return max(0.1, 1.0 + _signed(frac * 0.9, rng))
    if name in ("ShearX", "ShearY"):
        return _signed(frac * 0.3, rng)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _signed(frac * float(hparams.get("translate_pct", 0.45)), rng)
    raise invalid_argument("auto_augment", f"unknown RandAugment op {name!r}; the ops are {', '.join(RAND_OPS)}")


def apply_op(img: Image.Image, name: str, arg: Any, *, fill: tuple[int, ...] = _FILL,
             resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """One op with its argument (what a level rule gave), no randomness: `apply_op(img, "Rotate", 27.0)`."""
    base = _base(name)
    if base in _GEOMETRIC_OPS:
        return _GEOMETRIC_OPS[base](img, arg, tuple(fill), resample)
    return _PIXEL_OPS[base](img, arg)


@dataclass(frozen=True)
class OpDraw:
    """One op of a plan: its name, the magnitude after noise and clipping, its argument and resampling filter
    (None for ops that do not resample)."""

    name: str
    magnitude: float
    arg: Any
    resample: int | None


@dataclass(frozen=True)
class AugmentOp:
    """One op with its magnitude, probability and hyper-parameters (timm's `AugmentOp`)."""

    name: str
    prob: float = 0.5
    magnitude: float = MAX_LEVEL
    magnitude_std: float = 0.0
    magnitude_max: float = MAX_LEVEL
    fill: tuple[int, ...] = _FILL
    resample: int | tuple[int, ...] = _RANDOM_RESAMPLE  # a tuple: one of them at random per call
    translate_pct: float = 0.45

    def sample(self, rng: random.Random) -> OpDraw | None:
        """The draws of one call: None when the op is skipped, else what it will do."""
        if self.prob < 1.0 and rng.random() > self.prob:
            return None
        magnitude = self.magnitude
        if self.magnitude_std > 0:
            magnitude = rng.gauss(magnitude, self.magnitude_std)
        magnitude = max(0.0, min(magnitude, self.magnitude_max))
        arg = _level(self.name, magnitude, {"translate_pct": self.translate_pct}, rng)
        resample = None
        if _base(self.name) in _GEOMETRIC_OPS:
            resample = rng.choice(self.resample) if isinstance(self.resample, tuple) else self.resample
        return OpDraw(self.name, magnitude, arg, resample)

    def apply(self, img: Image.Image, draw: OpDraw | None) -> Image.Image:
        if draw is None:
            return img
        return apply_op(img, draw.name, draw.arg, fill=self.fill,
                        resample=draw.resample if draw.resample is not None else Image.Resampling.BICUBIC)

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        return self.apply(img, self.sample(rng))


class RandAugment:
    """`num_layers` ops per image, each chosen uniformly with replacement from `ops`."""

    def __init__(self, ops: list[AugmentOp], num_layers: int = 2) -> None:
        self.ops = list(ops)
        self.num_layers = num_layers

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.ops)

    def sample(self, rng: random.Random) -> list[tuple[AugmentOp, OpDraw | None]]:
        """The plan for one image: the chosen ops (all choices first, as timm) and each one's draws."""
        chosen = [self.ops[rng.randrange(len(self.ops))] for _ in range(self.num_layers)]
        return [(op, op.sample(rng)) for op in chosen]

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for op, draw in self.sample(rng):
            img = op.apply(img, draw)
        return img

    def __repr__(self) -> str:
        op = self.ops[0] if self.ops else AugmentOp("Invert")
        return (f"RandAugment(n={self.num_layers}, p={op.prob}, m={op.magnitude}, mstd={op.magnitude_std}, "
                f"ops={list(self.op_names)})")


_HPARAM_KEYS = ("translate_const", "translate_pct", "img_mean", "interpolation", "magnitude_std", "magnitude_max")
_INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                   "nearest": Image.Resampling.NEAREST, "random": _RANDOM_RESAMPLE}


def _bad(part: str, config_str: str, why: str) -> Exception:
    return invalid_argument(
        "auto_augment",
        f"RandAugment setting {config_str!r} has a bad part {part!r} ({why}); write it like 'rand-m9-mstd0.5-inc1' "
        "(parts m<int>, n<int>, mstd<float>, inc<0|1>, p<float>, mmax<int>)",
    )


def rand_augment_transform(config_str: str, hparams: Mapping[str, Any] | None = None) -> RandAugment:
    """Build RandAugment from timm's mini-syntax: `rand` then dash-separated parts, `m` magnitude (default 10),
    `n` ops per image (2), `mstd` magnitude noise (0), `inc` 1 for the increasing ops, `p` each op's probability
    (0.5), `mmax` the magnitude's upper clip (10).

    `hparams` as `create_transform` passes them: `img_mean` (fill colour, 0..255), `interpolation`
    ("bicubic", "bilinear", a PIL filter, or "random"), `translate_pct` (0.45), `translate_const` (used by no
    RandAugment op; accepted); `magnitude_std` / `magnitude_max` there win over the string (timm's setdefault).
    Anything unparsable raises `InvalidArgumentError` naming the bad part. One difference on purpose: timm
    reads `inc0` as on (`bool("0")`); here `inc0` means off.
    """
    hp = dict(hparams or {})
    unknown = sorted(set(hp) - set(_HPARAM_KEYS))
    if unknown:
        raise invalid_argument("hparams", f"unknown RandAugment hparams {unknown}; known: {', '.join(_HPARAM_KEYS)}")
    parts = str(config_str).split("-")
    if parts[0] != "rand":
        raise _bad(parts[0], config_str, "the setting must start with 'rand'")
    magnitude, num_layers, prob, increasing = MAX_LEVEL, 2, 0.5, False
    for part in parts[1:]:
        found = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if found is None:
            raise _bad(part, config_str, "expected a key followed by a number")
        key, val = found.groups()
        kind = {"m": int, "n": int, "mstd": float, "mmax": int, "inc": int, "p": float}.get(key)
        if kind is None:
            raise _bad(part, config_str, f"unknown key {key!r}")
        try:
            number = kind(val)
        except ValueError:
            raise _bad(part, config_str, f"{val!r} is not {'an integer' if kind is int else 'a number'}") from None
        if key == "m":
            magnitude = float(number)
        elif key == "n":
            num_layers = int(number)
        elif key == "mstd":
            hp.setdefault("magnitude_std", float(number))
        elif key == "mmax":
            hp.setdefault("magnitude_max", float(number))
        elif key == "inc":
            increasing = number != 0
        else:
            prob = float(number)
    if not 0.0 <= prob <= 1.0:
        raise _bad(f"p{prob:g}", config_str, "a probability is between 0 and 1")
    std, top = float(hp.get("magnitude_std", 0.0)), float(hp.get("magnitude_max", MAX_LEVEL))
    if not (std >= 0.0 and top > 0.0):
        raise _bad(f"mstd{std:g}" if std < 0 else f"mmax{top:g}", config_str, "must be non-negative / positive")

    interpolation = hp.get("interpolation", "random")
    resample = _INTERPOLATIONS.get(interpolation, interpolation) if isinstance(interpolation, str) else interpolation
    if isinstance(resample, str):
        raise invalid_argument("hparams", f"unknown interpolation {interpolation!r}; use one of {', '.join(_INTERPOLATIONS)}")
    fill = tuple(int(c) for c in hp.get("img_mean", _FILL))
    ops = [
        AugmentOp(name, prob=prob, magnitude=magnitude, magnitude_std=std, magnitude_max=top, fill=fill,
                  resample=tuple(resample) if isinstance(resample, (list, tuple)) else int(resample),
                  translate_pct=float(hp.get("translate_pct", 0.45)))
        for name in (INCREASING_OPS if increasing else RAND_OPS)
    ]
    return RandAugment(ops, num_layers)
