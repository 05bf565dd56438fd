"""Image files in, normalised tensors out (and back): exactly the preprocessing of the official MAE demo.

The official demo (`demo/mae_visualize.ipynb`) does `img.resize((224, 224))` (bicubic),
`np.array(img) / 255.`, minus the ImageNet mean, over the ImageNet std. `preprocess(crop="resize")`
reproduces that to float rounding; `crop="center"` is an aspect-preserving alternative, and `crop="eval"` is the
official evaluation transform (`main_linprobe.py`, `main_finetune.py`: `Resize(256, BICUBIC)` then
`CenterCrop(224)`, the ImageNet mean/std), written out as torchvision computes it.

Every problem with a file becomes one `ImageError` naming the file, never a raw Pillow exception, so the
CLI can report it in one line and carry on with the next image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from ..catalog import CROPS, EVAL_RESIZE
from ..errors import ImageError, invalid_argument
from ..utils.imagefile import decode_image, decode_image_bytes
from .records import ImageRef, Record

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "CollectedImages",
    "ImageFailure",
    "check_crop",
    "collect_images",
    "image_batches",
    "denormalize",
    "eval_resize",
    "eval_resize_size",
    "eval_transform",
    "load_image",
    "normalize",
    "open_image",
    "preprocess",
    "to_pil",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Lower case; suffixes are compared case-insensitively so "IMG_0001.JPG" counts.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# A stable order for messages ("looked for .jpg, .jpeg, ...").
_SUFFIX_ORDER = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

Crop = Literal["eval", "resize", "center"]


def check_crop(crop: str) -> None:
    """Raise `InvalidArgumentError` (a `ValueError`) unless `crop` is one of `catalog.CROPS`."""
    if crop not in CROPS:
        raise invalid_argument("crop", f"crop must be {' or '.join(repr(c) for c in CROPS)}, got {crop!r}")


# ---- finding files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageFailure:
    """An input that yielded no image; `reason` is a full sentence that names the path (or the record)."""

    path: ImageRef
    reason: str


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


class CollectedImages(tuple):
    """`(paths, failures)` as `collect_images` returns them, plus what was passed over on purpose:
    `skipped_folders` (sub-folders not walked without `recursive`) and `duplicates` (inputs reached a
    second time, kept once). Unpacks as the pair."""

    skipped_folders: list[Path]
    duplicates: list[Path]

    def __new__(cls, paths: list[Path], failures: list[ImageFailure], skipped_folders: list[Path],
                duplicates: list[Path]) -> CollectedImages:
        self = super().__new__(cls, (paths, failures))
        self.skipped_folders = skipped_folders
        self.duplicates = duplicates
        return self


def collect_images(inputs: Sequence[str | os.PathLike[str]], *, recursive: bool = False) -> CollectedImages:
    """Expand files and folders into a list of image paths, plus the inputs that gave none.

    * A file is taken as given, whatever its suffix: `open_image` validates it later, so a PNG saved
      as `.dat` still works and a broken `.jpg` fails with its own message.
    * A folder contributes its image files (by suffix, case-insensitive), sorted by name; with
      `recursive` its sub-folders too (depth first, each sorted by name), otherwise they are passed over
      and listed in `skipped_folders`. Hidden files and folders (name starting with ".") are skipped:
      they are macOS `._x.jpg` resource forks or half-written temporary files, never the user's pictures.
    * A folder with no image, a path that does not exist or a folder that cannot be listed gives an
      `ImageFailure` instead, so one bad argument does not stop the others.

    Duplicates (the same file reached twice, even by different spellings) are kept once, first
    occurrence first, and listed in `duplicates`.
    """
    found: list[Path] = []
    failures: list[ImageFailure] = []
    skipped: list[Path] = []
    duplicates: list[Path] = []
    seen: set[Path] = set()
    failed: set[Path] = set()

    def add(path: Path) -> None:
        key = _identity(path)
        if key in seen:
            duplicates.append(path)
        else:
            seen.add(key)
            found.append(path)

    def fail(path: Path, reason: str) -> None:
        key = _identity(path)
        if key not in failed:
            failed.add(key)
            failures.append(ImageFailure(path, reason))

    def walk(folder: Path) -> int:
        """Add the images of `folder` (and, with `recursive`, below it); return how many it held."""
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
            images = [p for p in entries if _is_image_name(p) and p.is_file()]
            folders = [p for p in entries if p.is_dir()]
        except OSError as exc:
            fail(folder, f"folder {folder} cannot be read ({exc.strerror or exc})")
            return -1
        for image in images:
            add(image)
        count = len(images)
        for sub in folders:
            if recursive:
                count += max(0, walk(sub))
            else:
                skipped.append(sub)
        return count

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            count = walk(path)
            if count == 0:
                looked = ", ".join(_SUFFIX_ORDER)
                below = " or its sub-folders" if recursive else ""
                fail(path, f"folder {path}{below} holds no images (looked for {looked})")
        elif path.exists():
            add(path)
        else:
            fail(path, f"{path} does not exist")
    return CollectedImages(found, failures, skipped, duplicates)


def _identity(path: Path) -> Path:
    """The key for duplicate detection: the resolved path, or the path itself if it cannot resolve."""
    try:
        return path.resolve()
    except OSError:  # pragma: no cover - e.g. a symlink loop
        return path


# ---- opening ------------------------------------------------------------------------------------
def open_image(path: ImageRef | str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file (or a `records.Record`: an image inside a data set's file) as an RGB
    `PIL.Image`.

    The EXIF orientation is applied (phone photos come out upright) and every mode becomes RGB:
    transparency is composited over white, 16-bit and float grayscale are scaled to 0-255 (see
    `to_rgb_image`). The guards are `utils.imagefile.decode_image`'s (a mask image gets the same): Pillow's
    decompression-bomb warning is treated as an error.

    Raises `ImageError`, with one sentence naming the file and the problem, for a missing file, a
    folder, an empty file, a file Pillow cannot read, a truncated or damaged file, and a bomb.
    """
    if isinstance(path, Record):
        return decode_image_bytes(path.read(), str(path), lambda src: to_rgb_image(_upright(src)))
    return decode_image(path, lambda src: to_rgb_image(_upright(src)))


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable EXIF block leaves the pixels as stored.

    Real cameras write malformed EXIF often enough that refusing the whole picture for it would be
    worse than showing it unrotated.
    """
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


# Modes with an alpha band ("LAB" has an A that is not alpha, hence a list rather than a test on "A").
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# Modes whose pixels are not 8-bit and need an explicit scale (Pillow's convert would clip to 255).
_WIDE_GRAY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def to_rgb_image(img: Image.Image) -> Image.Image:
    """Any Pillow mode to a new 8-bit RGB image.

    * alpha (RGBA, LA, PA, RGBa, La) and palette or grayscale images with a `transparency` entry:
      composited over white, since the model has no notion of transparency and white is what a
      viewer shows;
    * I;16*: divided by 257 (65535 -> 255);
    * I (32-bit int, which is also how older Pillow opens 16-bit PNGs): as 16-bit when all values fit
      0..65535, else stretched from its min..max;
    * F (float): times 255 when all values fit 0..1, as is when they fit 0..255, else stretched;
    * everything else (1, L, P, CMYK, YCbCr, LAB, HSV...): Pillow's own conversion.
    """
    mode = img.mode
    if mode in _WIDE_GRAY_MODES:
        gray = _wide_gray_to_uint8(np.asarray(img), mode)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img.copy()  # a new image, detached from the (closing) file
    return img.convert("RGB")


def _wide_gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    x = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith("I;16"):
        scaled = x / 257.0
    else:
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 65535:
            scaled = x / 257.0
        elif mode == "F" and lo >= 0 and hi <= 1:
            scaled = x * 255.0
        elif mode == "F" and lo >= 0 and hi <= 255:
            scaled = x
        elif hi > lo:
            scaled = (x - lo) / (hi - lo) * 255.0
        else:
            scaled = np.zeros_like(x)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---- tensors ------------------------------------------------------------------------------------
def check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"size must be a positive int or an (H, W) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def preprocess(
    img: Image.Image, size: int | tuple[int, int] = (224, 224), crop: Crop = "resize"
) -> torch.Tensor:
    """A PIL image to the model's input: a (3, H, W) float32 tensor normalised with ImageNet mean/std.

    `size` is (H, W), torch order. `crop`:

    * "resize" (default): stretch to H x W with bicubic resampling, exactly the official demo
      (`img.resize((W, H))`, `/ 255.`, `- mean`, `/ std`, in float64 as its numpy code does, then
      cast to float32);
    * "center": keep the aspect ratio: scale so the image covers H x W (for a square target, the
      shorter side becomes the target) with bicubic resampling, then cut the centre;
    * "eval": the official evaluation transform (`eval_transform`): resize (bicubic, aspect kept) so that the
      image covers H x W times 256/224 up to 224 (at 224: the shorter side becomes 256; above, the size itself),
      then cut the centre H x W, with torchvision's rounding and float32 arithmetic.
    """
    h, w = check_size(size)
    check_crop(crop)
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL.Image.Image, got {type(img).__name__}")
    if img.mode != "RGB":
        img = to_rgb_image(img)

    if crop == "eval":
        return eval_transform(img, (h, w))
    if crop == "resize":
        img = img.resize((w, h), Image.Resampling.BICUBIC)
    else:
        src_w, src_h = img.size
        scale = max(w / src_w, h / src_h)
        # The centred region of the source that scales to exactly (w, h), resampled in one step: never
        # an intermediate image larger than the target (a 1x3000 strip must not become 224x672000).
        box_w, box_h = w / scale, h / scale
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        img = img.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + box_w, top + box_h))

    # The official demo's arithmetic: float64 numpy, then float32.
    arr = np.asarray(img) / 255.0  # float64, (H, W, 3)
    arr = (arr - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def to_tensor(img: Image.Image, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
              ) -> torch.Tensor:
    """torchvision's ToTensor then Normalize, in its float32 arithmetic: (3, H, W) = (pixel / 255 - mean) / std."""
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))  # (H, W, 3)
    x = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # (3, H, W)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return x.sub_(m).div_(s)


def eval_resize_size(size: int, crop: int | None = None) -> int:
    """The length a side of target `size` is resized to before the official evaluation's centre crop:
    `int(size / crop_pct)`, crop_pct 224 / 256 when the crop (its shorter side, `crop`, default `size`) is at most
    224 and 1.0 above (`util/datasets.build_transform`); 256 at 224."""
    num, den = EVAL_RESIZE
    return int(size / (den / num)) if (size if crop is None else crop) <= den else size


def eval_transform(img: Image.Image, size: tuple[int, int], resize: int | None = None,
                   mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """The official evaluation transform (`util/datasets.build_transform`, torchvision's Resize(bicubic), CenterCrop,
    ToTensor, Normalize, in torchvision's float32 arithmetic): the one of `features`, `evaluate` and the fine-tuning
    evaluation. The side that must grow most (for a square `size`, the image's shorter side) becomes `resize`
    (default `eval_resize_size` of its target), the other keeps the aspect (`eval_resize`); then the centre crop."""
    if img.mode != "RGB":
        img = to_rgb_image(img)
    h, w = size
    new_w, new_h = eval_resize(img.size, (h, w), resize)
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    # torchvision's CenterCrop: offsets int(round((size - crop) / 2)).
    left, top = int(round((new_w - w) / 2.0)), int(round((new_h - h) / 2.0))
    return to_tensor(img.crop((left, top, left + w, top + h)), mean, std)


def eval_resize(src: tuple[int, int], size: tuple[int, int], resize: int | None = None) -> tuple[int, int]:
    """(width, height) the evaluation transform resizes a `src` (width, height) image to before cropping `size`
    (H, W): the side that must grow most becomes `resize` (default: `eval_resize_size` of its target, as torchvision's
    `Resize(int(S / crop_pct))` for a square S), the other `int(that * its length / the driving length)` (never
    below its target), truncated as torchvision truncates."""
    src_w, src_h = src
    h, w = size
    if h * src_w >= w * src_h:  # h / src_h >= w / src_w: the height drives (square target: the shorter side)
        new_h = eval_resize_size(h, min(h, w)) if resize is None else resize
        new_w = max(w, int(new_h * src_w / src_h))
    else:
        new_w = eval_resize_size(w, min(h, w)) if resize is None else resize
        new_h = max(h, int(new_w * src_h / src_w))
    return new_w, new_h


BatchItem = tuple[int, Path, "torch.Tensor | ImageFailure"]  # (input position, path, image or why not)


def image_batches(paths: Sequence[ImageRef | str | os.PathLike[str]], size: int | tuple[int, int], crop: Crop,
                  batch_size: int) -> Iterator[list[BatchItem]]:
    """The inputs in order, loaded (`load_image`), in lists holding up to `batch_size` images; a file that
    cannot be read is an `ImageFailure` that rides along in its place, so results come out in input order."""
    from ..errors import invalid_argument

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_argument("batch_size", f"batch size must be a positive integer, got batch_size={batch_size!r}")
    check_crop(crop)
    pending: list[BatchItem] = []
    loaded = 0
    for index, raw in enumerate(paths):
        path = raw if isinstance(raw, Record) else Path(raw)
        try:
            pending.append((index, path, load_image(path, size=size, crop=crop)))
            loaded += 1
        except ImageError as exc:
            pending.append((index, path, ImageFailure(path, str(exc))))
        if loaded == batch_size:
            yield pending
            pending, loaded = [], 0
    if pending:
        yield pending


def load_image(
    path: ImageRef | str | os.PathLike[str], size: int | tuple[int, int] = (224, 224), crop: Crop = "resize"
) -> torch.Tensor:
    """`open_image` then `preprocess`: a file (or a record) to a normalised (3, H, W) float32 tensor."""
    return preprocess(open_image(path), size=size, crop=crop)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected images (3, H, W) or (N, 3, H, W), channels first; got {tuple(x.shape)}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(3, 1, 1)
    return mean, std


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to model units: (x - mean) / std per channel; (3, H, W) or (N, 3, H, W)."""
    mean, std = _stats(x01)
    return (x01.to(mean.dtype) - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Model units back to pixels: x * std + mean, clamped to [0, 1]; (3, H, W) or (N, 3, H, W)."""
    mean, std = _stats(x)
    return (x.to(mean.dtype) * std + mean).clamp(0.0, 1.0)


def to_pil(x01: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] to an 8-bit RGB PIL image (rounded; out-of-range values clamped)."""
    if not isinstance(x01, torch.Tensor) or x01.dim() != 3 or x01.shape[0] != 3:
        shape = tuple(x01.shape) if isinstance(x01, torch.Tensor) else type(x01).__name__
        raise ValueError(f"expected a (3, H, W) tensor in [0, 1], got {shape}")
    pixels = (x01.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())

