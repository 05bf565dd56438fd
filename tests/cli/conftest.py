"""CLI fixtures: a runner, small checkpoints in the official format, and a few real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.helpers import encoder_only, save_official, small_state_dict, use_small_architecture


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def small_arch(monkeypatch):
    """Make every command build the official small configuration (img 32, patch 8) instead of ViT-L."""
    return use_small_architecture(monkeypatch)


@pytest.fixture
def small_ckpts(tmp_path: Path) -> tuple[Path, Path]:
    """(full, encoder-only) checkpoints of the small configuration, official file format."""
    sd = small_state_dict()
    full = save_official(tmp_path / "small_full.pth", sd)
    enc = save_official(tmp_path / "small_encoder.pth", encoder_only(sd))
    return full, enc


def write_image(path: Path, size=(48, 40), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    return [write_image(folder / f"img{i}.png", seed=i) for i in range(3)]


def flat(text: str) -> str:
    """Rich output with panel borders removed and whitespace collapsed, for phrase assertions."""
    return " ".join(text.replace("│", " ").split())
