"""Issue class 1 of the hardening pass: an output is never an input, contains one, lies inside one or links to one,
`--force` or not; a folder holding a run is continued only with `--resume`."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from cli.app import app
from mae.large import VisionTransformer, ViTConfig
from tests.cli.conftest import flat, write_image
from tests.helpers import HF_FIXTURES, encoder_only, save_official, small_state_dict


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(result, *phrases: str) -> str:
    said = flat(result.output)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and said.count("error:") == 1, result.output
    for phrase in phrases:
        assert phrase in said, said
    return said


def test_export_onnx_onto_its_own_checkpoint_is_refused_with_force(runner, small_arch, small_ckpts) -> None:
    full = small_ckpts[0]
    before = _digest(full)
    result = runner.invoke(app, ["export-onnx", "--checkpoint", str(full), "--out", str(full), "--what", "mae", "--force"])
    _refused(result, f"the output {full} is the input {full}")
    assert _digest(full) == before


def test_convert_onto_the_file_a_model_folder_links_to_is_refused(runner, tmp_path) -> None:
    # A hub-cache-like folder: its weights file is a symbolic link to a blob elsewhere.
    source = HF_FIXTURES / "tf5/pretraining-safetensors"
    blob = tmp_path / "blobs" / "weights"
    blob.parent.mkdir()
    shutil.copy(source / "model.safetensors", blob)
    folder = tmp_path / "snapshot"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    (folder / "model.safetensors").symlink_to(blob)
    before = _digest(blob)
    result = runner.invoke(app, ["convert", str(folder), "--to", "safetensors", "--out", str(blob), "--force"])
    _refused(result, f"the output {blob} is the input", "through a link")
    assert _digest(blob) == before


@pytest.mark.parametrize("command", ["features", "reconstruct", "attention", "pca"])
def test_an_output_in_the_input_folder_is_refused(runner, small_arch, small_ckpts, images, command) -> None:
    folder = images[0].parent
    listed = sorted(p.name for p in folder.iterdir())
    extra = ["--out", str(folder)] if command == "features" else ["--out", str(folder / "figures")]
    result = runner.invoke(app, [command, str(folder), "-c", str(small_ckpts[0]), "--device", "cpu", *extra])
    _refused(result, "inside the input folder" if command != "features" else "is the input")
    assert sorted(p.name for p in folder.iterdir()) == listed  # nothing written into the input folder


def test_a_listed_image_is_never_the_features_file(runner, small_arch, small_ckpts, tmp_path) -> None:
    image = write_image(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\n")
    before = _digest(image)
    result = runner.invoke(app, ["features", str(listing), "-c", str(small_ckpts[0]), "--device", "cpu",
                                 "--out", str(image.with_suffix(".safetensors"))])
    assert result.exit_code == 0, result.output  # beside the image: fine
    link = tmp_path / "feats.safetensors"
    link.symlink_to(image)  # a link that resolves to the listed image
    result = runner.invoke(app, ["features", str(listing), "-c", str(small_ckpts[0]), "--device", "cpu",
                                 "--out", str(link)])
    _refused(result, "through a link")
    assert _digest(image) == before


def test_an_output_folder_holding_the_checkpoint_is_refused(runner, small_arch, small_ckpts, images) -> None:
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out",
                                 str(small_ckpts[0].parent)])
    _refused(result, "contains the input")


def _finetune(runner, tree, encoder, out, *extra):
    return runner.invoke(app, ["finetune", str(tree), str(tree), "-c", str(encoder), "-o", str(out), "--epochs", "1",
                               "--size", "32", "--batch-size", "16", "--accum-iter", "1", "--mixup", "0", "--cutmix",
                               "0", "--aa", "none", "--reprob", "0", "--device", "cpu", "--amp", "off", "--workers", "0",
                               *extra])


def test_a_run_folder_is_continued_only_with_resume(runner, small_arch, digits_tree, tmp_path) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    run = tmp_path / "run"
    assert _finetune(runner, digits_tree, encoder, run).exit_code == 0
    log, last = (run / "log.jsonl").read_text(), _digest(run / "checkpoint-last.pth")
    said = _refused(_finetune(runner, digits_tree, encoder, run), "already holds a run", f"--resume {run}",
                    "another --out FOLDER")
    assert "nothing was written" in said
    assert (run / "log.jsonl").read_text() == log and _digest(run / "checkpoint-last.pth") == last
    # A run inside the training data is refused too.
    _refused(_finetune(runner, digits_tree, encoder, digits_tree / "run"), "lies inside the input folder")


def test_force_replaces_an_earlier_output_but_never_an_input(runner, small_arch, small_ckpts, tmp_path) -> None:
    out = tmp_path / "copy.safetensors"
    assert runner.invoke(app, ["convert", str(small_ckpts[0]), "--to", "safetensors", "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["convert", str(small_ckpts[0]), "--to", "safetensors", "--out", str(out),
                               "--force"]).exit_code == 0
    _refused(runner.invoke(app, ["convert", str(out), "--to", "safetensors", "--out", str(out), "--force"]),
             "is the input")


def test_the_guard_is_the_librarys_for_python_callers(small_arch, small_ckpts, images) -> None:
    import mae.large as mae_large
    from mae.large.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="lies inside the input folder"):
        mae_large.reconstruct([images[0].parent], small_ckpts[0], images[0].parent / "out")
    with pytest.raises(InvalidArgumentError, match="is the input"):
        mae_large.convert_checkpoint(small_ckpts[0], small_ckpts[0], "official", overwrite=True)
    model = VisionTransformer(ViTConfig.from_architecture(None))
    torch.save({"model": model.state_dict()}, images[0].parent / "x.pth")
