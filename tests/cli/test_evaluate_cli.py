"""`mae-large knn` and `mae-large probe` end to end: real digits (scikit-learn's `load_digits`) written as
ImageFolder trees, embedded by `mae-large features` into shard folders, evaluated, and compared with
scikit-learn on the same features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.app import app
from mae.large.evaluate.store import open_features
from tests.helpers import encoder_only, save_official, small_state_dict, write_digits_tree

runner = CliRunner()


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path]:
    """60 digits per class: every fourth to `val`, the rest to `train` (450 / 150 images)."""
    root = tmp_path_factory.mktemp("split")
    everything = write_digits_tree(root / "all", per_class=60)
    for cls in sorted(p for p in everything.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(cls.iterdir())):
            target = root / ("val" if i % 4 == 0 else "train") / cls.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target / image.name)
    return root / "train", root / "val"


@pytest.fixture
def embedded(small_arch, split, tmp_path) -> tuple[Path, Path]:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    outs = []
    for name, folder in zip(("train", "val"), split):
        out = tmp_path / f"{name}_features"
        result = runner.invoke(app, ["features", str(folder), "-c", str(encoder), "--out", str(out), "--device", "cpu",
                                     "--workers", "0", "--shard-size", "128"])
        assert result.exit_code == 0, result.output
        outs.append(out)
    return outs[0], outs[1]


def _sklearn_arrays(train: Path, val: Path):
    a, b = open_features(train), open_features(val)
    return (a.materialize().double().numpy(), a.labels.numpy(), b.materialize().double().numpy(), b.labels.numpy())


def test_knn_agrees_with_scikit_learn(embedded) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    train, val = embedded
    result = runner.invoke(app, ["knn", str(train), str(val), "--k", "5", "--weighting", "uniform", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    xt, yt, xv, yv = _sklearn_arrays(train, val)
    reference = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(xt, yt).score(xv, yv) * 100
    assert abs(data["top1"] - reference) <= 1.0  # >= 99% of predictions agree (ties may break differently)
    assert data["top1"] > 30.0  # chance is 10%
    assert data["top5"] >= data["top1"] and set(data["per_class"]) == {str(i) for i in range(10)}
    softmax = json.loads(runner.invoke(app, ["knn", str(train), str(val), "--json"]).stdout)
    assert softmax["top1"] > 30.0 and softmax["weighting"] == "softmax" and softmax["k"] == 20


def test_probe_is_close_to_logistic_regression(embedded, tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, val = embedded
    head = tmp_path / "head.pth"
    # LARS on a few hundred rows: small batches and a large base lr (the official 16384 would be one step an epoch).
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(head), "--epochs", "100",
                                 "--batch-size", "64", "--blr", "40", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    xt, yt, xv, yv = _sklearn_arrays(train, val)
    scaler = StandardScaler().fit(xt)  # the probe's BatchNorm without affine standardises the same way
    reference = LogisticRegression(max_iter=5000).fit(scaler.transform(xt), yt).score(scaler.transform(xv), yv) * 100
    assert data["top1"] >= reference - 3.0 and data["top1"] > 30.0
    assert len(data["history"]) == 100
    saved = torch.load(head, weights_only=True)
    assert set(saved["model"]) >= {"head.1.weight", "head.1.bias"} and saved["model"]["head.1.weight"].shape == (10, 64)


def test_mismatched_or_unlabelled_features_are_refused(embedded, small_arch, split, tmp_path) -> None:
    train, val = embedded
    encoder = tmp_path / "enc.pth"  # the one `embedded` used: only the pool differs below
    other = tmp_path / "mean_features"
    assert runner.invoke(app, ["features", str(split[1]), "-c", str(encoder), "--out", str(other), "--pool", "mean",
                               "--device", "cpu", "--workers", "0"]).exit_code == 0
    refused = runner.invoke(app, ["knn", str(train), str(other)])
    assert refused.exit_code == 1 and "differ in pool" in refused.stderr
    flat_images = tmp_path / "flat"
    flat_images.mkdir()
    for image in sorted((split[1] / "3").iterdir())[:5]:
        shutil.copy(image, flat_images / image.name)
    unlabelled = tmp_path / "unlabelled.safetensors"
    assert runner.invoke(app, ["features", str(flat_images), "-c", str(encoder), "--out", str(unlabelled),
                               "--device", "cpu", "--workers", "0"]).exit_code == 0
    no_labels = runner.invoke(app, ["probe", str(train), str(unlabelled), "--out", str(tmp_path / "h.pth")])
    assert no_labels.exit_code == 1 and "no labels" in no_labels.stderr
    assert not (tmp_path / "h.pth").exists()


@pytest.mark.slow
def test_vit_large_features_feed_knn(vit_l_files, split, tmp_path) -> None:
    """The full-size path: a few dozen digits embedded by ViT-L at a small size, then k-NN."""
    _, encoder, _ = vit_l_files
    few = []
    for name, folder in zip(("train", "val"), split):
        subset = tmp_path / f"{name}_few"
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            (subset / cls.name).mkdir(parents=True)
            for image in sorted(cls.iterdir())[: 3 if name == "train" else 1]:
                shutil.copy(image, subset / cls.name / image.name)
        out = tmp_path / f"{name}_vitl"
        result = runner.invoke(app, ["features", str(subset), "-c", str(encoder), "--out", str(out), "--size", "64",
                                     "--device", "cpu", "--workers", "0"])
        assert result.exit_code == 0, result.output
        few.append(out)
    data = json.loads(runner.invoke(app, ["knn", str(few[0]), str(few[1]), "--k", "3", "--json"]).stdout)
    assert (data["train_rows"], data["val_rows"]) == (30, 10) and 0.0 <= data["top1"] <= 100.0
    assert open_features(few[0]).dim == 1024
