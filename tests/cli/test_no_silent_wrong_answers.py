"""Issue class 2 of the hardening pass: an answer about other classes, NaN features, shards outside their folder,
one class, a mask that removes nothing, a configuration the loaders refuse: each is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from cli.app import app
from mae.large import VisionTransformer, ViTConfig
from tests.cli.conftest import flat
from tests.helpers import HF_FIXTURES, encoder_only, save_official, small_state_dict, tiny_config, use_small_architecture


def _one_line_refusal(result, *phrases: str) -> str:
    said = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and said.count("error:") == 1, result.output
    for phrase in phrases:
        assert phrase in said, said
    return said


@pytest.fixture
def trees(tmp_path, digits_tree) -> tuple[Path, Path]:
    """Two labelled trees with other classes: train (cat, dog), val (dog, zebra), real digit images."""
    out = []
    for name, classes in (("train", ("cat", "dog")), ("val", ("dog", "zebra"))):
        for cls, digit in zip(classes, ("0", "1")):
            target = tmp_path / name / cls
            target.mkdir(parents=True)
            for image in sorted((digits_tree / digit).iterdir())[:6]:
                shutil.copy(image, target / image.name)
        out.append(tmp_path / name)
    return out[0], out[1]


def _embed(runner, folder: Path, encoder: Path, out: Path) -> Path:
    done = runner.invoke(app, ["features", str(folder), "-c", str(encoder), "--out", str(out), "--device", "cpu",
                               "--workers", "0"])
    assert done.exit_code == 0, done.output
    return out


@pytest.mark.parametrize("command", ["knn", "probe"])
def test_evaluations_refuse_val_features_of_other_classes(runner, small_arch, trees, tmp_path, command) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    train = _embed(runner, trees[0], encoder, tmp_path / "train.safetensors")
    val = _embed(runner, trees[1], encoder, tmp_path / "val.safetensors")
    extra = ["--k", "3"] if command == "knn" else ["--epochs", "1", "--out", str(tmp_path / "head.pth")]
    said = _one_line_refusal(runner.invoke(app, [command, str(train), str(val), *extra]), "other classes",
                             "label 0: train 'cat', val 'dog'")
    assert "--num-classes" not in said
    assert not (tmp_path / "head.pth").exists()


def test_the_same_checkpoint_named_two_ways_is_the_same(runner, small_arch, trees, tmp_path, monkeypatch) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    monkeypatch.chdir(tmp_path)
    train = tmp_path / "train.safetensors"
    done = runner.invoke(app, ["features", str(trees[0]), "-c", "enc.pth", "--out", str(train), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    val = _embed(runner, trees[0], encoder, tmp_path / "val.safetensors")  # absolute path to the same file
    assert runner.invoke(app, ["knn", str(train), str(val), "--k", "3"]).exit_code == 0


@pytest.mark.parametrize("command", ["knn", "probe"])
def test_evaluations_refuse_features_holding_nan(runner, small_arch, trees, tmp_path, command) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    train = _embed(runner, trees[0], encoder, tmp_path / "train.safetensors")
    bad = tmp_path / "bad.safetensors"
    tensors = load_file(train)
    tensors["features"][3, 5] = float("nan")
    from safetensors import safe_open

    with safe_open(str(train), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(bad), metadata=meta)
    extra = ["--k", "3"] if command == "knn" else ["--epochs", "1", "--out", str(tmp_path / "head.pth")]
    _one_line_refusal(runner.invoke(app, [command, str(train), str(bad), *extra]), "NaN or infinite values (row 3 of 12")


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/shard.safetensors"])
def test_an_index_naming_a_shard_outside_its_folder_is_refused(runner, small_arch, trees, tmp_path, name) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    folder = _embed(runner, trees[0], encoder, tmp_path / "feats")
    index = json.loads((folder / "index.json").read_text())
    index["shards"][0]["file"] = name
    (folder / "index.json").write_text(json.dumps(index))
    said = _one_line_refusal(runner.invoke(app, ["knn", str(folder), str(folder), "--k", "3"]), "index.json",
                             "plain names inside the folder")
    assert "root:" not in said


def test_a_shard_linked_to_a_text_file_is_not_echoed(runner, small_arch, trees, tmp_path) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    folder = _embed(runner, trees[0], encoder, tmp_path / "feats")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-" * 40)
    shard = folder / json.loads((folder / "index.json").read_text())["shards"][0]["file"]
    shard.unlink()
    shard.symlink_to(secret)
    said = _one_line_refusal(runner.invoke(app, ["knn", str(folder), str(folder), "--k", "3"]), "cannot be read")
    assert "TOPSECRET" not in said


def test_string_labels_in_an_index_are_one_line(runner, small_arch, trees, tmp_path) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    folder = _embed(runner, trees[0], encoder, tmp_path / "feats")
    index = json.loads((folder / "index.json").read_text())
    index["labels"] = ["cat"] * index["rows"]
    (folder / "index.json").write_text(json.dumps(index))
    _one_line_refusal(runner.invoke(app, ["knn", str(folder), str(folder), "--k", "3"]), "'labels' must be a list of "
                      "class numbers")


def test_one_class_is_refused_for_fine_tuning_and_evaluation(runner, small_arch, digits_tree, tmp_path) -> None:
    one = tmp_path / "one"
    shutil.copytree(digits_tree / "3", one / "3")
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    done = runner.invoke(app, ["finetune", str(one), str(one), "-c", str(encoder), "-o", str(tmp_path / "run"),
                               "--size", "32", "--batch-size", "4", "--accum-iter", "1", "--device", "cpu"])
    _one_line_refusal(done, "holds 1 class folder")
    assert not (tmp_path / "run").exists()
    classifier = save_official(tmp_path / "ft.pth", VisionTransformer(ViTConfig.from_architecture(None, num_classes=1))
                               .state_dict())
    _one_line_refusal(runner.invoke(app, ["evaluate", str(one), "-c", str(classifier), "--device", "cpu"]),
                      "holds 1 class folder")


def test_evaluate_refuses_folders_of_other_classes_than_the_runs(runner, small_arch, trees, tmp_path) -> None:
    model = VisionTransformer(ViTConfig.from_architecture(None, num_classes=2))
    path = save_official(tmp_path / "ft.pth", model.state_dict(), args={"classes": ["cat", "dog"]})
    assert runner.invoke(app, ["evaluate", str(trees[0]), "-c", str(path), "--device", "cpu"]).exit_code == 0
    _one_line_refusal(runner.invoke(app, ["evaluate", str(trees[1]), "-c", str(path), "--device", "cpu"]),
                      "not the classes", "class 0: folder 'dog', trained 'cat'")


@pytest.mark.parametrize("mask", ["box:1e308,0,1e309,1", "file"])
def test_a_mask_that_removes_nothing_is_refused(runner, small_arch, small_ckpts, images, tmp_path, mask) -> None:
    if mask == "file":
        black = tmp_path / "black.png"
        Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(black)
        mask = f"file:{black}"
    out = tmp_path / "out"
    done = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--mask", mask, "--out", str(out)])
    said = flat(done.output)
    assert done.exit_code in (1, 2) and "Traceback" not in done.output, done.output
    assert "removes no patch" in said or "box" in said
    assert not out.exists() or not list(out.iterdir())


def test_convert_refuses_a_folder_whose_config_the_loaders_refuse(runner, tmp_path, monkeypatch) -> None:
    use_small_architecture(monkeypatch, tiny_config())  # the fixture folders' sizes
    folder = tmp_path / "relu"
    shutil.copytree(HF_FIXTURES / "tf5/pretraining-safetensors", folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_act"] = "relu"
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out.safetensors"
    done = runner.invoke(app, ["convert", str(folder), "--to", "safetensors", "--out", str(out)])
    _one_line_refusal(done, "hidden_act='relu'")
    assert not out.exists()
    config["hidden_act"] = "gelu"  # the same folder as written by transformers converts
    (folder / "config.json").write_text(json.dumps(config))
    assert runner.invoke(app, ["convert", str(folder), "--to", "safetensors", "--out", str(out)]).exit_code == 0
