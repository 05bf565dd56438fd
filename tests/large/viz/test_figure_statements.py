"""What the figures say about themselves: a sweep row's title sits with its own row, every reconstruction figure
states its mask and the share removed, attention panels state their scale (colour bars, no blank panel), the
PCA figure shows the explained variance and warns on a near-uniform image, the gallery records the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from mae.large.data.images import normalize
from mae.large.models.masks import patches_mask
from mae.large.viz import figures
from mae.large.viz import pca as vpca
from mae.large.viz.attention import attention_maps
from mae.large.viz.encoder_figures import attention_figure, figure_titles, pca_figure
from mae.large.viz.figures import panels_figure, sweep_figure
from mae.large.viz.gallery import write_gallery
from mae.large.viz.pca import fit_pca
from tests.helpers import small_model
from tests.large.jobs.test_encoder_view import image_and_maps
from tests.large.viz.test_figures import image_axes, panels_and_error, some_panels, sweep_rows
from tests.large.viz.test_gallery import parse

COLORBAR = "<colorbar>"  # encoder_figures.COLORBAR, the label of a colour bar's axes


def texts(fig) -> list[str]:
    """Every text drawn in a figure or subfigure (titles, suptitles, free texts), in no particular order."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def drawn(fig):
    """The figure drawn once (aspect ratios applied, text sizes known); its renderer."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


# ---- the mask-ratio sweep: a row's title belongs to its row -------------------------------------------
@pytest.mark.parametrize(("names", "figsize"), [
    (("original", "masked", "reconstruction", "visible"), None),
    (("original", "masked", "reconstruction", "visible"), (6.0, 8.0)),
    (("masked", "error"), None),
])
def test_each_row_title_sits_nearer_its_own_row_than_the_row_above(names, figsize) -> None:
    rows = sweep_rows(ratios=(0.25, 0.5, 0.75))
    fig = sweep_figure(rows, names=names, title="cat.jpg", nested=True, figsize=figsize)
    renderer = drawn(fig)
    row_figs = fig.subfigs[1:]
    for i, sub in enumerate(row_figs):
        title = sub._suptitle.get_window_extent(renderer)
        own = image_axes(sub)
        # the top of this row: its panels, or the panel names over them (first row)
        own_top = max(max(ax.get_window_extent().y1 for ax in own),
                      max((ax.title.get_window_extent(renderer).y1 for ax in own if ax.get_title()), default=0.0))
        below = title.y0 - own_top
        assert below >= 0, f"row {i}: the title overlaps its panels"
        if i == 0:
            continue
        above_axes = image_axes(row_figs[i - 1])
        above_bottom = min(min(a.get_window_extent().y0 for a in above_axes),
                           min((c.get_window_extent().y0 for a in above_axes for c in a.child_axes), default=np.inf),
                           min((t.get_window_extent(renderer).y0 for c in (c for a in above_axes for c in a.child_axes)
                                for t in [c.xaxis.label] if t.get_text()), default=np.inf))
        above = above_bottom - title.y1
        assert above > 0, f"row {i}: the title overlaps the row above"
        assert below < above / 2, f"row {i}: the title is {below:.0f} px from its row and {above:.0f} px from the one above"


def test_rows_state_the_share_removed_and_the_header_the_mask() -> None:
    rows = sweep_rows(ratios=(0.25, 0.5))
    fig = sweep_figure(rows, title="cat.jpg", mask="random, seed 7", nested=True)
    assert [sub.get_suptitle() for sub in fig.subfigs[1:]] == [
        f"mask ratio 0.25, removed 0.25 | loss {rows[0].loss:.4f}", f"mask ratio 0.50, removed 0.50 | loss {rows[1].loss:.4f}"]
    assert "mask random, seed 7" in texts(fig.subfigs[0])


# ---- a single reconstruction figure states its mask ---------------------------------------------------
def test_the_single_figure_states_the_mask_and_the_share_removed() -> None:
    panels = some_panels()  # 12 of the 16 patches removed
    assert figures.removed_fraction(panels) == 0.75
    fig = panels_figure(panels, title="cat.jpg", loss=0.5, mask="block:0.6, seed 2")
    assert "mask block:0.6, seed 2 | removed 0.75" in texts(fig)
    assert figures.mask_statement("right", 0.5) == "mask right | removed 0.50"
    assert figures.mask_statement("block:0.6, seed 2", 118 / 196) == "mask block:0.6, seed 2 | removed 0.602"
    # the line lies between the title and the panel names, overlapping neither
    renderer = drawn(fig)
    line = next(t for t in fig.texts if t.get_text().startswith("mask ")).get_window_extent(renderer)
    assert fig._suptitle.get_window_extent(renderer).y0 > line.y1
    assert all(ax.title.get_window_extent(renderer).y1 < line.y0 for ax in image_axes(fig))
    assert not any(t.startswith("mask ") for t in texts(panels_figure(panels, title="cat.jpg")))  # only when given


def test_animation_frames_take_a_second_label_line() -> None:
    from mae.large.viz.animation import animation_frame

    panels = some_panels()
    one = animation_frame(panels, "mask ratio 0.35 | loss 1.0", scale=2)
    two = animation_frame(panels, "mask ratio 0.35 | loss 1.0\nmask random, seed 2 | removed 0.375", scale=2)
    assert two.size == (one.size[0], one.size[1] + 17)  # one caption-sized line more
    band = np.asarray(two)[30:45]  # where the second line is drawn
    assert (band < 128).any()


# ---- attention: every panel states its scale, no blank panel ------------------------------------------------
def test_attention_rows_share_a_stated_scale_with_colour_bars(tmp_path: Path) -> None:
    image, maps = image_and_maps(tmp_path)
    fig = attention_figure(image, maps, title="cat.jpg")
    bars = [ax for ax in fig.axes if ax.get_label() == COLORBAR]
    assert len(bars) == len(maps.layers) + 1  # a bar per block row, one for the rollout
    assert all(not ax.get_images() for ax in bars)
    assert all(ax.get_images() for ax in fig.axes if ax.get_label() != COLORBAR)  # every other panel shows a map
    rollout_bar, *block_bars = bars
    assert "rollout" in rollout_bar.get_ylabel()
    assert rollout_bar.get_ylim() == pytest.approx((0.0, float(maps.rollout_grid()[0].nan_to_num().max())))
    for layer, bar in zip(maps.layers, block_bars):
        assert f"block {layer}" in bar.get_ylabel() and "attention weight" in bar.get_ylabel()
        top = max(float(maps.mean_grid(layer).max()), float(maps.heads_grid(layer).max()))
        assert bar.get_ylim() == pytest.approx((0.0, top))  # the mean and the heads share the row's scale
    sub = fig.subfigs[2]
    assert figure_titles(sub)[0] == "mean"
    # the legend fills the top row's corner and says how the maps are scaled
    top_row = fig.subfigs[1]
    legend = [t for t in top_row.texts if "scale" in t.get_text()]
    assert len(legend) == 1
    renderer = drawn(fig)
    last_panel = max(ax.get_window_extent().x1 for ax in image_axes(top_row))
    box = legend[0].get_window_extent(renderer)
    assert box.x0 > last_panel and box.x1 < rollout_bar.get_window_extent().x0


def test_attention_mean_row_puts_a_colour_bar_under_each_map(tmp_path: Path) -> None:
    image, maps = image_and_maps(tmp_path)
    fig = attention_figure(image, maps, heads="mean")
    axes = image_axes(fig)
    assert figure_titles(fig) == ["input", "rollout", "block 0 (mean)", "block 1 (mean)"]
    assert not axes[0].child_axes  # the input has no scale
    expected = [maps.rollout_grid()[0], maps.mean_grid(0)[0], maps.mean_grid(1)[0]]
    for ax, values in zip(axes[1:], expected):
        (bar,) = ax.child_axes
        assert bar.get_label() == COLORBAR and bar.get_xlabel()
        assert bar.get_xlim() == pytest.approx((0.0, float(values.nan_to_num().max())))  # its own scale
    assert any("own scale" in t for t in texts(fig))


def test_attention_without_rollout_leaves_no_blank_panel(tmp_path: Path) -> None:
    model = small_model()
    image, _ = image_and_maps(tmp_path)
    with torch.no_grad():
        maps = attention_maps(model, image[None], layers=[1], mask=patches_mask((4, 4), [0, 1]))
    fig = attention_figure(image, maps)
    assert all(ax.get_images() or ax.get_label() == COLORBAR for ax in fig.axes)
    assert [ax.get_label() for ax in fig.axes].count(COLORBAR) == 1
    assert any("scale" in t.get_text() for t in fig.subfigs[0].texts)


# ---- PCA: explained variance, the near-uniform warning -------------------------------------------------------
def test_explained_share_is_each_components_part_of_the_total() -> None:
    tokens = torch.randn(200, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 9)
    basis = fit_pca(tokens)
    total = torch.cov(tokens.double().T).trace()
    assert basis.total == pytest.approx(float(total))
    assert torch.allclose(vpca.explained_share(basis), basis.variance / total)
    assert float(vpca.explained_share(basis).sum()) < 1.0


def test_a_near_uniform_image_is_warned_about() -> None:
    grey = normalize(torch.full((1, 3, 32, 32), 0.5))[0]
    noisy = normalize(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))[0]
    faint = normalize(0.5 + 0.004 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))[0]
    assert vpca.pixel_spread(grey) == pytest.approx(0.0, abs=1e-6)
    assert vpca.uniform_warning(grey).startswith("near-uniform image") and vpca.uniform_warning(faint)
    assert vpca.pixel_spread(noisy) > vpca.UNIFORM_PIXEL_STD and vpca.uniform_warning(noisy) is None


def test_pca_figure_shows_the_explained_variance_and_the_warning(tmp_path: Path) -> None:
    image, _ = image_and_maps(tmp_path)
    rgb = torch.rand(4, 4, 3)
    fig = pca_figure(image, rgb, layer=1, title="grey.png", explained=[0.5, 0.25, 0.125],
                     warning="near-uniform image (pixel standard deviation 0.000 < 0.02)")
    shown = texts(fig)
    assert any("explained variance" in t and "R 50.0%, G 25.0%, B 12.5%" in t for t in shown)
    assert any(t.startswith("warning: near-uniform image") for t in shown)
    assert figure_titles(fig) == ["input", "PCA, block 1"]
    renderer = drawn(fig)  # the warning sits between the title and the panel names
    warning = next(t for t in fig.texts if t.get_text().startswith("warning")).get_window_extent(renderer)
    assert fig._suptitle.get_window_extent(renderer).y0 > warning.y1
    assert all(ax.title.get_window_extent(renderer).y1 < warning.y0 for ax in fig.axes)
    assert not any(t.startswith("warning") for t in texts(pca_figure(image, rgb, layer=1)))


# ---- the gallery records the run --------------------------------------------------------------------------
def test_the_gallery_lists_the_run_settings_escaped(tmp_path: Path) -> None:
    figure = tmp_path / "cat.png"
    figure.write_bytes(b"png")
    settings = {"checkpoint": "data/<odd> & 'name'.pth", "kind": "full", "mask": "block:0.6", "mask ratios": [0.25, 0.5],
                "seed": 2, "target": "pixels (catalogue)"}
    index = write_gallery(tmp_path, [("cat.png", 1.0, figure)], settings=settings)
    page = parse(index)
    text = index.read_text(encoding="utf-8")
    assert "data/&lt;odd&gt; &amp; &#x27;name&#x27;.pth" in text and "<odd>" not in text
    dts = [t for t, _ in page.tags if t in ("dt", "dd")]
    assert dts == ["dt", "dd"] * 6
    for name, shown in [("kind", "full"), ("mask", "block:0.6"), ("mask ratios", "0.25, 0.5"), ("seed", "2"),
                        ("target", "pixels (catalogue)")]:
        assert f"<dt>{name}</dt><dd>{shown}</dd>" in text
    assert "http" not in text.replace('name="viewport"', "")  # still self-contained
    with pytest.raises(ValueError, match="settings"):
        write_gallery(tmp_path, [("cat.png", 1.0, figure)], settings=[("seed", 2)])


def test_error_panel_figure_keeps_its_size_with_the_mask_line() -> None:
    panels, error, loss = panels_and_error()
    fig = panels_figure(panels, ["masked", "error"], error=error, title="x", loss=loss, mask="random:0.75, seed 5")
    assert tuple(fig.get_size_inches()) == (8.0, 5.8)
    assert "mask random:0.75, seed 5 | removed 0.75" in texts(fig)
