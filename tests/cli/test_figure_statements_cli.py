"""What `reconstruct` and `pca` write says how it was made: every figure and frame states its mask and the share
removed, the gallery records the run, a ratio given twice is drawn once with one note, a near-uniform image's PCA
is warned about (figure, row, one CLI line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from matplotlib.text import Text
from PIL import Image

import mae.large as mae_large
from cli.app import app
from mae.large.jobs import pca as pca_job
from mae.large.jobs import reconstruct as reconstruct_job
from mae.large.jobs.run import Events
from tests.cli.conftest import flat
from tests.large.viz.test_gallery import parse


def run(runner, *args):
    return runner.invoke(app, [*map(str, args)])


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the reconstruct and pca jobs save, kept as they are saved."""
    kept: list = []
    for job in (reconstruct_job, pca_job):
        real = job.save_figure

        def keep(fig, path, *args, _real=real, **kwargs):
            kept.append(fig)
            return _real(fig, path, *args, **kwargs)

        monkeypatch.setattr(job, "save_figure", keep)
    return kept


@pytest.mark.parametrize(("args", "stated"), [
    ([], "mask random:0.75, seed 2 | removed 0.75"),
    (["--mask", "block:0.6", "--seed", "3"], "mask block:0.6, seed 3 | removed 0.625"),
    (["--mask", "right"], "mask right | removed 0.50"),
    (["--mask", "patches:0,5,15"], "mask patches:0,5,15 | removed 0.188"),
])
def test_a_reconstruction_figure_states_its_mask(runner, small_arch, small_ckpts, images, tmp_path, figures, args,
                                                 stated) -> None:
    result = run(runner, "reconstruct", images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", *args, "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["images"][0]
    (fig,) = figures
    assert stated in texts(fig)
    assert stated.endswith(f"{len(row['mask']) / 16:.2f}") or stated.endswith(f"{len(row['mask']) / 16:.3f}")


@pytest.mark.parametrize(("mask", "header", "titles"), [
    ("random", "mask random, seed 4", ["mask ratio 0.30, removed 0.312", "mask ratio 0.60, removed 0.625"]),
    ("block", "mask block, seed 4", ["mask ratio 0.30, removed 0.312", "mask ratio 0.60, removed 0.625"]),
])
def test_a_sweep_states_the_mask_and_each_rows_share(runner, small_arch, small_ckpts, images, tmp_path, figures, mask,
                                                     header, titles) -> None:
    result = run(runner, "reconstruct", images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--mask", mask,
                 "--mask-ratio", "0.3,0.6", "--seed", "4", "--json")
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)["images"][0]["sweep"]
    (fig,) = figures
    head, *rows = fig.subfigs
    assert header in texts(head)
    # the ratio asked for, and the share the mask really removed: 5 and 10 of the 16 patches (random keeps
    # int(L * (1 - r)), block removes round(r * L))
    assert [sub.get_suptitle() for sub in rows] == [f"{t} | loss {s['loss']:.4f}" for t, s in zip(titles, sweep)]
    assert [len(s["mask"]) for s in sweep] == [5, 10]


@pytest.mark.parametrize(("over", "mask", "line"), [
    ("ratios", "random", "mask random, seed 2 | removed {share}"),
    ("seeds", "block:0.5", "mask block:0.5, seed {seed} | removed {share}"),
])
def test_animation_frames_state_the_mask(runner, small_arch, small_ckpts, images, tmp_path, monkeypatch, over, mask,
                                         line) -> None:
    real = reconstruct_job.save_animation

    def keep(frames, path, *, labels=None, **kwargs):
        kept.append(list(labels))
        return real(frames, path, labels=labels, **kwargs)

    kept: list[list[str]] = []
    monkeypatch.setattr(reconstruct_job, "save_animation", keep)
    result = run(runner, "reconstruct", images[0], "-c", small_ckpts[0], "--out", tmp_path / "out", "--mask", mask,
                 "--animate", "--animate-over", over)
    assert result.exit_code == 0, result.output
    (frames,) = kept
    assert len(frames) == (17 if over == "ratios" else 12)
    for i, label in enumerate(frames):
        first, second = label.split("\n")
        share = second.rsplit(" ", 1)[-1]
        assert second == line.format(seed=i, share=share)
        assert first.startswith("seed " if over == "seeds" else "mask ratio ") and "| loss " in first
    if over == "ratios":  # the share removed follows the frame's ratio
        assert frames[0].endswith("removed 0.125") and frames[-1].endswith("removed 0.938")


def test_the_gallery_records_the_checkpoint_and_the_mask(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    odd = tmp_path / "ckpts <1>" / "small & full.pth"
    odd.parent.mkdir()
    shutil.copy(small_ckpts[0], odd)
    out = tmp_path / "out"
    result = run(runner, "reconstruct", images[0].parent, "-c", odd, "--out", out, "--mask", "block", "--mask-ratio",
                 "0.25,0.5", "--seed", "9", "--target", "pixels", "--json")
    assert result.exit_code == 0, result.output
    index = Path(json.loads(result.stdout)["gallery"])
    text = index.read_text(encoding="utf-8")
    parse(index)  # still a page that parses, every element closed
    assert f"<dt>checkpoint</dt><dd>{tmp_path}/ckpts &lt;1&gt;/small &amp; full.pth</dd>" in text
    for name, shown in [("kind", "full"), ("mask", "block"), ("mask ratios", "0.25, 0.5"), ("seed", "9")]:
        assert f"<dt>{name}</dt><dd>{shown}</dd>" in text
    assert "<dt>target</dt><dd>pixels (" in text
    assert "<script src" not in text and "<link" not in text  # self-contained


def test_a_ratio_given_twice_is_drawn_once_with_one_note(runner, small_arch, small_ckpts, images, tmp_path,
                                                         figures) -> None:
    result = run(runner, "reconstruct", images[0], "-c", small_ckpts[0], "--out", tmp_path / "a", "--mask-ratio",
                 "0.25,0.5,0.5,0.25")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "more than once" in line]
    assert notes == ["note: mask ratios 0.25, 0.5 were given more than once; each ratio is drawn once"]
    assert len(figures[0].subfigs) == 1 + 2  # the header and one row per distinct ratio
    shown = json.loads(run(runner, "reconstruct", images[0], "-c", small_ckpts[0], "--out", tmp_path / "b",
                           "--mask-ratio", "0.5,0.5", "--json").stdout)
    assert shown["mask_ratio"] == [0.5]  # a list stays a list
    assert [s["mask_ratio"] for s in shown["images"][0]["sweep"]] == [0.5]
    assert "reconstructions (mask ratio 0.25,0.5, seed 2)" in flat(result.stdout)


def test_the_job_reports_a_repeated_ratio_through_its_events(small_arch, small_ckpts, images, tmp_path) -> None:
    notes: list[str] = []
    done = mae_large.reconstruct([images[0]], small_ckpts[0], tmp_path / "out", mask_ratios=[0.5, 0.75, 0.5],
                                 events=Events(note=notes.append))
    assert [n for n in notes if "more than once" in n] == [
        "mask ratio 0.5 was given more than once; each ratio is drawn once"]
    assert done.ratios == [0.5, 0.75] and done.sweep
    assert [s["mask_ratio"] for s in done.rows[0]["sweep"]] == [0.5, 0.75]


def test_a_near_uniform_image_gets_a_pca_warning(runner, small_arch, small_ckpts, images, tmp_path, figures) -> None:
    grey = tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (128, 128, 128)).save(grey)
    result = run(runner, "pca", grey, images[0], "-c", small_ckpts[1], "--out", tmp_path / "out", "--foreground")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "grey.png" in warnings[0] and "near-uniform image" in warnings[0]
    grey_fig, other_fig = figures
    assert any(t.startswith("warning: near-uniform image") for t in texts(grey_fig))
    assert not any(t.startswith("warning") for t in texts(other_fig))
    assert all(any(t.startswith("explained variance") for t in texts(f)) for f in figures)
    doc = json.loads(run(runner, "pca", grey, images[0], "-c", small_ckpts[1], "--out", tmp_path / "j", "--json").stdout)
    grey_row, other_row = doc["images"]
    assert grey_row["warning"].startswith("near-uniform image") and "warning" not in other_row
    assert len(other_row["explained"]) == 3 and 0 < sum(other_row["explained"]) <= 1
    joint = json.loads(run(runner, "pca", images[0].parent, "-c", small_ckpts[1], "--out", tmp_path / "f",
                           "--json").stdout)
    assert len(joint["explained"]) == 3 and all("warning" not in r for r in joint["images"])
