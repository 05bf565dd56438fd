"""`mae-large knn` and `mae-large probe` end to end: real digits (scikit-learn's `load_digits`) written as
ImageFolder trees, embedded by `mae-large features` into shard folders, evaluated, and compared with
scikit-learn on the same features."""

from __future__ import annotations

import json
import re
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


def _logistic_regression(xt, yt, xv, yv) -> float:
    """scikit-learn's top-1 (percent) on standardised features, the scaler fit on train: the probe's peer (its
    BatchNorm without affine standardises the same way)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xt)
    return LogisticRegression(max_iter=5000).fit(scaler.transform(xt), yt).score(scaler.transform(xv), yv) * 100


def test_probe_is_close_to_logistic_regression(embedded, tmp_path) -> None:
    train, val = embedded
    head = tmp_path / "head.pth"
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(head), "--json"])  # the defaults
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    reference = _logistic_regression(*_sklearn_arrays(train, val))
    assert data["top1"] >= reference - 3.0 and data["top1"] > 30.0, (data["top1"], reference)
    assert data["protocol"] == "grid" and data["warnings"] == [] and len(data["grid"]) == 52
    chosen = data["grid"][data["chosen"]]
    assert (data["args"]["lr"], data["args"]["weight_decay"]) == (chosen["lr"], chosen["weight_decay"])
    assert set(chosen) == {"lr", "weight_decay", "lr_scaled", "holdout_top1", "holdout_loss", "val_top1", "val_top5"}
    assert data["args"]["holdout_rows"] == 90 and len(data["history"]) == data["args"]["refit_epochs"]  # 20% of 450
    saved = torch.load(head, weights_only=True)
    assert set(saved["model"]) >= {"head.1.weight", "head.1.bias"} and saved["model"]["head.1.weight"].shape == (10, 64)
    assert saved["args"]["protocol"] == "grid" and saved["args"]["classes"] == [str(i) for i in range(10)]


@pytest.mark.filterwarnings("ignore:protocol='grid' makes only")
def test_probe_grid_table_and_warning(embedded, tmp_path) -> None:
    train, val = embedded
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "h.pth"), "--lrs", "0.01,0.1",
                                 "--weight-decays", "0,1e-3", "--min-steps", "200"])
    assert result.exit_code == 0, result.output
    assert "grid: val top-1" in result.stdout and "wd 0.001" in result.stdout
    assert len(re.findall(r"\*\d+\.\d\d \(\d+\.\d\)", result.stdout)) == 1  # one cell marked chosen
    assert result.stderr.count("warning:") == 1  # 200 steps, fewer than 1000: said once, in flags
    assert "--protocol grid makes only 200 optimiser steps" in result.stderr and "--min-steps 1000" in result.stderr


@pytest.mark.filterwarnings("ignore:protocol='official' makes only")
def test_probe_official_protocol_is_main_linprobe_py(embedded, tmp_path) -> None:
    """`--protocol official` alone restores every default of main_linprobe.py (FINETUNE.md's batch 16384)."""
    train, val = embedded
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "h.pth"), "--protocol",
                                 "official", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    args = data["args"]
    assert (args["epochs"], args["requested_batch_size"], args["blr"], args["weight_decay"], args["warmup_epochs"],
            args["min_lr"], args["optimizer"]) == (90, 16384, 0.1, 0.0, 10, 0.0, "LARS")
    assert args["batch_size"] == 450 and args["lr"] == pytest.approx(0.1 * 450 / 256)  # capped at the rows
    # One step an epoch: the lr of epoch e is lr * e / 10 through a warm-up of 10 epochs (5 would double it).
    lrs = [h["lr"] for h in data["history"]]
    assert lrs[4] == pytest.approx(0.4 * args["lr"]) and lrs[9] == pytest.approx(0.9 * args["lr"])
    assert lrs[10] == pytest.approx(args["lr"]) and len(lrs) == 90
    assert data["grid"] == [] and data["chosen"] is None and len(data["warnings"]) == 1
    assert "--protocol official makes only 90 optimiser steps" in data["warnings"][0]
    assert "--batch-size 450" in data["warnings"][0]


@pytest.mark.filterwarnings("ignore:protocol='official' makes only")
def test_probe_official_reproduces_the_previous_code_path(embedded, tmp_path) -> None:
    from tests.large.evaluate import probe_0e3da7d

    train, val = embedded
    settings = ["--epochs", "3", "--batch-size", "64", "--blr", "10", "--warmup-epochs", "1"]
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "h.pth"), "--protocol",
                                 "official", *settings, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    a, b = open_features(train), open_features(val)
    before = probe_0e3da7d.probe(a, a.labels, b, b.labels, epochs=3, batch_size=64, blr=10.0, warmup_epochs=1,
                                 num_classes=10)
    assert data["history"] == before.history and (data["top1"], data["top5"]) == (before.top1, before.top5)
    saved = torch.load(tmp_path / "h.pth", weights_only=True)["model"]
    assert all(torch.equal(saved[key], value) for key, value in before.head_state.items())


@pytest.mark.parametrize(("flags", "named"), [
    (["--blr", "0.1"], "--blr is a setting of --protocol official"),
    (["--warmup-epochs", "5"], "--warmup-epochs is a setting of --protocol official"),
    (["--protocol", "official", "--lrs", "0.1"], "--lrs is a setting of --protocol grid"),
    (["--protocol", "official", "--no-refit"], "--refit/--no-refit is a setting of --protocol grid"),
    (["--lrs", "0.1,x"], "comma-separated numbers"),
    (["--protocol", "lars"], "protocol must be grid or official"),
])
def test_probe_option_mistakes_are_usage_errors(embedded, tmp_path, flags, named) -> None:
    train, val = embedded
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "h.pth"), *flags])
    assert result.exit_code == 2 and named in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "h.pth").exists()


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


@pytest.fixture(scope="module")
def vit_l_digits(tmp_path_factory) -> tuple[Path, Path]:
    """450 digits (the first 45 of each class) split 300 / 150 by a seeded, stratified draw, embedded by a ViT-L
    encoder (seeded random init, the weights of `vit_l_files`) at 32 x 32 with `--crop resize`: (train, val) shard
    folders. Only one ViT-L is held at a time: the init is freed once written."""
    from sklearn.model_selection import train_test_split

    from mae.large import MAEConfig, MaskedAutoencoderViT

    root = tmp_path_factory.mktemp("vitl_digits")
    state = torch.get_rng_state()
    torch.manual_seed(123)
    sd = MaskedAutoencoderViT(MAEConfig.vit_large()).state_dict()
    torch.set_rng_state(state)
    encoder = save_official(root / "mae_pretrain_vit_large.pth", encoder_only(sd))
    del sd
    everything = write_digits_tree(root / "all", per_class=45)
    images = [(image, cls.name) for cls in sorted(p for p in everything.iterdir() if p.is_dir())
              for image in sorted(cls.iterdir())]
    train_rows, _ = train_test_split(range(len(images)), test_size=1 / 3, random_state=0,
                                     stratify=[label for _, label in images])
    train_rows = set(train_rows)
    for row, (image, label) in enumerate(images):
        target = root / ("train" if row in train_rows else "val") / label
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target / image.name)
    outs = []
    for name in ("train", "val"):
        out = root / f"{name}_vitl"
        result = runner.invoke(app, ["features", str(root / name), "-c", str(encoder), "--out", str(out), "--size", "32",
                                     "--crop", "resize", "--device", "cpu", "--workers", "0"])
        assert result.exit_code == 0, result.output
        outs.append(out)
    encoder.unlink()
    return outs[0], outs[1]


@pytest.mark.slow
def test_vit_large_features_feed_knn(vit_l_digits) -> None:
    """The full-size path: ViT-L features, then k-NN, against scikit-learn's k-NN on the same features."""
    from sklearn.neighbors import KNeighborsClassifier

    train, val = vit_l_digits
    assert open_features(train).dim == 1024 and (open_features(train).rows, open_features(val).rows) == (300, 150)
    xt, yt, xv, yv = _sklearn_arrays(train, val)
    for k in (1, 5, 20):
        data = json.loads(runner.invoke(app, ["knn", str(train), str(val), "--k", str(k), "--weighting", "uniform",
                                              "--json"]).stdout)
        peer = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xt, yt).score(xv, yv) * 100
        assert abs(data["top1"] - peer) <= 100 / 150 + 1e-9, (k, data["top1"], peer)  # at most one tie broken apart
        assert data["top1"] > 60.0  # chance is 10%
    softmax = json.loads(runner.invoke(app, ["knn", str(train), str(val), "--json"]).stdout)  # k 20, T 0.07
    assert softmax["top1"] >= peer - 5.0, (softmax["top1"], peer)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:protocol='official' makes only")
def test_vit_large_default_probe_matches_logistic_regression(vit_l_digits, tmp_path) -> None:
    """The issue's case: 300 ViT-L digit features. The default probe (its grid point chosen on held-out training rows)
    comes within 3 points of LogisticRegression on standardised features, on the same val; the official protocol
    (90 LARS steps here) is far below and says why."""
    train, val = vit_l_digits
    reference = _logistic_regression(*_sklearn_arrays(train, val))
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "grid.pth"), "--json"])
    assert result.exit_code == 0, result.output
    grid = json.loads(result.stdout)
    assert grid["top1"] >= reference - 3.0, (grid["top1"], reference)
    assert grid["warnings"] == [] and grid["args"]["fit_rows"] == 240 and len(grid["grid"]) == 52
    official = json.loads(runner.invoke(app, ["probe", str(train), str(val), "--out", str(tmp_path / "official.pth"),
                                              "--protocol", "official", "--json"]).stdout)
    assert len(official["warnings"]) == 1 and "fewer than 1000" in official["warnings"][0]
    assert official["top1"] < grid["top1"] - 20, (official["top1"], grid["top1"])


def test_knn_options_default_to_dinos_vote_as_the_library_does() -> None:
    """DINO's `eval_knn.py`: `--nb_knn 20`, `--temperature 0.07`; the command's defaults are the library's, which
    are DINO's (a default typed twice can drift on one side)."""
    import inspect

    from cli.knn import knn_command
    from mae.large.evaluate.knn import knn

    options = inspect.signature(knn_command).parameters
    library = inspect.signature(knn).parameters
    for name in ("k", "temperature", "weighting", "chunk_rows"):
        assert options[name].default == library[name].default, name
    assert (library["k"].default, library["temperature"].default, library["weighting"].default) == (20, 0.07, "softmax")


@pytest.mark.parametrize("where", ["a train shard", "inside val"])
def test_the_probe_head_never_replaces_or_lands_in_its_features(embedded, where: str) -> None:
    """`--out` onto a shard of the features, or into their folder, is refused before the work; nothing changes."""
    train, val = embedded
    target = sorted(train.glob("*.safetensors"))[0] if where == "a train shard" else val / "head.pth"
    before = {p: p.read_bytes() for p in [*train.iterdir(), *val.iterdir()]}
    result = runner.invoke(app, ["probe", str(train), str(val), "--out", str(target), "--epochs", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    folder = train if where == "a train shard" else val
    assert f"the output {target} lies inside the input folder {folder}" in said, said
    assert {p: p.read_bytes() for p in [*train.iterdir(), *val.iterdir()]} == before
