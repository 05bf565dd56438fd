"""`mae-large pretrain`: options equal to the library recipe, a run from scratch and its files, a real SIGTERM that
stops a run mid-epoch and a resume that continues it bit for bit, and outputs the other commands read as they are."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli.app import app
from cli.pretrain import FIELDS, MASKS, NOT_CONFIG, pretrain_command
from mae.large.models.mae import MaskedAutoencoderViT
from mae.large.train.pretrain import MASKS as LIBRARY_MASKS
from mae.large.train.pretrain import PretrainConfig
from tests.helpers import REPO, encoder_only, run_files, save_official, small_config, small_state_dict, tensorboard_scalars

LIGHT = ["--size", "32", "--batch-size", "16", "--accum-iter", "1", "--blr", "8e-3", "--warmup-epochs", "1",
         "--device", "cpu", "--amp", "off", "--preview-images", "3"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_option_defaults_are_the_library_recipe() -> None:
    defaults = PretrainConfig()
    options = {name: p.default for name, p in inspect.signature(pretrain_command).parameters.items()
               if name not in ("ctx", *NOT_CONFIG)}
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    for name, default in options.items():
        field = FIELDS.get(name, name)
        assert field in fields, name
        assert default == getattr(defaults, field), (name, default, getattr(defaults, field))
    assert MASKS == LIBRARY_MASKS


def test_a_run_from_scratch_prints_its_settings_and_writes_its_files(runner, small_arch, digits_tree, tmp_path) -> None:
    run = tmp_path / "run"
    done = runner.invoke(app, ["pretrain", str(digits_tree), "--from-scratch", "-o", str(run), "--epochs", "2", *LIGHT])
    assert done.exit_code == 0, done.output
    assert "pre-training from scratch" in done.output and "blr=0.008" in done.output and "weight_decay=0.05" in done.output
    assert "epoch 2/2: train loss" in done.output and "held-out loss" in done.output
    # checkpoint-N.pth at epoch 0, every --save-every (20) and at the end: the official rule.
    assert run_files(run) == ["checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-last.pth",
                                                     "config.json", "log.jsonl", "loss.png", "preview-0.png",
                                                     "preview-1.png", "preview.png"]
    saved = torch.load(run / "checkpoint-last.pth", weights_only=True)
    assert set(saved) == {"model", "optimizer", "epoch", "scaler", "args", "rng"}
    # The official layout (the reference file's keys), in the official model's registration order.
    assert sorted(saved["model"]) == sorted(small_state_dict())
    assert list(saved["model"]) == list(MaskedAutoencoderViT(small_config()).state_dict())
    assert json.loads((run / "config.json").read_text())["target"] == "norm-pix"
    # TensorBoard, as engine_pretrain.py writes it: at each update, the loss and lr against
    # epoch_1000x = int((data_iter_step / len(data_loader) + epoch) * 1000); 200 images in steps of 16 -> 12 per epoch.
    logged, log = tensorboard_scalars(run), [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"train_loss", "lr"} <= set(logged)
    assert [x for x, _ in logged["train_loss"]] == [int((i / 12 + e) * 1000) for e in range(2) for i in range(12)]
    for e, record in enumerate(log):
        losses = [v for x, v in logged["train_loss"] if e * 1000 <= x < (e + 1) * 1000]
        assert abs(sum(losses) / 12 - record["train_loss"]) < 1e-5 * record["train_loss"]
    assert logged["lr"][0] == (0, 0.0)  # the warm-up starts at 0


def test_where_a_run_starts_must_be_said(runner, small_arch, digits_tree, tmp_path) -> None:
    done = runner.invoke(app, ["pretrain", str(digits_tree), "-o", str(tmp_path / "run"), *LIGHT])
    assert done.exit_code == 2 and "--from-scratch" in done.output


def test_the_outputs_feed_the_other_commands(runner, small_arch, digits_tree, tmp_path) -> None:
    run = tmp_path / "run"
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    assert runner.invoke(app, ["pretrain", str(digits_tree), "-c", str(encoder), "-o", str(run), "--epochs", "1",
                               *LIGHT]).exit_code == 0
    ckpt = run / "checkpoint-last.pth"
    image = next((digits_tree / "3").iterdir())
    for args in (["inspect", str(ckpt)], ["reconstruct", str(image), "-c", str(ckpt), "-o", str(tmp_path / "figs")],
                 ["features", str(image), "-c", str(ckpt), "-o", str(tmp_path / "f.safetensors")],
                 ["convert", str(ckpt), "--to", "hf", "--out", str(tmp_path / "hf")],
                 ["finetune", str(digits_tree), str(digits_tree), "-c", str(ckpt), "-o", str(tmp_path / "ft"),
                  "--epochs", "1", "--size", "32", "--batch-size", "16", "--accum-iter", "1", "--device", "cpu"]):
        done = runner.invoke(app, args)
        assert done.exit_code == 0, (args[0], done.output)


def _env(ready: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MAE_LARGE_DEBUG")}
    return dict(env, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MAE_TEST_READY=str(ready))


def _child(point: str, args: list[str], ready: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.cli.child", point, "pretrain", *args], cwd=REPO,
                            env=_env(ready), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_sigterm_mid_epoch_stops_at_an_update_and_resume_continues_bit_for_bit(digits_tree, tmp_path) -> None:
    common = [str(digits_tree), "--from-scratch", "--epochs", "2", "--workers", "1", "--preview-every", "0", *LIGHT]
    whole = _child("none", [*common, "-o", str(tmp_path / "whole")], tmp_path / "unused")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    ready = tmp_path / "ready"
    cut = _child("step", [*common, "-o", str(tmp_path / "cut")], ready)
    deadline = time.monotonic() + 120
    while not ready.exists() and cut.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), cut.stderr.read()
    cut.send_signal(signal.SIGTERM)
    assert cut.wait(timeout=120) == 143
    said = cut.stderr.read()
    assert "interrupted by SIGTERM: the run stopped as asked at epoch 0, step 6 of 12" in " ".join(said.split()), said
    state = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert state["resume_at"]["step"] == 6 and state["epoch"] == -1
    assert not list((tmp_path / "cut").glob(".mae-*"))  # nothing half-written

    resumed = _child("none", ["--resume", str(tmp_path / "cut")], tmp_path / "unused")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "whole" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)


SIZES = ["--patch-size", "4", "--encoder-depth", "2", "--encoder-dim", "32", "--encoder-heads", "2", "--decoder-depth",
         "1", "--decoder-dim", "16", "--decoder-heads", "2"]


def test_an_encoder_of_any_size_is_trained_recorded_and_read_back_by_every_command(runner, digits_tree, tmp_path) -> None:
    """No architecture registered: the size options build the model, the run records it, the other commands build it
    from the checkpoint alone, and a run continued from that checkpoint keeps the encoder and the decoder."""
    run = tmp_path / "run"
    done = runner.invoke(app, ["pretrain", str(digits_tree), "--from-scratch", "-o", str(run), "--epochs", "1", *SIZES,
                               *LIGHT])
    assert done.exit_code == 0, done.output
    assert "patch_size=4, encoder_depth=2, encoder_dim=32, encoder_heads=2" in " ".join(done.output.split())
    saved = torch.load(run / "checkpoint-last.pth", weights_only=True)
    arch = saved["args"]["architecture"]
    assert (arch["patch_size"], arch["depth"], arch["embed_dim"], arch["num_heads"]) == (4, 2, 32, 2)
    assert (arch["decoder_depth"], arch["decoder_embed_dim"], arch["decoder_num_heads"]) == (1, 16, 2)
    assert arch["name"] == "vit_d32_depth2_heads2_patch4" and saved["model"]["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    ckpt, image = run / "checkpoint-last.pth", next((digits_tree / "3").iterdir())
    for args in (["reconstruct", str(image), "-c", str(ckpt), "-o", str(tmp_path / "figs")],
                 ["attention", str(image), "-c", str(ckpt), "-o", str(tmp_path / "figs")],
                 ["features", str(image), "-c", str(ckpt), "-o", str(tmp_path / "f.safetensors")]):
        done = runner.invoke(app, args)
        assert done.exit_code == 0, (args[0], done.output)

    more = tmp_path / "more"
    done = runner.invoke(app, ["pretrain", str(digits_tree), "-c", str(ckpt), "-o", str(more), "--epochs", "1", *LIGHT])
    assert done.exit_code == 0, done.output
    assert f"continuing {ckpt}" in " ".join(done.output.split()) and "starts fresh" not in done.output
    config = json.loads((more / "config.json").read_text())
    assert config["start"] == "full" and config["config"]["encoder_dim"] == 32 and config["config"]["decoder_dim"] == 16
    resumed = runner.invoke(app, ["pretrain", "--resume", str(more), "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output


def test_a_model_that_cannot_be_built_is_one_error_line(runner, digits_tree, tmp_path) -> None:
    done = runner.invoke(app, ["pretrain", str(digits_tree), "--from-scratch", "-o", str(tmp_path / "run"),
                               "--encoder-dim", "30", "--encoder-heads", "4", *LIGHT])
    assert done.exit_code == 1 and "embed_dim 30 must be divisible by num_heads 4" in done.output, done.output
    assert not (tmp_path / "run").exists()


TINY = ["--patch-size", "8", "--encoder-depth", "1", "--encoder-dim", "16", "--encoder-heads", "2", "--decoder-depth",
        "1", "--decoder-dim", "16", "--decoder-heads", "2", "--preview-every", "0"]


def test_a_resume_at_another_size_is_one_line_naming_it(runner, digits_tree, tmp_path) -> None:
    """The settings are checked before the model is built: another --size was a pos_embed size-mismatch traceback."""
    run = tmp_path / "run"
    done = runner.invoke(app, ["pretrain", str(digits_tree), "--from-scratch", "-o", str(run), "--epochs", "1", *TINY,
                               *LIGHT])
    assert done.exit_code == 0, done.output
    before = (run / "checkpoint-last.pth").read_bytes()
    done = runner.invoke(app, ["pretrain", "--resume", str(run), "--epochs", "2", "--size", "48"])
    said = " ".join(done.output.split())
    assert done.exit_code == 1 and "Traceback" not in done.output and said.count("error:") == 1, done.output
    assert "used other settings (input_size)" in said and "leave out the options that change them" in said, said
    assert (run / "checkpoint-last.pth").read_bytes() == before


def test_a_mask_ratio_that_leaves_no_patch_is_refused_before_anything_is_written(runner, digits_tree, tmp_path) -> None:
    """4 patches (16 x 16 at patch 8) at mask ratio 0.99: one line, and no run folder (it held a TensorBoard file)."""
    run = tmp_path / "run"
    sizes = [*LIGHT, "--size", "16"]
    done = runner.invoke(app, ["pretrain", str(digits_tree), "--from-scratch", "-o", str(run), "--mask-ratio", "0.99",
                               *TINY, *sizes])
    assert done.exit_code == 1 and "leaves no visible patch out of 4" in " ".join(done.output.split()), done.output
    assert not run.exists()
