"""`mae-large reconstruct`: figures, masks, batching, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.app import app
from tests.cli.conftest import write_image


def _run(runner, *args):
    return runner.invoke(app, ["reconstruct", *map(str, args)])


def _mask_for_seed(seed: int, num_patches: int, ratio: float = 0.75) -> torch.Tensor:
    """The mask the official demo draws after torch.manual_seed(seed): 1 = removed."""
    torch.manual_seed(seed)
    noise = torch.rand(1, num_patches)
    keep = int(num_patches * (1 - ratio))
    mask = torch.ones(num_patches)
    mask[torch.argsort(noise, dim=1)[0, :keep]] = 0
    return mask


def test_one_image(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, images[0], "-c", small_ckpts[0], "--out", out)
    assert result.exit_code == 0, result.output
    figure = out / "img0.png"
    with Image.open(figure) as im:
        assert im.size == (1600, 480) and im.format == "PNG"
    assert "reconstructions (mask ratio 0.75, seed 2)" in result.stdout and "loss" in result.stdout
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_masked_panel_is_masked_where_the_mask_says(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, images[0], "-c", small_ckpts[0], "--out", out, "--save-panels", "--seed", "5")
    assert result.exit_code == 0, result.output
    masked = np.asarray(Image.open(out / "img0.masked.png")).astype(int)
    original = np.asarray(Image.open(out / "img0.original.png")).astype(int)
    assert masked.shape == original.shape == (32, 32, 3)
    mean_colour = np.round(np.array([0.485, 0.456, 0.406]) * 255)
    mask = _mask_for_seed(5, 16).reshape(4, 4)
    for r in range(4):
        for c in range(4):
            block = masked[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
            if mask[r, c] == 1:
                assert np.abs(block - mean_colour).max() <= 1, (r, c)
            else:
                assert np.array_equal(block, original[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]), (r, c)
    for label in ("original", "masked", "reconstruction", "reconstruction_visible"):
        assert (out / f"img0.{label}.png").exists()


def test_same_seed_same_mask_other_seed_other_mask(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    panels = {}
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        out = tmp_path / name
        assert _run(runner, images[1], "-c", small_ckpts[0], "--out", out, "--save-panels", "--seed", seed).exit_code == 0
        panels[name] = (out / "img1.masked.png").read_bytes()
    assert panels["a"] == panels["b"] and panels["a"] != panels["c"]


def test_folder_batches_and_json(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    results = {}
    for batch in (1, 2):
        out = tmp_path / f"b{batch}"
        result = runner.invoke(app, ["reconstruct", str(images[0].parent), "-c", str(small_ckpts[0]), "--out", str(out),
                                     "--batch-size", str(batch), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert [Path(r["image"]).name for r in data["images"]] == ["img0.png", "img1.png", "img2.png"]
        results[batch] = [r["loss"] for r in data["images"]]
        assert all(Path(r["output"]).exists() for r in data["images"])
    assert results[1] == pytest.approx(results[2], rel=1e-6)


def test_bad_images_are_skipped_and_reported(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    folder = images[0].parent
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    truncated = folder / "cut.png"
    write_image(truncated, size=(64, 64), seed=9)
    truncated.write_bytes(truncated.read_bytes()[:200])
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(folder), "-c", str(small_ckpts[0]), "--out", str(out), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["failed"] == 3
    failed = {Path(r["image"]).name for r in data["images"] if "error" in r}
    assert failed == {"empty.png", "notes.jpg", "cut.png"}
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png", "img2.png"]
    assert "Traceback" not in result.output


def test_folder_without_images(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = _run(runner, empty, "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "holds no images" in result.stderr and not (tmp_path / "out").exists()


def test_encoder_only_is_refused(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(runner, images[0], "-c", small_ckpts[1], "--out", out)
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "mae_visualize_vit_large.pth" in error[0] and "mae-large download visualize" in error[0]
    assert not out.exists()


def test_allow_random_decoder_labels_the_figure(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[1]), "--out", str(out),
                                 "--allow-random-decoder", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "encoder-only" and "random decoder" in data["images"][0]["note"]
    assert (out / "img0.png").exists()


def test_missing_checkpoint_says_how_to_get_it(runner, small_arch, images, tmp_path: Path) -> None:
    result = _run(runner, images[0], "-c", tmp_path / "data" / "mae_visualize_vit_large.pth", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr and "mae-large download visualize" in result.stderr
    assert "Traceback" not in result.output


def test_norm_pix_and_center_crop(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--norm-pix", "--crop", "center", "--json"])
    assert result.exit_code == 0, result.output
    assert "un-normalised" in json.loads(result.stdout)["images"][0]["note"]


@pytest.mark.parametrize(("args", "code"), [
    (["--mask-ratio", "1.0"], 2), (["--batch-size", "0"], 2), (["--crop", "zoom"], 2), (["--size", "100"], 2),
    (["--dtype", "int8"], 2), (["--device", "tpu"], 2),  # an unknown device name: a usage error, before torch
])
def test_bad_options(runner, small_arch, small_ckpts, images, tmp_path: Path, args, code) -> None:
    result = _run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "o", *args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_interrupted_write_leaves_no_partial_file(runner, small_arch, small_ckpts, images, tmp_path: Path,
                                                  monkeypatch) -> None:
    from matplotlib.figure import Figure

    def explode(self, fname, **kwargs):
        Path(fname).write_bytes(b"half a png")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", explode)
    out = tmp_path / "out"
    result = _run(runner, images[0], "-c", small_ckpts[0], "--out", out)
    assert result.exit_code == 130
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_vit_large_end_to_end(runner, vit_l_files, images, tmp_path: Path) -> None:
    """The real architecture once: the full ViT-L checkpoint, a real image, the default 224 size."""
    full, _, _ = vit_l_files
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(full), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "full" and np.isfinite(data["images"][0]["loss"])
    with Image.open(out / "img0.png") as im:
        assert im.size == (1600, 480)


def test_out_folder_equal_to_input_folder_never_overwrites_inputs(runner, small_arch, small_ckpts, images) -> None:
    # The output guard refuses it outright (an output never mixes with what a command reads); nothing is written.
    folder = images[0].parent
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = runner.invoke(app, ["reconstruct", str(folder), "-c", str(small_ckpts[0]), "--out", str(folder), "--json"])
    assert result.exit_code == 1 and "is the input" in json.loads(result.stdout)["error"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_figure_names_never_clash_with_an_input_image_named_like_them(runner, small_arch, small_ckpts, tmp_path) -> None:
    # Inputs from two folders whose figures would share names, and an input image named like a figure.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_image(tmp_path / "a" / "img0.png"), write_image(tmp_path / "b" / "img0.png", seed=1)
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(first), str(second), "-c", str(small_ckpts[0]), "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(Path(r["output"]).name for r in json.loads(result.stdout)["images"]) == ["img0.png", "img0_2.png"]


def test_colliding_names_get_distinct_files(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(("a.jpg", "a.png", "a_2.png")):
        write_image(folder / name, seed=i)
    out = tmp_path / "out"
    result = runner.invoke(app, ["reconstruct", str(folder), "-c", str(small_ckpts[0]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    outputs = [Path(r["output"]).name for r in json.loads(result.stdout)["images"]]
    assert len(set(outputs)) == 3 and len(list(out.glob("*.png"))) == 3


def test_undecodable_file_name_is_drawn(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    import os

    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # not valid UTF-8: a surrogate escape in Python
    write_image(folder / name)
    result = _run(runner, folder / name, "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_very_long_file_name(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    path = write_image(tmp_path / ("x" * 245 + ".png"))
    result = _run(runner, path, "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / ("x" * 245 + ".png")).exists()



def test_sub_folders_are_reported_and_walked_with_recursive(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    write_image(root / "top.png")
    write_image(root / "cats" / "cat.png", seed=1)
    out = tmp_path / "out"
    flat_run = _run(runner, root, "-c", small_ckpts[0], "--out", out)
    assert flat_run.exit_code == 0
    assert "1 sub-folder(s) were not walked (cats); pass --recursive" in " ".join(flat_run.stderr.split())
    assert sorted(p.name for p in out.glob("*.png")) == ["top.png"]
    deep = _run(runner, root, "-c", small_ckpts[0], "--out", out, "--recursive", "--json")
    assert deep.exit_code == 0
    assert [Path(r["image"]).name for r in json.loads(deep.stdout)["images"]] == ["top.png", "cat.png"]


def test_an_input_given_twice_gets_a_note(runner, small_arch, small_ckpts, images, tmp_path: Path) -> None:
    result = _run(runner, images[0], images[0], "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert "was given more than once; it is processed once" in " ".join(result.stderr.split())


def test_when_every_input_fails_nothing_is_said_to_be_written(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    result = _run(runner, broken, "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())
    assert "the input failed; nothing was written" in text and "the others were written" not in text


def test_non_latin_file_names_draw_without_warnings(runner, small_arch, small_ckpts, tmp_path: Path) -> None:
    image = write_image(tmp_path / "猫の写真.png")
    result = _run(runner, image, "-c", small_ckpts[0], "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Glyph" not in result.stderr and "Warning" not in result.stderr
    assert (tmp_path / "out" / "猫の写真.png").is_file()
