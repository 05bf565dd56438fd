"""Reconstruction panels and figures (mae.large.figures), checked against the official demo's arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.figures import (
    PANEL_TITLES,
    ReconstructionPanels,
    make_panels,
    reconstruction_figure,
    save_figure,
    save_panel,
)
from mae.large.image import IMAGENET_MEAN, denormalize, normalize
from tests.helpers import REPO, small_model

# small_model(): 32 x 32 images, 8 x 8 patches, a 4 x 4 grid of 16 patches.
VISIBLE = [1, 6, 11, 12]  # the four patches a 0.75 mask ratio keeps


def known_noise() -> torch.Tensor:
    """Noise that keeps exactly the VISIBLE patches (smallest noise is kept)."""
    noise = torch.arange(16, dtype=torch.float32).unsqueeze(0) + 100.0
    noise[0, VISIBLE] = torch.arange(len(VISIBLE), dtype=torch.float32)
    return noise


def known_mask() -> torch.Tensor:
    mask = torch.ones(1, 16)
    mask[0, VISIBLE] = 0.0
    return mask


def pixel_mask(mask: torch.Tensor) -> torch.Tensor:
    """(L,) patch mask of the 4 x 4 grid -> (32, 32) bool, True = removed."""
    return mask.view(4, 4).bool().repeat_interleave(8, 0).repeat_interleave(8, 1)


def image01(seed: int = 0, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_panels_follow_the_official_demo() -> None:
    model = small_model()
    x01 = image01()
    imgs = normalize(x01)
    with torch.no_grad():
        rec = model.reconstruct(imgs, mask_ratio=0.75, noise=known_noise())
    assert torch.equal(rec.mask, known_mask())

    (panels,) = make_panels(model, imgs, rec.pred, rec.mask)
    removed = pixel_mask(rec.mask[0])
    original = x01[0].permute(1, 2, 0)
    mean = torch.tensor(IMAGENET_MEAN)
    recon = denormalize(model.unpatchify(rec.pred)[0]).permute(1, 2, 0)

    for panel in panels.as_list():
        assert panel.shape == (32, 32, 3) and panel.dtype == torch.float32
        assert panel.min() >= 0 and panel.max() <= 1
    assert torch.equal(panels.mask.bool(), removed)
    assert torch.allclose(panels.original, original, atol=1e-6)
    # masked: removed pixels are 0 in normalised space, i.e. the ImageNet mean colour; visible ones untouched.
    assert torch.allclose(panels.masked[removed], mean.expand(int(removed.sum()), 3), atol=1e-6)
    assert torch.allclose(panels.masked[~removed], original[~removed], atol=1e-6)
    assert torch.allclose(panels.reconstruction, recon, atol=1e-6)
    # reconstruction + visible: the original where visible, the prediction where removed.
    assert torch.allclose(panels.reconstruction_visible[~removed], original[~removed], atol=1e-6)
    assert torch.allclose(panels.reconstruction_visible[removed], recon[removed], atol=1e-6)
    assert not torch.allclose(recon[removed], original[removed], atol=1e-2)  # the test can tell them apart


def test_panels_per_image_in_a_batch() -> None:
    model = small_model()
    imgs = normalize(image01(seed=1, n=2))
    mask = torch.cat([known_mask(), 1 - known_mask()])
    pred = torch.zeros(2, 16, 192)
    panels = make_panels(model, imgs, pred, mask)
    assert len(panels) == 2
    assert int(panels[0].mask.sum()) == 12 * 64 and int(panels[1].mask.sum()) == 4 * 64
    assert torch.equal(panels[0].mask + panels[1].mask, torch.ones(32, 32))


def test_norm_pix_prediction_is_unnormalised_with_visible_statistics() -> None:
    model = small_model(norm_pix_loss=True)
    tile = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    imgs = normalize(tile.repeat(1, 4, 4).unsqueeze(0))  # every patch has the same statistics
    target = model.loss_target(imgs)  # the per-patch normalised patches the model learns to predict
    mask = known_mask()
    removed = pixel_mask(mask[0])

    (panels,) = make_panels(model, imgs, target, mask, norm_pix=True)
    assert torch.allclose(panels.reconstruction[removed], panels.original[removed], atol=1e-5)
    assert torch.allclose(panels.reconstruction_visible, panels.original, atol=1e-5)

    # Without un-normalising, the same prediction is visibly wrong.
    (raw,) = make_panels(model, imgs, target, mask, norm_pix=False)
    assert not torch.allclose(raw.reconstruction[removed], panels.original[removed], atol=1e-2)


def test_norm_pix_uses_only_visible_patches() -> None:
    model = small_model()
    mask = known_mask()
    # Visible patches are flat 0.5 (model units), removed ones flat -1: a zero prediction
    # (the mean of a normalised patch) must come back as the visible mean, 0.5, not the overall mean.
    patches = torch.full((1, 16, 192), -1.0)
    patches[0, VISIBLE] = 0.5
    imgs = model.unpatchify(patches)
    (panels,) = make_panels(model, imgs, torch.zeros(1, 16, 192), mask, norm_pix=True)
    expected = denormalize(torch.full((3, 1, 1), 0.5)).flatten()
    assert torch.allclose(panels.reconstruction, expected.expand(32, 32, 3), atol=1e-6)


def test_norm_pix_needs_a_visible_patch() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="visible patch"):
        make_panels(model, torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, 192), torch.ones(1, 16), norm_pix=True)


@pytest.mark.parametrize(
    ("pred_shape", "mask_shape", "match"),
    [((1, 15, 192), (1, 16), "pred"), ((1, 16, 192), (2, 16), "mask"), ((1, 16, 64), (1, 16), "pred")],
)
def test_make_panels_checks_shapes(pred_shape: tuple, mask_shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_panels(small_model(), torch.zeros(1, 3, 32, 32), torch.zeros(pred_shape), torch.zeros(mask_shape))


# ---- figures --------------------------------------------------------------------------------------
def some_panels() -> ReconstructionPanels:
    model = small_model()
    imgs = normalize(image01(seed=3))
    pred = torch.randn(1, 16, 192, generator=torch.Generator().manual_seed(0))
    (panels,) = make_panels(model, imgs, pred, known_mask())
    return panels


def test_figure_layout_and_titles() -> None:
    fig = reconstruction_figure(some_panels(), title="cat.jpg", loss=0.43214, note="random decoder")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(PANEL_TITLES)
    assert PANEL_TITLES == ("original", "masked", "reconstruction", "reconstruction + visible")
    assert all(not ax.axison for ax in axes)  # no ticks, no frame
    assert len({round(ax.get_position().y0, 6) for ax in axes}) == 1  # one row
    suptitle = fig.get_suptitle()
    assert "cat.jpg" in suptitle and "loss 0.4321" in suptitle and "random decoder" in suptitle


def test_figure_without_title_has_no_suptitle() -> None:
    assert reconstruction_figure(some_panels()).get_suptitle() == ""


def test_save_figure_size(tmp_path: Path) -> None:
    fig = reconstruction_figure(some_panels(), loss=1.0, figsize=(8.0, 2.5))
    path = save_figure(fig, tmp_path / "out" / "fig.png", dpi=40)
    assert path == tmp_path / "out" / "fig.png"
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size == (320, 100)
    assert sorted(p.name for p in path.parent.iterdir()) == ["fig.png"]


def test_failing_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = reconstruction_figure(some_panels())

    def boom(fname, *args, **kwargs):
        Path(fname).write_bytes(b"half a png")  # a partial write before the failure
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, tmp_path / "fig.png")
    assert list(tmp_path.iterdir()) == []


def test_failing_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    fig = reconstruction_figure(some_panels())
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError, match="no space"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_save_panel_native_size(tmp_path: Path) -> None:
    panels = some_panels()
    path = save_panel(panels.reconstruction_visible, tmp_path / "paste.png")
    with Image.open(path) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
        pixels = np.asarray(img).astype(np.float64) / 255
    assert np.abs(pixels - panels.reconstruction_visible.numpy()).max() <= 0.5 / 255 + 1e-6

    mask_path = save_panel(panels.mask, tmp_path / "mask.png")
    with Image.open(mask_path) as img:
        assert img.mode == "L"
        assert np.array_equal(np.asarray(img) == 255, panels.mask.bool().numpy())


def test_save_panel_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_panel(torch.zeros(4, 4, 3), tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


def test_save_panel_rejects_channels_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        save_panel(torch.zeros(3, 4, 4), tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


def test_figures_never_import_pyplot(tmp_path: Path) -> None:
    # A fresh interpreter: pyplot would install global state (and pick a GUI backend) if imported.
    code = (
        "import sys, torch\n"
        "from mae.large.figures import ReconstructionPanels, reconstruction_figure, save_figure\n"
        "z = torch.zeros(4, 4, 3)\n"
        "p = ReconstructionPanels(z, z, z, z, torch.zeros(4, 4))\n"
        f"save_figure(reconstruction_figure(p, loss=0.5), {str(tmp_path / 'f.png')!r}, dpi=20)\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f.png").stat().st_size > 0


def test_drawable_text_escapes_what_the_font_cannot_draw() -> None:
    import warnings

    from mae.large.figures import drawable_text

    assert drawable_text("café — x.jpg") == "café — x.jpg"  # Latin and punctuation stay
    assert drawable_text("猫.png") == "\\u732b.png"
    assert drawable_text("a\udcffb") == "a\\xffb"  # a file name that is not valid UTF-8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a missing glyph when it draws one
        fig = reconstruction_figure(some_panels(), title="猫の写真.png")
        fig.canvas.draw()
