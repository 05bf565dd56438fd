"""Animations of a reconstruction: masked -> reconstruction frames over mask ratios or seeds, as GIF or WebP.

Frames are drawn with Pillow (no matplotlib figure per frame: a frame costs milliseconds); the panels come
from `figures.make_panels`.
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import invalid_argument
from ..utils.atomic import atomic_path
from .panels import ReconstructionPanels, panel_of, pil_image

__all__ = ["ANIMATION_FORMATS", "ANIMATION_FRAME_MS", "ANIMATION_RATIOS", "animation_frame", "save_animation"]

# The CLI's default animation: mask ratios 0.10, 0.15, ..., 0.95 (18 frames). All leave ViT-L's 196 patches
# visible ones (9 at 0.95); on a grid of fewer than 20 patches 0.95 leaves none (`model.check_mask_ratio`).
ANIMATION_RATIOS: tuple[float, ...] = tuple(round(0.10 + 0.05 * i, 2) for i in range(18))
ANIMATION_FRAME_MS = 400
# Animation formats, by the file's suffix (Pillow's format names).
ANIMATION_FORMATS = {".gif": "GIF", ".webp": "WEBP"}


# ---- animation ------------------------------------------------------------------------------------
_FRAME_MIN_SIDE = 160  # small images are enlarged (nearest neighbour, whole factors) to at least this
_FRAME_PAD = 8
_LABEL_PX = 18
_CAPTION_PX = 13
_FRAME_PANELS = (("masked", "masked"), ("visible", "reconstruction + visible"))


def animation_frame(panels: ReconstructionPanels, label: str, *, scale: int | None = None) -> Image.Image:
    """One animation frame, an RGB image: masked | reconstruction + visible side by side, the panel names
    over them and `label` (e.g. `mask_ratio_label(0.35)` or "seed 4") on top. A label of several lines
    ("mask ratio 0.35 | loss 0.41\nmask random, seed 2 | removed 0.352") has its first line large and the
    others in the captions' size; each line makes the frame taller (give every frame of an animation as many).

    Drawn with Pillow and its default font, so a frame costs milliseconds. Each panel is enlarged by the
    whole factor `scale` (nearest neighbour, patch edges stay sharp); by default the smallest factor that
    makes it at least 160 pixels on its longer side (1 for the models' 224-pixel inputs). Frames of one
    image all have the same size. Characters the font may lack (beyond Latin-1) are written as escapes.
    """
    if not isinstance(panels, ReconstructionPanels):
        raise TypeError(f"panels must be ReconstructionPanels, got {type(panels).__name__}")
    height, width = panels.mask.shape
    if scale is None:
        scale = max(1, -(-_FRAME_MIN_SIDE // max(height, width)))
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise invalid_argument("scale", f"scale must be a whole number >= 1, got {scale!r}")
    w, h = width * scale, height * scale
    pad = _FRAME_PAD
    first, *more = label.split("\n")
    lines_px = len(more) * (_CAPTION_PX + 4)  # the label's further lines, each in the captions' size
    band = pad + _LABEL_PX + 6 + lines_px + _CAPTION_PX + 4
    frame = Image.new("RGB", (2 * w + 3 * pad, band + h + pad), "white")
    draw = ImageDraw.Draw(frame)
    label_font, caption_font = _pil_font(_LABEL_PX), _pil_font(_CAPTION_PX)
    _centred_text(draw, frame.width / 2, pad, _latin1_text(first), label_font, (0, 0, 0))
    for i, line in enumerate(more):
        _centred_text(draw, frame.width / 2, pad + _LABEL_PX + 4 + i * (_CAPTION_PX + 4), _latin1_text(line),
                      caption_font, (0, 0, 0))
    for i, (name, caption) in enumerate(_FRAME_PANELS):
        x = pad + i * (w + pad)
        image = pil_image(panel_of(panels, name))
        if scale != 1:
            image = image.resize((w, h), Image.Resampling.NEAREST)
        frame.paste(image, (x, band))
        _centred_text(draw, x + w / 2, pad + _LABEL_PX + 6 + lines_px, caption, caption_font, (70, 70, 70))
    return frame


def _centred_text(draw: ImageDraw.ImageDraw, x: float, top: float, text: str,
                  font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fill: tuple[int, int, int]) -> None:
    """`text` centred on x, its ink starting at `top` (no anchors: the bitmap font has none)."""
    left, upper, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((round(x - (left + right) / 2), round(top - upper)), text, fill=fill, font=font)


def save_animation(
    frames: Sequence[Image.Image] | Sequence[ReconstructionPanels],
    path: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    duration_ms: int | Sequence[int] = ANIMATION_FRAME_MS,
    loop: bool = True,
) -> Path:
    """Write an animated GIF or WebP (by the suffix of `path`, `ANIMATION_FORMATS`), atomically.

    `frames` are images of one size (from `animation_frame`), or, with `labels` (one per frame), the
    `ReconstructionPanels` to draw them from. `duration_ms`: how long each frame shows, one value or one per
    frame. `loop=True` repeats forever; `loop=False` plays once. GIF stores times in 10 ms steps and merges
    a frame identical to the one before it into it (their times add up), so give frames distinct labels.
    """
    path = Path(path)
    fmt = ANIMATION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise invalid_argument("path", f"an animation is written as {' or '.join(ANIMATION_FORMATS)}, "
                                       f"by the file's suffix; got {path.name!r}")
    frames = list(frames)
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(frames):
            raise invalid_argument("labels", f"labels must have one label per frame: {len(labels)} labels for "
                                             f"{len(frames)} frames")
        frames = [animation_frame(p, label) for p, label in zip(frames, labels)]  # type: ignore[arg-type]
    if not frames:
        raise invalid_argument("frames", "an animation needs at least one frame")
    for i, frame in enumerate(frames):
        if not isinstance(frame, Image.Image):
            hint = " (pass labels= to draw frames from panels)" if isinstance(frame, ReconstructionPanels) else ""
            raise invalid_argument("frames", f"frame {i} must be a PIL image, got {type(frame).__name__}{hint}")
        if frame.size != frames[0].size:
            raise invalid_argument("frames", f"every frame must have the size of the first, {frames[0].size}; "
                                             f"frame {i} is {frame.size}")
    durations = [duration_ms] * len(frames) if isinstance(duration_ms, numbers.Integral) else list(duration_ms)
    if len(durations) != len(frames) or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0
                                            for d in durations):
        raise invalid_argument("duration_ms", f"duration_ms must be a positive whole number of milliseconds, or one "
                                              f"per frame ({len(frames)}), got {duration_ms!r}")
    options: dict[str, object] = {"format": fmt, "save_all": True, "append_images": frames[1:],
                                  "duration": [int(d) for d in durations]}
    if fmt == "GIF":
        if loop:
            options["loop"] = 0  # the NETSCAPE extension, 0 = forever; without it the GIF plays once
    else:
        options.update(loop=0 if loop else 1, quality=90, method=4)  # WebP: the loop count, 0 = forever
    with atomic_path(path) as tmp:
        frames[0].save(tmp, **options)
    return path


@functools.cache
def _pil_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font at `size` pixels (Pillow < 10.1: its one bitmap size)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _latin1_text(text: str) -> str:
    """`text` with what Pillow's default font may lack (beyond Latin-1, control characters, bytes that
    are not UTF-8) written as backslash escapes."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() and ord(c) < 256 else c.encode("unicode_escape").decode("ascii") for c in text)
