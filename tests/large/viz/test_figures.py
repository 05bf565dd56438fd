"""Reconstruction panels and figures (mae.large.viz.figures), checked against the official demo's arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import IMAGENET_MEAN, denormalize, normalize
from mae.large.viz.figures import reconstruction_figure, save_figure
from mae.large.viz.panels import PANEL_TITLES, ReconstructionPanels, make_panels, save_panel
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
        "from mae.large.viz.figures import reconstruction_figure, save_figure\n"
        "from mae.large.viz.panels import ReconstructionPanels\n"
        "from mae.large.viz.animation import save_animation\n"
        "from mae.large.viz.figures import panels_figure, sweep_figure\n"
        "z = torch.zeros(4, 4, 3)\n"
        "p = ReconstructionPanels(z, z, z, z, torch.zeros(4, 4))\n"
        "e = torch.ones(4, 4)\n"
        f"save_figure(reconstruction_figure(p, loss=0.5), {str(tmp_path / 'f.png')!r}, dpi=20)\n"
        f"save_figure(panels_figure(p, ['error'], error=e), {str(tmp_path / 'e.png')!r}, dpi=20)\n"
        f"save_figure(sweep_figure([(0.5, 1.0, p, e)], names=['visible', 'error'], nested=True), "
        f"{str(tmp_path / 's.png')!r}, dpi=20)\n"
        f"save_animation([p, p], {str(tmp_path / 'a.gif')!r}, labels=['seed 1', 'seed 2'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / name).stat().st_size > 0 for name in ("f.png", "e.png", "s.png", "a.gif"))


def test_drawable_text_escapes_what_the_font_cannot_draw() -> None:
    import warnings

    from mae.large.viz.figures import drawable_text

    assert drawable_text("café — x.jpg") == "café — x.jpg"  # Latin and punctuation stay
    assert drawable_text("猫.png") == "\\u732b.png"
    assert drawable_text("a\udcffb") == "a\\xffb"  # a file name that is not valid UTF-8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a missing glyph when it draws one
        fig = reconstruction_figure(some_panels(), title="猫の写真.png")
        fig.canvas.draw()


# ---- error map ------------------------------------------------------------------------------------
def seeded_reconstruction(model, n: int = 2, ratio: float = 0.75, seed: int = 5):
    """Random normalised images and a reconstruction under a seeded random mask."""
    imgs = normalize(image01(seed=seed, n=n))
    noise = torch.rand(n, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rec = model.reconstruct(imgs, mask_ratio=ratio, noise=noise)
    return imgs, rec


@pytest.mark.parametrize("norm_pix", [False, True])
def test_error_map_mean_over_removed_patches_is_the_image_loss(norm_pix: bool) -> None:
    from mae.large.viz.panels import error_map

    model = small_model(norm_pix_loss=norm_pix)
    imgs, rec = seeded_reconstruction(model)
    errors = error_map(model, imgs, rec.pred, rec.mask)
    assert errors.shape == (2, 32, 32) and errors.dtype == torch.float32
    for i in range(2):
        removed = pixel_mask(rec.mask[i])
        assert torch.equal(torch.isnan(errors[i]), ~removed)  # NaN exactly on the visible patches
        assert bool((errors[i][removed] >= 0).all())
    expected = model.per_image_loss(imgs, rec.pred, rec.mask)
    assert torch.allclose(errors.nanmean(dim=(1, 2)), expected, rtol=1e-5, atol=0)
    assert not torch.allclose(expected[0], expected[1])  # two images, two different losses


def test_error_map_places_each_patch_error_on_its_pixels() -> None:
    from mae.large.viz.panels import error_map

    model = small_model()
    imgs = normalize(image01(seed=4))
    pred = model.loss_target(imgs).clone()  # a perfect prediction ...
    pred[0, 3] += 0.5  # ... except patch 3 (row 0, column 3), off by 0.5 everywhere
    mask = torch.ones(1, 16)
    mask[0, 0] = 0.0  # patch 0 visible
    (errors,) = error_map(model, imgs, pred.bfloat16().float(), mask)
    assert torch.isnan(errors[:8, :8]).all()
    assert torch.allclose(errors[:8, 24:], torch.full((8, 8), 0.25), atol=5e-3)
    rest = errors.clone()
    rest[:8, 24:] = 0.0
    assert torch.nan_to_num(rest).abs().max() < 1e-3  # every other removed patch: (almost) no error


def test_error_map_checks_shapes() -> None:
    from mae.large.viz.panels import error_map

    with pytest.raises(ValueError, match="pred"):
        error_map(small_model(), torch.zeros(1, 3, 32, 32), torch.zeros(1, 15, 192), torch.zeros(1, 16))


# ---- chosen panels ----------------------------------------------------------------------------------
def image_axes(fig_or_subfig) -> list:
    return [ax for ax in fig_or_subfig.get_axes() if ax.get_images()]


def panels_and_error(ratio: float = 0.75, seed: int = 5):
    from mae.large.viz.panels import error_map

    model = small_model()
    imgs, rec = seeded_reconstruction(model, n=1, ratio=ratio, seed=seed)
    (panels,) = make_panels(model, imgs, rec.pred, rec.mask)
    return panels, error_map(model, imgs, rec.pred, rec.mask)[0], float(rec.per_image_loss[0])


@pytest.mark.parametrize(
    "names",
    [("original",), ("masked", "visible"), ("error", "original"), ("original", "masked", "reconstruction", "visible", "error")],
)
def test_panels_figure_draws_the_chosen_panels_in_order(names: tuple[str, ...]) -> None:
    from mae.large.viz.figures import panels_figure

    panels, error, loss = panels_and_error()
    fig = panels_figure(panels, names, error=error, title="cat.jpg", loss=loss, figsize=(2.0 * len(names), 3.0))
    axes = image_axes(fig)
    assert len(axes) == len(names)
    titles = {"original": "original", "masked": "masked", "reconstruction": "reconstruction",
              "visible": "reconstruction + visible", "error": "squared error"}
    assert [ax.get_title() for ax in axes] == [titles[n] for n in names]
    assert sorted(axes, key=lambda ax: ax.get_position().x0) == axes  # left to right, in the order given
    assert f"loss {loss:.4f}" in fig.get_suptitle()
    labels = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert ("squared error (loss units)" in labels) == ("error" in names)


def test_default_panels_figure_is_the_demo_figure() -> None:
    from mae.large.viz.figures import DEFAULT_PANELS, panels_figure

    panels = some_panels()
    fig = panels_figure(panels, title="x", loss=0.5)
    assert DEFAULT_PANELS == ("original", "masked", "reconstruction", "visible")
    assert [ax.get_title() for ax in image_axes(fig)] == list(PANEL_TITLES)
    assert tuple(fig.get_size_inches()) == (16.0, 4.8)
    for ax, panel in zip(image_axes(fig), panels.as_list()):
        assert np.array_equal(ax.get_images()[0].get_array(), panel.numpy())


def test_error_panel_colours_removed_patches_and_grays_visible_ones() -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgba

    from mae.large.viz.figures import ERROR_LABEL, panels_figure

    panels, error, _ = panels_and_error()
    fig = panels_figure(panels, ["error"], error=error, figsize=(3.0, 4.0))
    (ax,) = image_axes(fig)
    image = ax.get_images()[0]
    assert image.get_clim() == (0.0, float(torch.nan_to_num(error).max()))
    (cax,) = ax.child_axes
    assert cax.get_xlabel() == ERROR_LABEL

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)
    box = ax.get_window_extent()
    removed = pixel_mask(torch.isnan(error[::8, ::8]).logical_not().flatten().float())

    def at(row: int, col: int) -> np.ndarray:  # the drawn colour at the centre of patch (row, col)
        x = box.x0 + (col + 0.5) * box.width / 4
        y = box.y1 - (row + 0.5) * box.height / 4
        return pixels[pixels.shape[0] - int(round(y)), int(round(x))]

    vmax = float(torch.nan_to_num(error).max())
    for row in range(4):
        for col in range(4):
            if removed[row * 8, col * 8]:
                value = float(error[row * 8, col * 8])
                expected = np.array(colormaps["inferno"](value / vmax)[:3]) * 255
            else:
                expected = np.array(to_rgba("0.82")[:3]) * 255
            assert np.abs(at(row, col) - expected).max() <= 2, (row, col)


@pytest.mark.parametrize(
    ("names", "match"),
    [(["original", "edges"], r"unknown panel 'edges'.*original, masked, reconstruction, visible, error"),
     ([], "at least one panel"),
     (["masked", "masked"], "'masked' is named twice")],
)
def test_panels_figure_rejects_bad_names(names: list[str], match: str) -> None:
    from mae.large.errors import InvalidArgumentError
    from mae.large.viz.figures import panels_figure

    with pytest.raises(InvalidArgumentError, match=match) as info:
        panels_figure(some_panels(), names)
    assert info.value.argument == "panels"


def test_error_panel_needs_a_matching_error_map() -> None:
    from mae.large.viz.figures import panels_figure

    panels, error, _ = panels_and_error()
    with pytest.raises(ValueError, match="error_map"):
        panels_figure(panels, ["masked", "error"])
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        panels_figure(panels, ["error"], error=error[:16])
    assert len(image_axes(panels_figure(panels, ["masked"], error=error))) == 1  # ignored without the panel


# ---- mask-ratio sweep --------------------------------------------------------------------------------
def sweep_rows(ratios=(0.25, 0.5, 0.75), seed: int = 7):
    """One image at several ratios with nested masks (one seed), as the CLI would build them."""
    from mae.large.models.masks import nested_masks, noise_for_mask
    from mae.large.viz.figures import SweepRow
    from mae.large.viz.panels import error_map

    model = small_model()
    imgs = normalize(image01(seed=seed))
    rows = []
    for ratio, mask in zip(ratios, nested_masks((4, 4), list(ratios), seed)):
        with torch.no_grad():
            rec = model.reconstruct(imgs, mask_ratio=ratio, noise=noise_for_mask(mask[None]))
        (panels,) = make_panels(model, imgs, rec.pred, rec.mask)
        rows.append(SweepRow(ratio, float(rec.per_image_loss[0]), panels, error_map(model, imgs, rec.pred, rec.mask)[0]))
    return rows


def test_sweep_figure_rows_and_titles() -> None:
    from mae.large.viz.figures import NESTED_NOTE, sweep_figure

    rows = sweep_rows()
    fig = sweep_figure(rows, title="cat.jpg", nested=True, figsize=(6.0, 8.0))
    header, *row_figs = fig.subfigs
    assert len(row_figs) == 3
    for row, sub in zip(rows, row_figs):
        # the change: each row states the share of patches it actually removed
        assert sub.get_suptitle() == f"mask ratio {row.ratio:.2f}, removed {row.ratio:.2f} | loss {row.loss:.4f}"
        assert len(image_axes(sub)) == 4
    assert row_figs[0].get_suptitle().startswith("mask ratio 0.25, removed 0.25 | loss ")
    assert [ax.get_title() for ax in image_axes(row_figs[0])] == list(PANEL_TITLES)
    assert all(ax.get_title() == "" for sub in row_figs[1:] for ax in image_axes(sub))  # names on the first row only
    # rows top to bottom in the order given (in display units: an axes' position is relative to its subfigure,
    # and the first row, with the panel names, is taller than the others)
    tops = [max(ax.get_window_extent().y1 for ax in image_axes(sub)) for sub in row_figs]
    assert tops == sorted(tops, reverse=True)
    texts = [t.get_text() for t in header.texts]
    assert texts[0] == "cat.jpg" and texts[1] == NESTED_NOTE and "superset" in NESTED_NOTE
    # the masks really are nested: each row's removed pixels contain the previous row's
    for lower, higher in zip(rows, rows[1:]):
        assert bool((higher.panels.mask >= lower.panels.mask).all()) and higher.panels.mask.sum() > lower.panels.mask.sum()


def test_sweep_figure_without_header_or_nesting() -> None:
    from mae.large.viz.figures import NESTED_NOTE, sweep_figure

    rows = sweep_rows(ratios=(0.5, 0.75))
    fig = sweep_figure([tuple(r)[:3] for r in rows], figsize=(6.0, 5.0))  # plain tuples, no error maps
    assert [sub.get_suptitle()[:15] for sub in fig.subfigs] == ["mask ratio 0.50", "mask ratio 0.75"]
    all_text = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert NESTED_NOTE not in all_text


def test_sweep_figure_error_rows_share_one_scale() -> None:
    from mae.large.viz.figures import sweep_figure

    rows = sweep_rows()
    fig = sweep_figure(rows, names=("masked", "error"), figsize=(4.0, 9.0))
    top = max(float(torch.nan_to_num(r.error).max()) for r in rows)
    clims = {sub.get_axes()[1].get_images()[0].get_clim() for sub in fig.subfigs}
    assert clims == {(0.0, top)}
    per_row = [float(torch.nan_to_num(r.error).max()) for r in rows]
    assert len(set(per_row)) > 1  # the rows' own maxima differ, so sharing is visible


def test_sweep_figure_rejects_bad_rows() -> None:
    from mae.large.viz.figures import sweep_figure

    panels = some_panels()
    with pytest.raises(ValueError, match="at least one row"):
        sweep_figure([])
    with pytest.raises(ValueError, match="row 1"):
        sweep_figure([(0.5, 1.0, panels), (1.5, 1.0, panels)])
    with pytest.raises(ValueError, match="row 0's error"):
        sweep_figure([(0.5, 1.0, panels)], names=["error"])


def test_mask_ratio_label() -> None:
    from mae.large.viz.figures import mask_ratio_label

    assert mask_ratio_label(0.5) == "mask ratio 0.50"
    assert mask_ratio_label(0.35) == "mask ratio 0.35"
    assert mask_ratio_label(0.125) == "mask ratio 0.125"


# ---- animation ------------------------------------------------------------------------------------
def test_animation_ratios() -> None:
    from mae.large.models.mae import check_mask_ratio
    from mae.large.viz.animation import ANIMATION_RATIOS

    assert len(ANIMATION_RATIOS) == 18
    assert ANIMATION_RATIOS[0] == 0.1 and ANIMATION_RATIOS[-1] == 0.95
    assert all(abs(b - a - 0.05) < 1e-9 for a, b in zip(ANIMATION_RATIOS, ANIMATION_RATIOS[1:]))
    # Every ratio leaves ViT-L's 196 patches some visible ones (the tests' 16-patch grid stops at 0.90).
    assert [check_mask_ratio(r, 196) for r in ANIMATION_RATIOS][-1] == 9
    assert all(check_mask_ratio(r, 16) for r in ANIMATION_RATIOS[:-1])
    with pytest.raises(ValueError, match="no visible patch"):
        check_mask_ratio(ANIMATION_RATIOS[-1], 16)


def test_animation_frame_layout() -> None:
    from mae.large.viz.animation import animation_frame

    panels = some_panels()
    frame = animation_frame(panels, "mask ratio 0.35")
    assert frame.mode == "RGB"
    width, height = frame.size
    assert width == 2 * 160 + 3 * 8  # a 32-pixel panel is enlarged 5 times, two panels and three gaps
    pixels = np.asarray(frame)
    band = height - 8 - 160
    masked = np.asarray(Image.fromarray((panels.masked.numpy() * 255).round().astype(np.uint8)).resize((160, 160), 0))
    visible = (panels.reconstruction_visible.numpy() * 255).round().astype(np.uint8).repeat(5, 0).repeat(5, 1)
    assert np.array_equal(pixels[band:band + 160, 8:168], masked)
    assert np.array_equal(pixels[band:band + 160, 176:336], visible)
    assert (pixels[:band] < 128).any()  # the label and captions are drawn
    other = np.asarray(animation_frame(panels, "mask ratio 0.90"))
    assert other.shape == pixels.shape and not np.array_equal(other[:band], pixels[:band])
    assert animation_frame(panels, "x", scale=1).size == (2 * 32 + 24, band + 32 + 8)


def animation_frames(count: int = 4) -> list:
    from mae.large.viz.animation import ANIMATION_RATIOS, animation_frame
    from mae.large.viz.figures import mask_ratio_label

    panels = some_panels()
    return [animation_frame(panels, mask_ratio_label(r), scale=2) for r in ANIMATION_RATIOS[:count]]


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_save_animation_frames_and_loop(tmp_path: Path, suffix: str) -> None:
    from PIL import features

    from mae.large.viz.animation import save_animation

    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    frames = animation_frames(4)
    path = save_animation(frames, tmp_path / f"sweep{suffix}", duration_ms=250)
    assert path == tmp_path / f"sweep{suffix}"
    with Image.open(path) as img:
        assert img.format == suffix[1:].upper()
        assert img.n_frames == 4 and img.is_animated
        assert img.size == frames[0].size
        assert img.info["loop"] == 0  # forever
        img.seek(2)
        img.load()  # WebP reads a frame's duration when it decodes it
        assert img.info["duration"] == 250
    once = save_animation(frames[:2], tmp_path / f"once{suffix}", loop=False)
    with Image.open(once) as img:
        assert img.n_frames == 2
        assert img.info.get("loop") == (None if suffix == ".gif" else 1)  # GIF: no loop extension; WebP: once
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"once{suffix}", f"sweep{suffix}"])


def test_save_animation_from_panels_and_labels(tmp_path: Path) -> None:
    from mae.large.viz.animation import animation_frame, save_animation

    panels = some_panels()
    path = save_animation([panels] * 3, tmp_path / "a.gif", labels=["seed 1", "seed 2", "seed 3"])
    with Image.open(path) as img:
        assert img.n_frames == 3 and img.size == animation_frame(panels, "seed 1").size
    with pytest.raises(ValueError, match="one label per frame"):
        save_animation([panels] * 3, tmp_path / "b.gif", labels=["seed 1"])
    with pytest.raises(ValueError, match="labels="):
        save_animation([panels], tmp_path / "c.gif")
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]


def test_save_animation_rejects_bad_input(tmp_path: Path) -> None:
    from mae.large.viz.animation import save_animation

    frames = animation_frames(2)
    with pytest.raises(ValueError, match=r"\.gif or \.webp"):
        save_animation(frames, tmp_path / "a.png")
    with pytest.raises(ValueError, match="at least one frame"):
        save_animation([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="frame 1 is"):
        save_animation([frames[0], frames[1].resize((10, 10))], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="duration_ms"):
        save_animation(frames, tmp_path / "a.gif", duration_ms=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_failing_animation_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    from mae.large.viz.animation import save_animation

    frames = animation_frames(2)
    target = tmp_path / f"a{suffix}"
    target.write_bytes(b"old")

    def boom(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"half an animation")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_animation(frames, target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == b"old"
