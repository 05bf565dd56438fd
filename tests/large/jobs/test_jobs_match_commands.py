"""Each job called from Python writes what its command writes and returns the rows the command prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mae.large as mae_large
from cli.app import app
from mae.large.evaluate.store import load_features
from tests.cli.conftest import write_image
from tests.helpers import save_official, small_state_dict, use_small_architecture


@pytest.fixture
def setup(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    use_small_architecture(monkeypatch)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"img{i}.png", seed=i)
    return save_official(tmp_path / "full.pth", small_state_dict()), folder


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _same_pngs(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.glob("*.png"))
    assert names and names == sorted(p.name for p in b.glob("*.png"))
    for name in names:
        assert np.array_equal(_pixels(a / name), _pixels(b / name)), name
    return names


def _cli(*args) -> dict:
    result = CliRunner().invoke(app, [*map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_reconstruct(setup, tmp_path: Path) -> None:
    checkpoint, folder = setup
    shown = _cli("reconstruct", folder, "-c", checkpoint, "--out", tmp_path / "cli", "--mask-ratio", "0.5,0.75",
                 "--panels", "original,masked,reconstruction,error")
    run = mae_large.reconstruct([folder], checkpoint, tmp_path / "py", mask_ratios=[0.5, 0.75],
                                panels=["original", "masked", "reconstruction", "error"])
    assert _same_pngs(tmp_path / "cli", tmp_path / "py") == ["img0.png", "img1.png", "img2.png"]
    assert (tmp_path / "py" / "index.html").is_file() and run.gallery == tmp_path / "py" / "index.html"
    assert [r["loss"] for r in run.rows] == [r["loss"] for r in shown["images"]]
    assert [r["sweep"] for r in run.rows] == [r["sweep"] for r in shown["images"]]


def test_features(setup, tmp_path: Path) -> None:
    checkpoint, folder = setup
    shown = _cli("features", folder, "-c", checkpoint, "--out", tmp_path / "cli.safetensors")
    run = mae_large.features([folder], checkpoint, tmp_path / "py.safetensors")
    (a, names_a, meta_a), (b, names_b, meta_b) = (load_features(tmp_path / f"{n}.safetensors") for n in ("cli", "py"))
    assert torch.equal(a, b) and names_a == names_b and run.count == shown["count"] == 3
    assert meta_a == meta_b


def test_attention_and_pca(setup, tmp_path: Path) -> None:
    checkpoint, folder = setup
    shown = _cli("attention", folder, "-c", checkpoint, "--out", tmp_path / "cli", "--layer", "0,-1", "--rollout")
    run = mae_large.attention([folder], checkpoint, tmp_path / "py", layers=[0, -1], rollout=True)
    assert [r["layers"] for r in run.rows] == [r["layers"] for r in shown["images"]]
    shown = _cli("pca", folder, "-c", checkpoint, "--out", tmp_path / "cli")
    pca = mae_large.pca([folder], checkpoint, tmp_path / "py")
    assert pca.variance == shown["variance"] and pca.joint
    _same_pngs(tmp_path / "cli", tmp_path / "py")


def test_loss(setup) -> None:
    checkpoint, _ = setup
    shown = _cli("loss", "--noise", "-c", checkpoint, "--samples", "3")
    run = mae_large.loss(None, checkpoint, samples=3)
    assert run.result.losses == shown["losses"] and run.target.target == shown["target"]
