"""`mae-large attention` and `mae-large pca`: figures per image in input order, JSON, failures, the default file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.app import app
from mae.large import catalog
from tests.cli.conftest import flat


def _run(runner, command: str, *args):
    return runner.invoke(app, [command, *map(str, args)])


@pytest.fixture
def inputs(images: list[Path]) -> list[Path]:
    """Three images and a broken file, in a folder; names sort as img0, img1, img2, zz_broken."""
    broken = images[0].parent / "zz_broken.png"
    broken.write_bytes(b"not an image")
    return [*images, broken]


def test_attention_one_figure_per_image_in_input_order(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    order = [images[2], images[0], images[1]]
    result = _run(runner, "attention", *order, "-c", small_ckpts[1], "--out", out, "--layer", "0,-1", "--rollout",
                  "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["image"] for r in doc["images"]] == [str(p) for p in order]
    assert doc["layers"] == [0, 1] and doc["rollout"] is True and doc["kind"] == "encoder-only"
    for row, path in zip(doc["images"], order):
        assert row["output"] == str(out / f"{path.stem}.attention.png") and Path(row["output"]).is_file()
        for layer in ("0", "1"):
            assert len(row["layers"][layer]["entropy"]) == 4  # one per head
            top = row["layers"][layer]["top"]
            assert len(top) == 3 and top[0]["weight"] >= top[1]["weight"] >= top[2]["weight"]
            assert all(0 <= t["patch"] < 16 for t in top)
        assert len(row["rollout_top"]) == 3
    assert sorted(p.name for p in out.iterdir()) == ["img0.attention.png", "img1.attention.png", "img2.attention.png"]
    assert "decoder" not in result.stderr  # the encoder view says nothing about a random decoder


def test_attention_folder_with_a_bad_image(runner, small_arch, small_ckpts, inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, "attention", inputs[0].parent, "-c", small_ckpts[0], "--out", out, "--heads", "mean")
    assert result.exit_code == 1
    assert "zz_broken.png" in flat(result.stderr) and "1 of 4 inputs failed" in flat(result.stderr)
    assert sorted(p.name for p in out.iterdir()) == ["img0.attention.png", "img1.attention.png", "img2.attention.png"]
    with Image.open(out / "img0.attention.png") as im:
        assert im.format == "PNG"


def test_attention_masked_patches_are_grey(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, "attention", images[0], "-c", small_ckpts[0], "--out", out, "--mask", "left",
                  "--heads", "mean", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mask"] == [0, 1, 4, 5, 8, 9, 12, 13]
    assert all(t["patch"] % 4 >= 2 for t in doc["images"][0]["layers"]["1"]["top"])  # only kept patches are attended
    with Image.open(out / "img0.attention.png") as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    grey = np.all(np.abs(pixels - 128) <= 1, axis=-1)  # REMOVED_GREY = 0.5
    assert grey.sum() > 1000  # the left halves of every panel


def test_attention_bad_layer_is_one_line_and_writes_nothing(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    out = tmp_path / "out"
    result = _run(runner, "attention", images[0], "-c", small_ckpts[0], "--out", out, "--layer", "5")
    assert result.exit_code == 1
    assert "block 5 does not exist" in flat(result.stderr) and "--layer" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []
    result = _run(runner, "attention", images[0], "-c", small_ckpts[0], "--layer", "last")
    assert result.exit_code == 2 and "--layer" in result.output


@pytest.mark.parametrize(("present", "chosen"), [
    (["pretrain", "visualize", "pretrain-full"], "pretrain"), (["visualize", "pretrain-full"], "visualize"),
    (["pretrain-full"], "pretrain-full"),
])
def test_default_checkpoint_is_the_first_present(runner, small_arch, small_ckpts, images, tmp_path, monkeypatch,
                                                 present, chosen) -> None:
    monkeypatch.chdir(tmp_path)
    for name in present:
        target = catalog.CHECKPOINTS[name].default_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(small_ckpts[1] if name == "pretrain" else small_ckpts[0], target)
    result = _run(runner, "attention", images[0], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {catalog.CHECKPOINTS[chosen].default_path} (the first present" in flat(result.stderr)
    assert "different training runs" in flat(result.stderr)


def test_no_default_checkpoint_names_all_three(runner, small_arch, images, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _run(runner, "pca", images[0], "--out", tmp_path / "out")
    assert result.exit_code == 1
    text = flat(result.stderr)
    assert all(str(e.default_path) in text for e in catalog.ENCODER_VIEW) and "--checkpoint" in text


def test_head_choices_match_the_library() -> None:
    from cli.attention import HEAD_CHOICES
    from mae.large.viz.encoder_figures import HEADS

    assert HEAD_CHOICES == HEADS


def test_pca_folder_is_one_joint_pca(runner, small_arch, small_ckpts, inputs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, "pca", inputs[0].parent, "-c", small_ckpts[1], "--out", out, "--foreground", "--json")
    assert result.exit_code == 1  # the broken file
    doc = json.loads(result.stdout)
    assert doc["joint"] is True and len(doc["variance"]) == 3 and doc["layer"] == 1
    assert [r["image"] for r in doc["images"]] == [str(p) for p in inputs]
    assert "error" in doc["images"][3] and doc["failed"] == 1
    assert all(0 <= r["foreground_fraction"] <= 0.5 for r in doc["images"][:3])
    assert sorted(p.name for p in out.iterdir()) == ["img0.pca.png", "img1.pca.png", "img2.pca.png"]


def test_pca_files_are_per_image_unless_joint(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, "pca", images[1], images[0], "-c", small_ckpts[0], "--out", out, "--layer", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["joint"] is False and doc["layer"] == 0 and doc["variance"] is None
    assert [r["image"] for r in doc["images"]] == [str(images[1]), str(images[0])]
    assert all(len(r["variance"]) == 3 for r in doc["images"])
    result = _run(runner, "pca", images[1], images[0], "-c", small_ckpts[0], "--out", out, "--joint", "--json")
    assert json.loads(result.stdout)["joint"] is True
