"""The images the README's figures are trained and drawn on, all of them shipped with scikit-learn and matplotlib.

    python docs/figures/make_data.py WORK_DIR

writes, under WORK_DIR:

* `digits/train/0..9/` and `digits/held-out/0..9/`: scikit-learn's `load_digits` (real 8x8 hand-written digits) as
  32x32 grey PNGs (nearest-neighbour upscaling, 0..16 -> 0..255): the first 100 of each class to train on (1,000), the
  next 20 of each class held out (200);
* `photos/train/`: 1,200 crops (400 per photograph) of three photographs: scikit-learn's `china.jpg` and `flower.jpg`
  (`sklearn.datasets.load_sample_images`) and matplotlib's `Minduka_Present_Blue_Pack.png`; each crop a random square
  of a quarter to all of the photograph's shorter side, at a random place, flipped left-right half of the time, resized
  to 128x128 (bicubic). Seeded: the same crops on every run;
* `photos/held-out/grace_hopper.jpg`: matplotlib's `grace_hopper.jpg`, which no training image comes from; the figures
  are drawn on it.

Nothing here is downloaded: every image ships inside the installed packages.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import sklearn.datasets
from PIL import Image

TRAIN_PHOTOS = {
    "china": Path(sklearn.datasets.__file__).parent / "images" / "china.jpg",
    "flower": Path(sklearn.datasets.__file__).parent / "images" / "flower.jpg",
    "present": Path(matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False)),
}
HELD_OUT = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
CROPS_PER_PHOTO = 400
CROP_SIZE = 128


def digits(root: Path, train_per_class: int = 100, held_out_per_class: int = 20) -> None:
    data = sklearn.datasets.load_digits()
    counts = [0] * 10
    for index, (pixels, label) in enumerate(zip(data.images, data.target)):
        if counts[label] >= train_per_class + held_out_per_class:
            continue
        part = "train" if counts[label] < train_per_class else "held-out"
        folder = root / part / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = np.rint(pixels / 16.0 * 255.0).astype(np.uint8)
        Image.fromarray(grey, "L").resize((32, 32), Image.Resampling.NEAREST).save(folder / f"{index:04d}.png")
        counts[label] += 1


def rgb(path: Path) -> Image.Image:
    """The photograph in RGB; transparency composited over white, as the commands read images."""
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


def photos(root: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for name, path in TRAIN_PHOTOS.items():
        image = rgb(path)
        width, height = image.size
        short = min(width, height)
        for k in range(CROPS_PER_PHOTO):
            side = rng.randint(short // 4, short)
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            crop = image.crop((left, top, left + side, top + side)).resize((CROP_SIZE, CROP_SIZE),
                                                                            Image.Resampling.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(root / "train" / f"{name}-{k:03d}.png")
    (root / "held-out").mkdir(parents=True, exist_ok=True)
    shutil.copy(HELD_OUT, root / "held-out" / HELD_OUT.name)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python docs/figures/make_data.py WORK_DIR")
    work = Path(argv[0])
    for part in ("digits", "photos"):
        if (work / part).exists():
            shutil.rmtree(work / part)
    digits(work / "digits")
    photos(work / "photos")
    print(f"wrote {work / 'digits'} (1,000 training and 200 held-out digits) and {work / 'photos'} "
          f"({CROPS_PER_PHOTO * len(TRAIN_PHOTOS)} training crops of {', '.join(p.name for p in TRAIN_PHOTOS.values())}; "
          f"held out: {HELD_OUT.name})")


if __name__ == "__main__":
    main(sys.argv[1:])
