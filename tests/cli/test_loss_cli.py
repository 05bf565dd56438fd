"""`mae-large loss`: the noise benchmark, its CI gate, and real images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.app import app


@pytest.mark.slow
def test_noise_random_init_vit_large_check_passes(runner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no data/ here: the default falls back to a random init, said clearly
    result = runner.invoke(app, ["loss", "--noise", "--check", "--samples", "4"])
    assert result.exit_code == 0, result.output
    assert "random init" in result.stderr and "random-init" in result.stdout and "as expected" in result.stdout
    data = json.loads(runner.invoke(app, ["loss", "--noise", "--samples", "4", "--json"]).stdout)
    assert data["kind"] == "random-init" and data["expected"] == 1.74
    assert abs(data["mean"] - 1.74) < 0.15 and len(data["losses"]) == 4


def test_check_fails_outside_the_tolerance(runner, small_arch, small_ckpts) -> None:
    # The small official model on ImageNet-scale noise is far from the ViT-L full-checkpoint ~1.0.
    result = runner.invoke(app, ["loss", "--noise", "--check", "-c", str(small_ckpts[0]), "--json"])
    data = json.loads(result.stdout)
    assert data["kind"] == "full" and data["expected"] == 1.0
    assert data["mean"] > 1.2  # about 1.31 for these weights and seed 0
    assert result.exit_code == 1 and "outside" in result.stderr


def test_same_seed_same_losses(runner, small_arch, small_ckpts) -> None:
    runs = [json.loads(runner.invoke(app, ["loss", "--noise", "-c", str(small_ckpts[0]), "--seed", s, "--json"]).stdout)
            for s in ("1", "1", "2")]
    assert runs[0]["losses"] == runs[1]["losses"] != runs[2]["losses"]


def test_encoder_only_kind(runner, small_arch, small_ckpts) -> None:
    data = json.loads(runner.invoke(app, ["loss", "--noise", "-c", str(small_ckpts[1]), "--json"]).stdout)
    assert data["kind"] == "encoder-only" and data["expected"] == 1.87


def test_images(runner, small_arch, small_ckpts, images) -> None:
    result = runner.invoke(app, ["loss", str(images[0].parent), "-c", str(small_ckpts[0]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "images" and data["samples"] == 3 and data["expected"] is None


def test_check_needs_noise(runner, small_arch, small_ckpts, images) -> None:
    result = runner.invoke(app, ["loss", str(images[0]), "-c", str(small_ckpts[0]), "--check"])
    assert result.exit_code == 1 and "--check needs" in result.stderr


def test_usage_errors(runner, small_ckpts) -> None:
    assert runner.invoke(app, ["loss"]).exit_code == 2
    assert runner.invoke(app, ["loss", "--noise", "--random-init", "-c", str(small_ckpts[0])]).exit_code == 2
    assert runner.invoke(app, ["loss", "--noise", "--samples", "0"]).exit_code == 2


def test_unreadable_images_fail_the_command(runner, small_arch, small_ckpts, images) -> None:
    (images[0].parent / "broken.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["loss", str(images[0].parent), "-c", str(small_ckpts[0])])
    assert result.exit_code == 1
    assert "broken.png" in result.stderr and "could not be read" in result.stderr
    assert "mean" in result.stdout  # the loss over the readable images is still shown


def test_encoder_only_random_decoder_is_seeded(runner, small_arch, small_ckpts) -> None:
    runs = [json.loads(runner.invoke(app, ["loss", "--noise", "-c", str(small_ckpts[1]), "--json"]).stdout)["mean"]
            for _ in range(2)]
    assert runs[0] == runs[1]
