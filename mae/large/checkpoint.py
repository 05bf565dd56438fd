"""Checkpoint reading, classification and loading."""

from __future__ import annotations

DECODER_PREFIXES: tuple[str, ...] = ("mask_token", "decoder_")


def key_part(name: str) -> str:
    """`encoder` or `decoder`: which half of the model an official key belongs to."""
    return "decoder" if name.startswith(DECODER_PREFIXES) else "encoder"
