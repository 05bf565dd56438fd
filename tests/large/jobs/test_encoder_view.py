"""Attention and PCA over files (order, failures, joint PCA), and their figures' panels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import ImageFailure, load_image
from mae.large.jobs.encoder_view import AttentionResult, PCAResult, attention_files, pca_files
from mae.large.models.masks import patches_mask
from mae.large.viz.attention import attention_maps
from mae.large.viz.encoder_figures import REMOVED_GREY, attention_figure, figure_titles, overlay, pca_figure
from mae.large.viz.pca import fit_pca, project
from tests.helpers import REPO, small_model


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = write_images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"not an image")
    return [paths[2], bad, paths[0], paths[1]]


def test_attention_files_in_input_order_with_failures(files: list[Path]) -> None:
    model = small_model()
    results = list(attention_files(model, files, layers=[0, -1], rollout=True, batch_size=2))
    assert [r.path for r in results] == files
    assert isinstance(results[1], ImageFailure) and "broken.png" in results[1].reason
    ok = [r for r in results if isinstance(r, AttentionResult)]
    assert [r.index for r in ok] == [0, 2, 3]
    for r in ok:  # each image's maps equal a direct call on that image alone
        with torch.no_grad():
            direct = attention_maps(model, load_image(r.path, size=(32, 32))[None], layers=[0, -1], rollout=True)
        assert r.maps.layers == (0, 1) and r.maps.patches.dtype == torch.int64
        assert torch.allclose(r.maps.mean_grid(1), direct.mean_grid(1), atol=1e-6)
        assert torch.allclose(r.maps.cls[1], direct.cls[1], atol=1e-6)
        assert torch.allclose(r.maps.rollout, direct.rollout, atol=1e-6)


def test_attention_files_with_a_mask(files: list[Path]) -> None:
    mask = patches_mask((4, 4), list(range(8)))
    results = [r for r in attention_files(small_model(), files, mask=mask) if isinstance(r, AttentionResult)]
    assert all(r.maps.patches.tolist() == [list(range(8, 16))] for r in results)


def test_nonfinite_maps_are_per_image_failures(files: list[Path]) -> None:
    model = small_model()
    with torch.no_grad():
        model.blocks[0].attn.qkv.bias.fill_(float("nan"))
    results = list(attention_files(model, files))
    assert all(isinstance(r, ImageFailure) for r in results)
    assert "not finite" in results[0].reason and str(files[0]) in results[0].reason
    pca = list(pca_files(model, files))
    assert all(isinstance(r, ImageFailure) for r in pca) and "not finite" in pca[0].reason


def test_joint_pca_over_files_equals_a_direct_pca(files: list[Path]) -> None:
    model = small_model()
    results = list(pca_files(model, files, layer=-1, joint=True, with_foreground=True, batch_size=2))
    assert [r.path for r in results] == files and isinstance(results[1], ImageFailure)
    ok = [r for r in results if isinstance(r, PCAResult)]
    good = [files[0], files[2], files[3]]
    with torch.no_grad():
        tokens = model.forward_intermediates(torch.stack([load_image(p, size=(32, 32)) for p in good]), [-1],
                                             norm=True, output_fmt="NLC", intermediates_only=True)[0]
    direct = fit_pca(tokens)
    assert ok[0].basis.count == 3 * 16 and ok[0].basis is ok[1].basis  # one basis for all
    signs = (ok[0].basis.components * direct.components).sum(1).sign()
    assert torch.allclose(ok[0].basis.components, direct.components * signs[:, None], atol=1e-5)
    for r, t in zip(ok, tokens):
        assert r.rgb.shape == (4, 4, 3) and r.foreground.shape == (4, 4)
        assert torch.allclose(r.coords.reshape(16, 3), project(t, direct) * signs.float(), atol=1e-4)


def test_per_image_pca_fits_each_image(files: list[Path]) -> None:
    results = [r for r in pca_files(small_model(), files, joint=False) if isinstance(r, PCAResult)]
    assert len(results) == 3 and results[0].basis.count == 16 and results[0].basis is not results[1].basis


def image_and_maps(folder: Path, mask=None):
    model = small_model()
    image = load_image(write_images(folder, 1)[0], size=(32, 32))
    with torch.no_grad():
        maps = attention_maps(model, image[None], layers=[0, 1], rollout=True, mask=mask)
    return image, maps


def test_attention_figure_panels(tmp_path: Path) -> None:
    image, maps = image_and_maps(tmp_path)
    fig = attention_figure(image, maps, title="cat.jpg", note="random weights")
    heads = [f"head {k}" for k in range(4)]
    assert figure_titles(fig) == ["input", "rollout", "mean", *heads, "mean", *heads]
    assert [s.get_suptitle() for s in fig.subfigs[2:]] == ["block 0", "block 1"]
    fig = attention_figure(image, maps, heads="mean")
    assert figure_titles(fig) == ["input", "rollout", "block 0 (mean)", "block 1 (mean)"]


def test_removed_patches_are_drawn_grey(tmp_path: Path) -> None:
    mask = patches_mask((4, 4), [0, 1, 2, 3, 4, 5, 6, 7])  # the top half
    image, maps = image_and_maps(tmp_path, mask)
    fig = attention_figure(image, maps, heads="mean")
    for ax in fig.axes:
        pixels = np.asarray(ax.images[0].get_array())  # (32, 32, 3)
        assert np.all(pixels[:16] == np.float32(REMOVED_GREY)), ax.get_title()
        assert not np.all(pixels[16:] == np.float32(REMOVED_GREY)), ax.get_title()
    drawn = overlay(torch.zeros(32, 32, 3), maps.mean_grid(1)[0])
    assert torch.all(drawn[:16] == REMOVED_GREY) and torch.all(drawn[16:] != REMOVED_GREY)


def test_pca_figure_panels(tmp_path: Path) -> None:
    image, _ = image_and_maps(tmp_path)
    rgb = torch.rand(4, 4, 3)
    fg = torch.zeros(4, 4, dtype=torch.bool)
    fg[0, 0] = True
    fig = pca_figure(image, rgb, layer=23, foreground=fg, title="x")
    assert figure_titles(fig) == ["input", "PCA, block 23", "foreground"]
    drawn = np.asarray(fig.axes[2].images[0].get_array())
    assert np.all(drawn[8:] == 0) and np.allclose(drawn[:8, :8], rgb[0, 0].numpy())
    assert figure_titles(pca_figure(image, rgb, layer=0)) == ["input", "PCA, block 0"]


def test_encoder_view_figures_never_import_pyplot(tmp_path: Path) -> None:
    code = (
        "import sys, torch\n"
        "from mae.large.viz.attention import attention_maps\n"
        "from mae.large.viz.encoder_figures import attention_figure, pca_figure\n"
        "from mae.large.viz.figures import save_figure\n"
        "from tests.helpers import small_model\n"
        "m = small_model(); x = torch.randn(1, 3, 32, 32)\n"
        "maps = attention_maps(m, x, layers=None, rollout=True)\n"
        f"save_figure(attention_figure(x[0], maps), {str(tmp_path / 'a.png')!r}, dpi=20)\n"
        f"save_figure(pca_figure(x[0], torch.rand(4, 4, 3), layer=1), {str(tmp_path / 'p.png')!r}, dpi=20)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0
