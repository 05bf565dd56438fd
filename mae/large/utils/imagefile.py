"""Image files from outside, opened behind one set of guards: every image this project reads (an input image, a
mask image, an image stored inside a data set file) goes through `decode_image` or `decode_image_bytes`.

The guards: the path must be a non-empty file (the bytes non-empty); Pillow's decompression-bomb limit
(`PIL.Image.MAX_IMAGE_PIXELS`, its warning between 1x and 2x the limit treated as the error above it) is checked from
the header, before a pixel is decoded; every byte is decoded inside the guard (`load()`), where truncated and damaged
files fail; and every failure is one `ImageError` naming the file (or the record), never a raw Pillow exception.
Torch-free.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, first_line

T = TypeVar("T")


def decode_image(path: str | os.PathLike[str], convert: Callable[[Image.Image], T], *, what: str = "image",
                 folder_hint: str = "pass the image files inside it instead") -> T:
    """`convert(img)` of the fully decoded image at `path` (it runs inside the guards, so an error while converting
    is reported like one while decoding); `ImageError` naming the `what` (image, mask image) and the path otherwise.

    A missing file, a folder (with `folder_hint`), an empty file, a file Pillow cannot read, a truncated or damaged
    file and a decompression bomb are each one sentence."""
    path = Path(path)
    try:
        if not path.exists():
            raise ImageError(f"{what} {path} does not exist; check the path")
        if path.is_dir():
            raise ImageError(f"{path} is a directory, not an image file; {folder_hint}")
        if path.stat().st_size == 0:
            raise ImageError(f"{what} {path} is empty (0 bytes); re-download or re-export it")
    except OSError as exc:  # a name too long, a permission problem, a race with deletion
        raise ImageError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None

    return _decode(path, path, convert, what)


def decode_image_bytes(data: bytes, name: str, convert: Callable[[Image.Image], T], *, what: str = "image") -> T:
    """`convert(img)` of the image encoded in `data` (a row of a parquet file, a tar member), behind the same guards
    as `decode_image`; `name` says where the bytes come from in every message (`train.parquet#12`)."""
    if not data:
        raise ImageError(f"{what} {name} is empty (0 bytes); the data set holds no image there")
    return _decode(io.BytesIO(data), name, convert, what)


def _decode(source: Path | io.BytesIO, name: str | Path, convert: Callable[[Image.Image], T], what: str) -> T:
    """Open `source` (a path or the bytes of a file), decode every byte and convert, each failure one `ImageError`
    naming `name`."""
    path = name
    # catch_warnings is process-wide state, but only for the duration of the decode; it turns
    # Pillow's DecompressionBombWarning (between 1x and 2x the limit) into an exception too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as src:
                # Image.open only reads the header (and checks its size against the bomb limit); load() decodes
                # every byte, which is where truncated and damaged files fail.
                src.load()
                return convert(src)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            limit = Image.MAX_IMAGE_PIXELS
            raise ImageError(
                f"{what} {path} is larger than Pillow's safety limit of {limit} pixels; "
                "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageError(f"{path} is not an image Pillow can read (unknown or unsupported format)") from exc
        except PermissionError as exc:
            raise ImageError(f"{what} {path} cannot be read (permission denied)") from exc
        except OSError as exc:
            if "truncated" in str(exc):
                raise ImageError(f"{what} {path} is truncated ({first_line(str(exc))}); re-download or re-export it") from exc
            raise ImageError(f"{what} {path} is damaged and cannot be decoded ({first_line(str(exc))})") from exc
        except MemoryError:
            raise
        except ImageError:
            raise
        except Exception as exc:  # Pillow's plugins also raise SyntaxError, ValueError, struct.error...
            raise ImageError(
                f"{what} {path} is damaged and cannot be decoded ({type(exc).__name__}: {first_line(str(exc))})"
            ) from exc
