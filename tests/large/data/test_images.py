"""Opening, converting and normalising image files (mae.large.data.images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFailure,
    collect_images,
    denormalize,
    eval_resize,
    load_image,
    normalize,
    open_image,
    preprocess,
    to_pil,
)
from mae.large.errors import ImageError


def noise_rgb(w: int = 40, h: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def official_demo(img: Image.Image, size: int = 224) -> np.ndarray:
    """The official demo's numpy preprocessing, (H, W, 3) float64."""
    arr = np.array(img.resize((size, size), Image.BICUBIC)) / 255.0
    arr = arr - np.array([0.485, 0.456, 0.406])
    return arr / np.array([0.229, 0.224, 0.225])


# ---- open_image: modes ----------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide x 20 high, red on the left half; EXIF orientation 6 = "rotate 90 degrees clockwise to view".
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=exif)

    img = open_image(path)
    assert img.mode == "RGB"
    assert img.size == (20, 40)  # now portrait
    top = np.asarray(img)[2, 10].astype(int)
    bottom = np.asarray(img)[37, 10].astype(int)
    # Clockwise rotation puts the former left (red) half on top.
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(path)
    img = open_image(path)
    assert img.mode == "RGB"
    assert np.all(np.asarray(img) == 77)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really a wide mode on disk
    out = np.asarray(open_image(path))
    assert out.shape == (2, 2, 3)
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]
    assert np.all(out[..., 0] == out[..., 2])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32), [[0, 128], [64, 255]]),  # 0..1 floats
        (np.array([[-1.0, 0.0], [0.0, 1.0]], dtype=np.float32), [[0, 128], [128, 255]]),  # stretched
    ],
)
def test_float_grayscale_is_scaled(tmp_path: Path, values: np.ndarray, expected: list) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    assert np.asarray(open_image(path))[..., 1].tolist() == expected


def test_int32_grayscale_is_treated_as_16bit(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.asarray(open_image(path))[0, :, 0].tolist() == [0, 255]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (10, 20, 30, 0)  # fully transparent
    arr[0, 1] = (10, 20, 30, 255)  # opaque
    arr[1, 0] = (0, 0, 0, 128)  # half black
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = np.asarray(open_image(path)).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]
    assert np.all(np.abs(out[1, 0] - 127) <= 1)


def test_gray_alpha_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 0], [50, 255]]], dtype=np.uint8), "LA").save(path)
    out = np.asarray(open_image(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [50, 50, 50]


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)  # index 0 (red) is transparent
    assert Image.open(path).mode == "P"
    out = np.asarray(open_image(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 255, 0]


def test_palette_gif(tmp_path: Path) -> None:
    path = tmp_path / "p.gif"
    noise_rgb(8, 8).convert("P").save(path)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    out = np.asarray(open_image(path)).astype(int)
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_bilevel(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = tmp_path / "bw.png"
    img.save(path)
    assert np.asarray(open_image(path))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_any_suffix_is_opened_by_content(tmp_path: Path) -> None:
    path = tmp_path / "picture.dat"
    noise_rgb().save(path, format="PNG")
    assert np.array_equal(np.asarray(open_image(path)), np.asarray(noise_rgb()))


# ---- open_image: errors ---------------------------------------------------------------------------
def truncated(tmp_path: Path, fmt: str) -> Path:
    full = tmp_path / f"full.{fmt.lower()}"
    noise_rgb(64, 64).save(full, format=fmt)
    data = full.read_bytes()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*does not exist"):
        open_image(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=f"{tmp_path.name}.*is a directory"):
        open_image(tmp_path)


def test_zero_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match=r"empty.png is empty \(0 bytes\)"):
        open_image(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="noise.jpg is not an image Pillow can read") as info:
        open_image(path)
    assert info.value.__cause__ is not None  # the Pillow error is chained, not lost


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    path = truncated(tmp_path, fmt)
    with pytest.raises(ImageError, match=r"cut\.\w+ is truncated"):
        open_image(path)


def test_damaged_file(tmp_path: Path) -> None:
    # A damaged PNG body (valid header, garbage data) is a decode failure, still an ImageError.
    full = tmp_path / "full.png"
    noise_rgb(64, 64).save(full)
    data = bytearray(full.read_bytes())
    data[60:200] = bytes(140)
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="damaged.png"):
        open_image(path)


@pytest.mark.parametrize(("side", "kind"), [(20, "error"), (12, "warning")])
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int, kind: str) -> None:
    # 400 px is over 2x the limit (Pillow raises); 144 px is between 1x and 2x (Pillow only warns).
    path = tmp_path / f"bomb_{kind}.png"
    noise_rgb(side, side).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError, match=f"bomb_{kind}.png is larger than Pillow's safety limit of 100 pixels"):
        open_image(path)


# ---- preprocess -----------------------------------------------------------------------------------
def test_preprocess_equals_official_demo() -> None:
    img = noise_rgb(300, 200, seed=3)
    x = preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = torch.from_numpy(official_demo(img)).permute(2, 0, 1)
    assert (x.double() - expected).abs().max().item() < 1e-6


def test_load_image_equals_preprocess_of_open_image(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    noise_rgb().save(path)
    x = load_image(path, size=(32, 48))
    assert x.shape == (3, 32, 48)
    assert torch.equal(x, preprocess(open_image(path), size=(32, 48)))


def test_resize_stretches_center_keeps_aspect() -> None:
    # 200 x 100: a blue left quarter, red middle half, green right quarter.
    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, :50] = (0, 0, 255)
    arr[:, 50:150] = (255, 0, 0)
    arr[:, 150:] = (0, 255, 0)
    img = Image.fromarray(arr)

    center = denormalize(preprocess(img, size=(50, 50), crop="center"))
    # Shorter side 100 -> 50, width 200 -> 100, the centre 50 columns are all red.
    assert torch.allclose(center[:, :, 2:-2], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1), atol=1 / 255)

    stretched = denormalize(preprocess(img, size=(50, 50), crop="resize"))
    # Stretching keeps all three bands: blue on the left edge, green on the right.
    assert stretched[2, 25, 2] > 0.95 and stretched[1, 25, -3] > 0.95


def test_center_crop_non_square_target() -> None:
    img = noise_rgb(64, 64)
    x = preprocess(img, size=(16, 32), crop="center")
    assert x.shape == (3, 16, 32)


def test_preprocess_converts_other_modes() -> None:
    x = preprocess(Image.new("L", (10, 10), 255), size=8)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(denormalize(x), torch.ones(3, 8, 8), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "match"), [({"crop": "fit"}, "crop"), ({"size": (0, 4)}, "size")])
def test_preprocess_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        preprocess(noise_rgb(), **kwargs)


# ---- normalisation --------------------------------------------------------------------------------
def test_normalize_denormalize_round_trip() -> None:
    x01 = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(denormalize(normalize(x01)), x01, atol=1e-6)
    assert torch.allclose(denormalize(normalize(x01[0])), x01[0], atol=1e-6)


def test_denormalize_constants_and_clamp() -> None:
    zero = denormalize(torch.zeros(3, 1, 1))
    assert torch.allclose(zero.flatten(), torch.tensor(IMAGENET_MEAN))
    big = denormalize(torch.full((1, 3, 2, 2), 100.0))
    assert torch.equal(big, torch.ones(1, 3, 2, 2))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(normalize(torch.ones(3, 1, 1)).flatten(), expected)


def test_denormalize_rejects_channels_last() -> None:
    with pytest.raises(ValueError, match="channels first"):
        denormalize(torch.zeros(4, 4, 3))


def test_to_pil_rounds() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.5]).view(1, 1, 4).expand(3, 1, 4)
    img = to_pil(x)
    assert img.mode == "RGB" and img.size == (4, 1)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 128, 255, 255]


def test_file_round_trip_through_to_pil(tmp_path: Path) -> None:
    img = noise_rgb(16, 16)
    x = preprocess(img, size=16)  # same size: bicubic resize is the identity
    assert np.array_equal(np.asarray(to_pil(denormalize(x))), np.asarray(img))


# ---- collect_images -------------------------------------------------------------------------------
def test_collect_images_folder_files_missing_and_empty(tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ["b.PNG", "a.jpg", "c.webp"]:
        (folder / name).write_bytes(b"x")
    (folder / "notes.txt").write_text("hi")
    (folder / "._a.jpg").write_bytes(b"x")  # macOS resource fork
    (folder / "sub.jpg").mkdir()  # a folder with an image suffix is not a file
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    single = tmp_path / "single.bin"
    single.write_bytes(b"x")

    found, failures = collect_images([single, folder, str(empty), tmp_path / "missing.png", folder / "a.jpg"])

    assert found == [single, folder / "a.jpg", folder / "b.PNG", folder / "c.webp"]
    assert [f.path for f in failures] == [empty, tmp_path / "missing.png"]
    assert all(isinstance(f, ImageFailure) for f in failures)
    assert "holds no images" in failures[0].reason and ".jpg" in failures[0].reason and str(empty) in failures[0].reason
    assert "missing.png does not exist" in failures[1].reason


def test_collect_images_removes_duplicates_keeping_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    found, failures = collect_images([b, tmp_path, tmp_path / "." / "a.png", b])
    assert found == [b, a]
    assert failures == []


def test_image_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} == set(IMAGE_SUFFIXES)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_center_crop_of_a_thin_strip_stays_small(tmp_path) -> None:
    """The crop is resampled in one step from the source: a 1x3000 strip gives a 224x224 tensor
    without an intermediate 224x672000 image."""
    import numpy as np
    from PIL import Image

    from mae.large.data.images import load_image

    path = tmp_path / "strip.png"
    Image.fromarray((np.arange(3000) % 256).astype(np.uint8).reshape(1, 3000)).save(path)
    out = load_image(path, size=224, crop="center")
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all()


def test_collect_images_reports_sub_folders_and_walks_them_when_asked(tmp_path: Path) -> None:
    for rel in ("b.png", "sub/a.png", "sub/deeper/c.png", ".hidden/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    collected = collect_images([tmp_path])
    found, failures = collected
    assert [p.name for p in found] == ["b.png"] and failures == []
    assert [p.name for p in collected.skipped_folders] == ["sub"]
    deep, _ = collect_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == ["b.png", "sub/a.png", "sub/deeper/c.png"]
    again = collect_images([tmp_path / "b.png", tmp_path / "b.png"])
    assert [p.name for p in again[0]] == ["b.png"] and [p.name for p in again.duplicates] == ["b.png"]


# ---- the official evaluation transform ------------------------------------------------------------------
def _normalised(img: Image.Image) -> torch.Tensor:
    """torchvision's ToTensor then Normalize, as `transforms.functional.to_tensor` / `normalize` compute them (the
    official evaluation's arithmetic, float32): uint8 (H, W, 3) -> (3, H, W) / 255, then (x - mean) / std."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute((2, 0, 1)).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub_(mean).div_(std)


def _demo_normalised(img: Image.Image) -> torch.Tensor:
    """The official demo's arithmetic (float64 numpy, then float32): what `crop="resize"` keeps."""
    arr = (np.asarray(img) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


@pytest.mark.parametrize(("src", "size", "resized", "box"), [
    # Resize(256) of a 300x200 (w x h) picture: the shorter side (h) -> 256, w -> int(256 * 300 / 200) = 384;
    # CenterCrop(224): left int(round(160 / 2)) = 80, top 16.
    ((300, 200), 224, (384, 256), (80, 16, 304, 240)),
    ((200, 300), 224, (256, 384), (16, 80, 240, 304)),  # portrait: the width is the shorter side
    # At 32: Resize(int(32 / 0.875)) = Resize(36); 300x200 -> 54x36, crop offsets round(11) = 11, round(2) = 2.
    ((300, 200), 32, (54, 36), (11, 2, 43, 34)),
    ((229, 229), 224, (256, 256), (16, 16, 240, 240)),  # square
])
def test_eval_crop_is_resize_256_then_centre_224(src, size, resized, box) -> None:
    img = noise_rgb(*src, seed=4)
    expected = _normalised(img.resize(resized, Image.Resampling.BICUBIC).crop(box))
    got = preprocess(img, size, crop="eval")
    assert got.shape == (3, size, size)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, preprocess(img, size, crop="center"), atol=1e-3)  # not the margin-less crop


def test_eval_crop_of_a_non_square_size_covers_it_with_the_same_margin() -> None:
    from mae.large.data.images import eval_resize

    assert eval_resize((300, 200), (224, 320)) == (384, 256)  # 224 / 200 > 320 / 300: the height drives
    assert eval_resize((300, 250), (224, 320)) == (365, 304)  # the width drives: 320 * 256 // 224 = 365
    assert preprocess(noise_rgb(300, 250), (224, 320), crop="eval").shape == (3, 224, 320)


def test_the_eval_crop_is_torchvisions_arithmetic_for_every_pixel_value() -> None:
    # Every uint8 value in every channel: the float64 path of the demo differs from float32 torchvision in the last
    # bit for about half of them; the evaluation transform must be torchvision's for all.
    values = np.arange(256, dtype=np.uint8)
    img = Image.fromarray(np.stack([np.tile(values, (16, 1)), np.tile(values[::-1], (16, 1)),
                                    np.tile(np.roll(values, 7), (16, 1))], axis=-1))  # 16 x 256
    got = preprocess(img, 16, crop="eval")
    width, height = eval_resize(img.size, (16, 16))  # (20, 18): Resize(int(16 / 0.875)) on the shorter side
    resized = img.resize((width, height), Image.Resampling.BICUBIC)
    left, top = int(round((width - 16) / 2.0)), int(round((height - 16) / 2.0))  # torchvision's CenterCrop
    assert torch.equal(got, _normalised(resized.crop((left, top, left + 16, top + 16))))
    assert not torch.equal(_normalised(img), _demo_normalised(img))  # the two arithmetics do differ here


def test_the_resize_crop_keeps_the_official_demos_arithmetic() -> None:
    img = noise_rgb(300, 200, seed=5)
    assert torch.equal(preprocess(img, 32, crop="resize"), _demo_normalised(img.resize((32, 32), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize("size", [32, 112, 224, 240, 448])
def test_features_evaluate_and_fine_tuning_share_one_eval_transform(size: int) -> None:
    from mae.large.data.augment import EvalTransform
    from mae.large.data.labelled import official_eval_transform

    for src in ((300, 200), (200, 300), (260, 260)):
        img = noise_rgb(*src, seed=size)
        expected = preprocess(img, size, crop="eval")
        assert torch.equal(EvalTransform(size)(img), expected)
        assert torch.equal(official_eval_transform((size, size))(img), expected)


def test_above_224_the_eval_transform_does_not_enlarge() -> None:
    # util/datasets.build_transform: crop_pct 1.0 for input_size > 224, so Resize(448) then CenterCrop(448).
    assert eval_resize((600, 500), (448, 448)) == (537, 448)
    assert eval_resize((300, 200), (224, 224)) == (384, 256)  # 224: Resize(int(224 / 0.875)) = Resize(256)
