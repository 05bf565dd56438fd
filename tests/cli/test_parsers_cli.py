"""Every parser of outside data behind one rule, seen from the command line: a file that cannot be used is one line
naming the path and what it should have been (exit 1), a bad option one usage error (exit 2), never a traceback, a
RecursionError or a library's raw text; messages name the flags the user typed, on the command that runs.

The cases are those of a hostile run: deep JSON in a model folder, `--mask patches:1e400`, a 60000x60000 mask image,
`ulimit -f` during `convert --force`, a full disk under `export-onnx`, a garbage `log.jsonl` and a pickle that carries
code under `finetune --resume`, the wrong flag named by `knn` and `attention`, and `--device tpu` importing torch."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.app import app
from cli.errors import command_flags, with_flag
from tests.cli.conftest import flat
from tests.cli.test_finetune_cli import LIGHT
from tests.helpers import REPO, encoder_only, save_official, small_state_dict
from tests.large.models.test_masks_fuzz import bomb_png

PYTHON = sys.executable
DEEP = "[" * 100_000 + "]" * 100_000


def one_error_line(result) -> str:
    """The run's single `error:` line (exit 1), with no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # the last line: nothing after it
    return errors[0]


# ---- model folders and safetensors headers --------------------------------------------------------------------
@pytest.fixture
def hf_folder(runner, small_arch, small_ckpts, tmp_path) -> Path:
    """The small full checkpoint as a transformers model folder (config.json + model.safetensors)."""
    out = tmp_path / "hf"
    result = runner.invoke(app, ["convert", str(small_ckpts[0]), "--to", "hf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("where", ["config", "index", "header"])
def test_deep_json_in_a_model_folder_or_header_is_one_line(runner, hf_folder, where) -> None:
    if where == "config":
        target = hf_folder / "config.json"
        target.write_text(DEEP)
        path, what = hf_folder, "config.json is not a JSON object of the model's settings"
    elif where == "index":
        (hf_folder / "model.safetensors").rename(hf_folder / "model-00001-of-00001.safetensors")
        target = hf_folder / "model.safetensors.index.json"
        target.write_text('{"weight_map": ' + DEEP + "}")
        path, what = hf_folder, "model.safetensors.index.json is not a shard index"
    else:
        target = path = hf_folder.parent / "deep.safetensors"
        header = b'{"a":' + DEEP.encode() + b"}"
        target.write_bytes(struct.pack("<Q", len(header)) + header)
        what = "deep.safetensors has a corrupt safetensors header"
    line = one_error_line(runner.invoke(app, ["inspect", str(path)]))
    assert str(target) in line and what in line and "nested more than 64 levels deep" in line


@pytest.mark.parametrize("value", ["64", int("1" * 300)], ids=["string", "300-digits"])
def test_inspect_of_a_folder_whose_size_is_not_a_number_is_not_loadable_anywhere(runner, hf_folder, small_arch,
                                                                                  monkeypatch, value) -> None:
    from mae.large.config import MAEConfig

    monkeypatch.setattr(MAEConfig, "vit_large", classmethod(lambda cls: small_arch))  # what inspect measures against
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, "hidden_size": value}))
    result = runner.invoke(app, ["inspect", str(hf_folder), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "full" and data["loadable"] is False
    assert "loadable as is" not in data["verdict"] and data["verdict"].startswith("not loadable")
    assert "hidden_size as" in data["verdict"] and "not a whole number" in data["verdict"]
    shown = runner.invoke(app, ["inspect", str(hf_folder)])
    assert shown.exit_code == 1 and "loadable as is" not in flat(shown.output)


def test_a_loader_refuses_a_size_that_is_a_string(runner, hf_folder, images, tmp_path) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, "hidden_size": "64"}))
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(hf_folder), "--out", str(tmp_path / "o"),
                                 "--device", "cpu"])
    line = one_error_line(result)
    assert str(hf_folder) in line and "hidden_size as a string" in line


# ---- masks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["reconstruct", "attention"])
def test_an_overflowing_mask_number_is_a_usage_error(runner, small_arch, small_ckpts, images, tmp_path, command) -> None:
    result = runner.invoke(app, [command, str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--mask", "patches:1e400"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output
    assert "--mask" in result.output and "finite numbers" in flat(result.output)


def test_a_huge_mask_image_is_one_line(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    big = bomb_png(tmp_path / "big.png", 60_000, 60_000)
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--mask", f"file:{big}", "--device", "cpu"])
    line = one_error_line(result)
    assert f"mask image {big} is larger than Pillow's safety limit" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("size", ["16" + "0" * 400, "16x16" + "0" * 60, "9" * 5000],
                         ids=["400-digits", "60-digits", "5000-digits"])
def test_an_enormous_size_is_a_usage_error(runner, small_arch, images, tmp_path, size) -> None:
    result = runner.invoke(app, ["reconstruct", str(images[0]), "--out", str(tmp_path / "o"), "--size", size])
    assert result.exit_code == 2 and "--size" in result.output, result.output
    assert "Traceback" not in result.output and "OverflowError" not in result.output and len(result.output) < 2000


# ---- resource limits: child processes, as tests/cli/test_reliability.py runs them ---------------------------
def child(args: list[str], file_size: int, tmp_path: Path, *, sigxfsz_default: bool = False) -> subprocess.CompletedProcess:
    """`mae-large ARGS` as the console script runs (`tests.cli.child`), with RLIMIT_FSIZE set to `file_size` bytes.
    CPython itself ignores SIGXFSZ at start-up; `sigxfsz_default` puts back the default action (kill the process) before
    the CLI starts, as an embedding application or a wrapper may leave it, so that only the CLI's own choice counts."""
    env = dict(os.environ, MAE_TEST_READY=str(tmp_path / "ready"), MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    start = ["-m", "tests.cli.child"]
    if sigxfsz_default:
        start = ["-c", "import runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
                       "sys.argv[0] = 'child'; runpy.run_module('tests.cli.child', run_name='__main__')"]
    return subprocess.run([PYTHON, *start, "none", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size)))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(("to", "sigxfsz_default"), [("safetensors", False), ("official", False), ("hf", False),
                                                     ("safetensors", True)])
def test_a_file_size_limit_during_convert_force_is_one_line(tmp_path, to, sigxfsz_default) -> None:
    source = save_official(tmp_path / "full.pth", small_state_dict())
    out = tmp_path / "out" / f"converted.{to}"
    out.parent.mkdir()
    if to == "hf":  # a model folder: --force replaces the folder
        out.mkdir()
        (out / "config.json").write_text("the file --force replaces")
    else:
        out.write_text("the file --force replaces")
    done = child(["convert", str(source), "--to", to, "--out", str(out), "--force"], 20_000, tmp_path,
                 sigxfsz_default=sigxfsz_default)
    assert done.returncode == 1, (done.returncode, done.stderr)  # not -SIGXFSZ (-25): the process was not killed
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and str(out) in lines[0] and "larger than this process may write" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    kept = out / "config.json" if to == "hf" else out
    assert kept.read_text() == "the file --force replaces"  # the old output is kept whole
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # and no half-written file beside it


def test_a_full_disk_under_export_onnx_names_the_file(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    out = tmp_path / "out" / "encoder.onnx"
    done = child(["export-onnx", "-c", str(encoder), "--out", str(out)], 20_000, tmp_path)
    assert done.returncode == 1, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and f"could not write or read {out}:" in lines[0], done.stderr
    assert "larger than this process may write" in lines[0] and "a file" not in lines[0].split(":")[1]
    assert not out.exists() and [p.name for p in out.parent.iterdir()] == []


# ---- finetune --resume ------------------------------------------------------------------------------------
@pytest.fixture
def one_epoch_run(runner, small_arch, digits_tree, tmp_path) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
        run = tmp_path / "run"
        done = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "-c", str(encoder), "-o", str(run),
                                   "--epochs", "1", *LIGHT])
        assert done.exit_code == 0, done.output
    finally:
        torch.set_num_threads(threads)
    return run


def test_resume_with_a_garbage_log_names_the_file(runner, one_epoch_run, digits_tree) -> None:
    log = one_epoch_run / "log.jsonl"
    log.write_bytes(log.read_bytes() + b"\x00zzjunk{\n")
    result = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "--resume", str(one_epoch_run),
                                 "--epochs", "2"])
    line = one_error_line(result)
    assert f"{log} line 2 is not valid JSON (column 1)" in line and "one JSON object per finished epoch" in line
    assert "Expecting value" not in line and "zzjunk" not in line


def test_resume_from_a_pickle_that_carries_code_names_the_global(runner, small_arch, digits_tree, tmp_path) -> None:
    class Carrier:
        def __reduce__(self):
            return (os.system, ("echo this pickle runs code",))

    path = tmp_path / "run.pth"
    torch.save({"model": {}, "epoch": 0, "hook": Carrier()}, path)
    result = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "--resume", str(path)])
    line = one_error_line(result)
    assert str(path) in line and "asks to build objects beyond tensors" in line
    assert ("posix.system" in line or "os.system" in line) and "--resume" in line
    assert "Re-running" not in line and "weights_only" not in line and "--trust-checkpoint" not in line


# ---- the flags messages name ------------------------------------------------------------------------------
def test_knn_with_a_val_class_the_train_features_lack_names_no_flag_it_lacks(runner, tmp_path) -> None:
    from mae.large.evaluate.store import save_features

    meta = {"checkpoint": "c", "layer": "23", "pool": "cls", "transform": "eval"}
    train = save_features(tmp_path / "train.safetensors", torch.randn(4, 8), ["a0", "a1", "b0", "b1"], meta,
                          labels=[0, 0, 1, 1], classes=["a", "b"])
    val = save_features(tmp_path / "val.safetensors", torch.randn(2, 8), ["a2", "c0"], meta, labels=[0, 2],
                        classes=["a", "b", "c"])
    for command in (["knn", str(train), str(val)], ["probe", str(train), str(val), "-o", str(tmp_path / "h.pth"),
                                                    "--epochs", "1"]):
        line = one_error_line(runner.invoke(app, command))
        assert "--num-classes" not in line and "num_classes" not in line, line
        assert "label 2: train none, val 'c'" in line and "2 against 3 classes" in line, line


@pytest.mark.parametrize("extra", [[], ["--mask", "block"], ["--mask", "random"]])
def test_attention_names_mask_ratio_when_the_ratio_was_given(runner, small_arch, small_ckpts, images, tmp_path,
                                                             extra) -> None:
    result = runner.invoke(app, ["attention", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--device", "cpu", "--mask-ratio", "0.99", *extra])
    line = one_error_line(result)
    assert "--mask-ratio 0.99 leaves no visible patch out of 16" in line and "(command line: --mask)" not in line


def test_reconstruct_names_mask_ratio_in_the_cli_words(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    result = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(small_ckpts[0]), "--out",
                                 str(tmp_path / "o"), "--device", "cpu", "--mask-ratio", "0.99"])
    line = one_error_line(result)
    assert "--mask-ratio 0.99 leaves no visible patch" in line and "mask_ratio" not in line


def test_a_mask_that_removes_everything_still_names_mask(runner, small_arch, small_ckpts, images, tmp_path) -> None:
    result = runner.invoke(app, ["attention", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--device", "cpu", "--mask", "block:0.99"])
    assert "(command line: --mask)" in one_error_line(result)


def test_a_flag_the_command_lacks_is_never_named() -> None:
    from cli import knn, reconstruct

    knn_flags = command_flags(knn.knn_command.__wrapped__)
    assert knn_flags is not None and "--k" in knn_flags and "--num-classes" not in knn_flags
    assert with_flag("num_classes=3 is too few", "num_classes", knn_flags) == "num_classes=3 is too few"
    assert with_flag("samples must be positive", "samples", knn_flags) == "samples must be positive"
    flags = command_flags(reconstruct.reconstruct_command.__wrapped__)
    assert {"--out", "-o", "--mask-ratio", "--trust-checkpoint", "--json"} <= flags
    assert with_flag("pass trust=True", "trust", flags) == "pass --trust-checkpoint"


# ---- the device name, before torch ------------------------------------------------------------------------
COMMANDS_WITH_DEVICE = {
    "reconstruct": ["reconstruct", "x.png"], "loss": ["loss", "x.png"], "features": ["features", "x.png"],
    "attention": ["attention", "x.png"], "pca": ["pca", "x.png"], "evaluate": ["evaluate", "val"],
    "finetune": ["finetune", "train", "val"], "pretrain": ["pretrain", "train", "--from-scratch"],
}


def test_every_command_with_device_is_in_the_table() -> None:
    from cli.app import COMMANDS

    having = {m.__name__.rpartition(".")[2] for m in COMMANDS
              if "--device" in (command_flags(getattr(m, m.__name__.rpartition('.')[2] + "_command").__wrapped__) or ())}
    assert having == set(COMMANDS_WITH_DEVICE)


@pytest.mark.parametrize("name", sorted(COMMANDS_WITH_DEVICE))
def test_an_unknown_device_is_refused_before_torch_is_imported(tmp_path, name) -> None:
    args = [*COMMANDS_WITH_DEVICE[name], "--device", "tpu"]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cli.app import app\n"
            f"r = CliRunner().invoke(app, {args!r})\n"
            "print(r.exit_code, 'torch' in sys.modules)\nprint(' '.join(r.output.split()))")
    done = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    first, message = done.stdout.split("\n", 1)
    assert first == "2 False", done.stdout + done.stderr
    assert "--device" in message and "auto, cpu, cuda, cuda:N or mps" in message and "'tpu'" in message


@pytest.mark.parametrize("name", ["auto", "cpu", "CUDA", "cuda:1", "mps"])
def test_device_names_pass_the_early_check(name) -> None:
    from cli.options import check_device_name

    assert check_device_name(name) == name


def test_a_device_that_is_not_there_is_still_the_library_check(runner, small_arch, small_ckpts, images,
                                                               tmp_path) -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    result = runner.invoke(app, ["attention", str(images[0]), "-c", str(small_ckpts[0]), "--out", str(tmp_path / "o"),
                                 "--device", "cuda:7"])
    assert "--device" in one_error_line(result)

