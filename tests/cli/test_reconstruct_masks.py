"""`mae-large reconstruct` with chosen masks, sweeps, error panels, animations, the gallery and the target."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from PIL import Image

from cli.app import app
from mae.large.models.masks import build_mask, parse_mask
from tests.cli.conftest import flat, write_image


def run(runner, *args):
    return runner.invoke(app, ["reconstruct", *map(str, args)])


def removed(spec: str, ratio: float = 0.75, seed: int = 2) -> list[int]:
    return torch.nonzero(build_mask(parse_mask(spec), (32, 32), 8, ratio=ratio, seed=seed)).flatten().tolist()


@pytest.mark.parametrize("spec", ["block:0.5", "grid", "box:0,0,16,32", "right", "center:0.25", "patches:0,5,15"])
def test_a_chosen_mask_is_the_mask_used(runner, small_arch, small_ckpts, images, tmp_path, spec) -> None:
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--mask", spec, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["images"][0]
    assert row["mask"] == removed(spec)  # the JSON records the removed patch indices
    with Image.open(row["output"]) as im:
        assert im.size == (1600, 480)


def test_a_mask_file(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    mask_png = tmp_path / "m.png"
    img = Image.new("L", (32, 32), 0)
    img.paste(255, (16, 0, 32, 16))  # the top-right quarter
    img.save(mask_png)
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--mask", f"file:{mask_png}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"][0]["mask"] == [2, 3, 6, 7]


@pytest.mark.parametrize(("args", "message"), [
    (["--mask", "right", "--mask-ratio", "0.25,0.5"], "same patches at every ratio"),
    (["--mask", "block:0.5", "--mask-ratio", "0.75"], "give one of them"),
    (["--mask", "zoom"], "unknown mask"),
    (["--panels", "original,depth"], "depth"),
    (["--mask-ratio", "0.5,1.2"], "[0, 0.99]"),
    (["--mask-ratio", "0.25,0.5", "--save-panels"], "--save-panels"),
    (["--target", "rgb"], "--target"),
    (["--norm-pix", "--target", "pixels"], "contradicts"),
])
def test_bad_combinations_are_usage_errors(runner, small_arch, small_ckpts, images, tmp_path, args, message) -> None:
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)
    assert not (tmp_path / "out").exists()


def test_a_sweep_is_one_figure_with_nested_masks(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--mask-ratio", "0.25,0.5,0.75",
                 "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["images"][0]
    sweep = row["sweep"]
    assert [s["mask_ratio"] for s in sweep] == [0.25, 0.5, 0.75]
    assert [len(s["mask"]) for s in sweep] == [4, 8, 12]
    for lower, higher in zip(sweep, sweep[1:]):
        assert set(lower["mask"]) <= set(higher["mask"])  # same seed: nested
    single = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "one", "--mask-ratio", "0.5", "--json")
    one = json.loads(single.stdout)["images"][0]
    assert one["mask"] == sweep[1]["mask"] and one["loss"] == pytest.approx(sweep[1]["loss"], abs=0)
    with Image.open(row["output"]) as im:
        assert im.size[1] > 3 * 300  # three rows


def test_the_error_panel_widens_the_figure(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--panels",
                 "original,masked,visible,error", "--json")
    assert result.exit_code == 0, result.output
    with Image.open(json.loads(result.stdout)["images"][0]["output"]) as im:
        assert im.size == (1600, 580)  # 4 panels of 4 inches, 4.8 + 1 inch for the colour bar


@pytest.mark.parametrize(("over", "frames", "fmt"), [("ratios", 18, "gif"), ("seeds", 12, "webp")])
def test_animation(runner, small_arch, small_ckpts, images, tmp_path, over, frames, fmt) -> None:
    result = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--animate", "--animate-over", over,
                 "--animate-format", fmt, "--json")
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["images"][0]["files"]
    animation = Path(files[-1])
    assert animation.suffix == f".{fmt}"
    with Image.open(animation) as im:
        # Ratios 0.1..0.95 on a 16-patch grid: 0.95 keeps no patch, so 17 frames are drawn there.
        assert im.n_frames == (frames - 1 if over == "ratios" else frames)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def test_a_folder_gets_a_gallery(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    write_image(images[0].parent / "a <b> & c.png", seed=5)
    out = tmp_path / "out"
    result = run(runner, images[0].parent, "-c", small_ckpts[0], "--out", out, "--json")
    assert result.exit_code == 0, result.output
    index = Path(json.loads(result.stdout)["gallery"])
    assert index == out / "index.html"
    parser = _Links()
    parser.feed(index.read_text())
    assert parser.links and all((out / unquote(link)).is_file() for link in parser.links)
    assert "a &lt;b&gt; &amp; c.png" in index.read_text()
    single = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "single", "--json")
    assert json.loads(single.stdout)["gallery"] is None  # files, not a folder: no gallery


def test_a_foreign_index_is_never_overwritten(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<html>mine</html>")
    result = run(runner, images[0].parent, "-c", small_ckpts[0], "--out", out)
    assert result.exit_code == 1 and (out / "index.html").read_text() == "<html>mine</html>"
    assert "index.html" in result.stderr


def test_target_is_reported_and_norm_pix_is_an_alias(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    auto = json.loads(run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "a", "--json").stdout)
    assert auto["target"] in ("pixels", "norm-pix") and auto["target_how"]
    alias = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "b", "--norm-pix", "--json")
    named = run(runner, images[0], "-c", small_ckpts[0], "--out", tmp_path / "c", "--target", "norm-pix", "--json")
    a, b = json.loads(alias.stdout), json.loads(named.stdout)
    assert a["target"] == b["target"] == "norm-pix" and a["images"][0]["loss"] == b["images"][0]["loss"]


def test_worker_processes_change_no_result(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    (images[0].parent / "broken.png").write_bytes(b"not a png")
    runs = [json.loads(run(runner, images[0].parent, "-c", small_ckpts[0], "--out", tmp_path / f"w{w}", "--workers",
                           w, "--batch-size", "2", "--json").stdout) for w in (0, 2)]
    assert [r["image"] for r in runs[0]["images"]] == [r["image"] for r in runs[1]["images"]]
    assert [r.get("loss") for r in runs[0]["images"]] == [r.get("loss") for r in runs[1]["images"]]
    assert runs[0]["failed"] == runs[1]["failed"] == 1
    assert [Path(r["image"]).name for r in runs[1]["images"] if "error" in r] == ["broken.png"]
