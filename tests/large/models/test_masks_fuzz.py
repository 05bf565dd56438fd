"""The `--mask` mini-syntax under generated input: any text either parses to a mask that builds on a small grid, or
raises `ValueError` (`InvalidArgumentError` is one) with a one-line message; a `file:` mask may also raise the
`ImageError` of any image read. Never another exception (OverflowError, a RecursionError, a raw Pillow error).

Also the two cases a hostile run found: `patches:1e400` (OverflowError) and a 60000x60000 mask image (Pillow's
DecompressionBombError), each now one line."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mae.large.errors import ImageError
from mae.large.models.masks import KINDS, build_mask, file_mask, parse_mask

GRID_PX, PATCH = (32, 24), 8  # a 4 x 3 grid: every generator runs in microseconds
LENGTH = (GRID_PX[0] // PATCH) * (GRID_PX[1] // PATCH)
# MAE_FUZZ_SCALE=20 runs twenty times the examples (a longer hunt than the suite's few seconds).
SCALE = max(1, int(os.environ.get("MAE_FUZZ_SCALE", "1")))
FUZZ = settings(max_examples=1200 * SCALE, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says `width` x `height` (and whose pixels are missing): Pillow reads the size from the
    header, so this is what a decompression bomb looks like to `Image.open`, in 57 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory) -> list[str]:
    """The paths a `file:` mask is generated with: a real mask, a bomb, garbage, an empty file, a folder, nothing."""
    root = tmp_path_factory.mktemp("masks")
    Image.fromarray((np.arange(40 * 30).reshape(30, 40) % 7 > 3).astype(np.uint8) * 255).save(root / "ok.png")
    bomb_png(root / "bomb.png", 60_000, 60_000)
    (root / "garbage.png").write_bytes(b"\x89PNG garbage")
    (root / "empty.png").write_bytes(b"")
    (root / "folder").mkdir()
    return [str(root / name) for name in ("ok.png", "bomb.png", "garbage.png", "empty.png", "folder", "absent.png")]


def check_outcome(text: str, seed: int = 0) -> None:
    """The property: a mask of LENGTH booleans, or a one-line ValueError (ImageError for file masks)."""
    try:
        spec = parse_mask(text)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc), (text, str(exc))
        return
    assert spec.text == text and spec.kind in KINDS
    try:
        mask = build_mask(spec, GRID_PX, PATCH, ratio=0.75, seed=seed)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc), (text, str(exc))
        return
    except ImageError as exc:
        assert spec.kind == "file" and str(exc), (text, str(exc))
        return
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == (LENGTH,), text


NUMBERS = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(-(10**400), 10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-1e400", "nan", "inf", "-inf", "1e-400", "0.", ".5", "1_0", "0x10", " 3 ", "", "1e308",
                     "4.0", "9007199254740993", "2e53", "-0"]),
)


@st.composite
def mask_texts(draw) -> str:
    """Texts shaped like the grammar: a kind (any case, or `half:`), maybe a colon, comma-separated numbers or junk."""
    kind = draw(st.sampled_from([*KINDS, "half", "unknown", ""]))
    if draw(st.booleans()):
        kind = kind.upper()
    if kind.lower() == "half":
        kind += ":" + draw(st.sampled_from(["left", "right", "top", "bottom", "middle", ""]))
    args = draw(st.lists(st.one_of(NUMBERS, st.text(max_size=6)), max_size=6))
    separator = draw(st.sampled_from([":", ":", "", "::"]))
    return draw(st.sampled_from(["", " "])) + kind + separator + ",".join(args)


@FUZZ
@given(text=st.text(max_size=40), seed=st.integers(0, 2**32 - 1))
def test_any_text_is_a_mask_or_one_line(text: str, seed: int) -> None:
    check_outcome(text, seed)


@FUZZ
@given(text=mask_texts(), seed=st.integers(0, 2**32 - 1))
def test_grammar_shaped_text_is_a_mask_or_one_line(text: str, seed: int) -> None:
    check_outcome(text, seed)


@settings(max_examples=200 * SCALE, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_file_masks_are_a_mask_or_one_image_error(mask_files, data) -> None:
    path = data.draw(st.sampled_from(mask_files))
    check_outcome(f"{data.draw(st.sampled_from(['file', 'FILE', ' file']))}:{path}")


# ---- the cases a hostile run (and this file's fuzzing) found -----------------------------------------------
@pytest.mark.parametrize("text", ["patches:1e400", "patches:-1e400", "patches:inf", "patches:nan", "box:0,0,1e400,4",
                                  "random:nan", "block:1e400", "patches:1e300", "random:,", "block:0.5,0.6",
                                  "file:" + "9" * 300])
def test_numbers_out_of_the_grammar_are_one_line(text) -> None:
    with pytest.raises((ValueError, ImageError)) as caught:  # ImageError: a file name too long to open
        build_mask(parse_mask(text), GRID_PX, PATCH)
    assert str(caught.value) and "\n" not in str(caught.value)


def test_a_huge_mask_image_gets_the_input_images_guards(tmp_path) -> None:
    path = bomb_png(tmp_path / "big.png", 60_000, 60_000)
    with pytest.raises(ImageError) as caught:
        file_mask(path, (4, 3))
    message = str(caught.value)
    assert message.startswith(f"mask image {path} is larger than Pillow's safety limit") and "\n" not in message


def test_a_mask_image_between_one_and_two_times_the_limit_is_refused_too(tmp_path, monkeypatch) -> None:
    """Pillow only warns between 1x and 2x its limit; every image read here treats the warning as the error."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((30, 50), np.uint8)).save(path)  # 1500 pixels
    with pytest.raises(ImageError, match="larger than Pillow's safety limit of 1000 pixels"):
        file_mask(path, (4, 3))
