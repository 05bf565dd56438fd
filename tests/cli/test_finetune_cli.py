"""`mae-large finetune` end to end on real digits with the small architecture: defaults printed and saved, one
progress bar and one line per epoch, the run folder's files, `--resume` with the run's own settings."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch

from cli.app import app
from cli.finetune import FIELDS, finetune_command
from mae.large.train.finetune import FinetuneConfig
from tests.helpers import encoder_only, run_files, save_official, small_state_dict

LIGHT = ["--size", "32", "--batch-size", "16", "--accum-iter", "1", "--mixup", "0", "--cutmix", "0", "--aa", "none",
         "--reprob", "0", "--smoothing", "0", "--drop-path", "0", "--blr", "0.05", "--warmup-epochs", "1",
         "--device", "cpu", "--amp", "off", "--workers", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """The small model trains several times faster on one torch thread on shared cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_option_defaults_are_the_library_recipe() -> None:
    defaults = FinetuneConfig()
    options = {name: p.default for name, p in inspect.signature(finetune_command).parameters.items()
               if name not in ("ctx", "train", "val", "checkpoint", "out_dir", "resume", "json_")}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for name, default in options.items():
        field = FIELDS.get(name, name)
        assert field in fields, name
        assert default == getattr(defaults, field), (name, default, getattr(defaults, field))


def test_finetune_runs_prints_and_resumes(runner, small_arch, digits_tree, tmp_path, monkeypatch) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    run = tmp_path / "run"
    done = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "-c", str(encoder), "-o", str(run),
                               "--epochs", "1", *LIGHT])
    assert done.exit_code == 0, done.output
    assert "layer_decay=0.75" in done.output and "weight_decay=0.05" in done.output  # every default printed
    assert "epoch 1/1: train loss" in done.output and "top-1" in done.output
    assert run_files(run) == ["checkpoint-best.pth", "checkpoint-last.pth", "config.json",
                                                     "log.jsonl"]
    assert json.loads((run / "config.json").read_text())["config"]["epochs"] == 1
    # --resume with only --epochs given: the other settings are the run's (size 32, blr 0.05, ...), not the defaults,
    # and without -o the run goes on in its own folder (from the current folder elsewhere, nothing is written there).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "--resume", str(run / "checkpoint-last.pth"),
                               "--epochs", "2", "--json"])
    assert list(elsewhere.iterdir()) == []
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert [r["epoch"] for r in result["history"]] == [1] and result["args"]["config"]["blr"] == 0.05
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert torch.load(run / "checkpoint-last.pth", weights_only=True)["epoch"] == 1


def test_mismatched_class_folders_are_one_line(runner, small_arch, digits_tree, tmp_path) -> None:
    import shutil

    val = tmp_path / "val"
    shutil.copytree(digits_tree, val)
    shutil.rmtree(val / "3")
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    done = runner.invoke(app, ["finetune", str(digits_tree), str(val), "-c", str(encoder), "-o", str(tmp_path / "r"),
                               *LIGHT])
    assert done.exit_code == 1
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and "different class folders (only in train: 3" in lines[0] and "Traceback" not in done.output


def _refusal(runner, digits_tree, tmp_path, *options: str) -> str:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    done = runner.invoke(app, ["finetune", str(digits_tree), str(digits_tree), "-c", str(encoder), "-o",
                               str(tmp_path / "run"), "--epochs", "1", "--size", "32", "--device", "cpu", *options])
    assert done.exit_code == 1, done.output
    assert not (tmp_path / "run").exists()  # refused before anything was written
    return " ".join(done.output.split())


def test_too_few_images_for_one_update_names_the_options_that_fix_it(runner, small_arch, digits_tree, tmp_path) -> None:
    # 200 images at batch 32: 6 steps an epoch; the default effective batch 1024 needs 32 micro-steps per update.
    said = _refusal(runner, digits_tree, tmp_path, "--batch-size", "32")
    assert "200 training images make 6 steps of batch 32 x 1 process(es) per epoch" in said
    assert "fewer than the 32 micro-steps of one update" in said
    assert "use --effective-batch 192 or less (--accum-iter 6 at this batch size)" in said
    assert "accum_iter=" not in said and "command line:" not in said  # every option in the CLI's spelling, once
    said = _refusal(runner, digits_tree, tmp_path, "--batch-size", "32", "--accum-iter", "8")
    assert "use --accum-iter 6 or less" in said


def test_an_odd_batch_with_mixup_names_the_even_sizes_and_the_switches(runner, small_arch, digits_tree, tmp_path) -> None:
    said = _refusal(runner, digits_tree, tmp_path, "--batch-size", "5", "--accum-iter", "1")
    assert "batch size 5 must be even; use --batch-size 4 or 6" in said
    assert "turn both off with --mixup 0 and --cutmix 0" in said


def test_an_effective_batch_the_batch_does_not_divide_names_batch_sizes_that_do(runner, small_arch, digits_tree,
                                                                               tmp_path) -> None:
    said = _refusal(runner, digits_tree, tmp_path, "--batch-size", "6", "--effective-batch", "64")
    assert "the effective batch 64 is not a multiple of batch size 6 x 1 processes; choose --batch-size 4 or 8" in said
