"""Preemption of the training commands in a child process: SIGUSR1 (SLURM's warning before the time limit) writes a
mid-epoch checkpoint, asks SLURM to requeue the job and exits 138; `finetune` stops like `pretrain` and resumes bit for
bit; a second signal ends a run at once with nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import REPO, save_official, small_state_dict

FINETUNE = ["--size", "32", "--batch-size", "16", "--accum-iter", "1", "--epochs", "2", "--warmup-epochs", "1",
            "--workers", "1", "--device", "cpu", "--amp", "off", "--mixup", "0", "--cutmix", "0"]


def _child(point: str, args: list[str], ready: Path, **env: str) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MAE_LARGE_DEBUG",
                                                             "SLURM_JOB_ID")}
    return subprocess.Popen([sys.executable, "-m", "tests.cli.child", point, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(base, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
                                     MAE_TEST_READY=str(ready), **env))


def _wait_ready(child: subprocess.Popen, ready: Path) -> None:
    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), child.stderr.read()


def _fake_scontrol(folder: Path) -> Path:
    """An `scontrol` on PATH that records its arguments."""
    folder.mkdir()
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'called'}\n")
    script.chmod(0o755)
    return folder


def test_finetune_stops_on_sigusr1_asks_for_a_requeue_and_resumes_bit_for_bit(digits_tree, tmp_path) -> None:
    encoder = save_official(tmp_path / "enc.pth", {k: v for k, v in small_state_dict().items()
                                                   if not k.startswith(("mask_token", "decoder_"))})
    common = ["finetune", str(digits_tree), str(digits_tree), "-c", str(encoder), *FINETUNE]
    whole = _child("none", [*common, "-o", str(tmp_path / "whole")], tmp_path / "unused")
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    bin_dir = _fake_scontrol(tmp_path / "bin")
    cut = _child("step", [*common, "-o", str(tmp_path / "cut")], tmp_path / "ready", SLURM_JOB_ID="4242",
                 PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _wait_ready(cut, tmp_path / "ready")
    cut.send_signal(signal.SIGUSR1)
    assert cut.wait(timeout=120) == 128 + signal.SIGUSR1 == 138
    said = " ".join(cut.stderr.read().split())
    assert "interrupted by SIGUSR1: the run stopped as asked at epoch 0, step 6 of 12" in said, said
    assert "SLURM job 4242 requeued" in said and "--resume" in said, said
    assert (bin_dir / "called").read_text().split() == ["requeue", "4242"]
    state = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert state["resume_at"]["epoch"] == 0 and state["resume_at"]["step"] == 6
    assert not list((tmp_path / "cut").glob(".mae-*"))

    resumed = _child("none", ["finetune", str(digits_tree), str(digits_tree), "--resume", str(tmp_path / "cut")],
                     tmp_path / "unused")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "whole" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)


def test_a_second_signal_ends_a_training_run_at_once(digits_tree, tmp_path) -> None:
    """The first SIGTERM asks for a stop at the next update; the run is held before it, so only a second one can end
    it: at once, exit 143, no checkpoint of the interrupted epoch and no temporary file."""
    args = ["pretrain", str(digits_tree), "--from-scratch", "-o", str(tmp_path / "run"), "--size", "32", "--batch-size",
            "16", "--accum-iter", "1", "--epochs", "1", "--workers", "0", "--device", "cpu", "--amp", "off",
            "--preview-every", "0"]
    ready = tmp_path / "ready"
    child = _child("held", args, ready)
    _wait_ready(child, ready)
    child.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert child.poll() is None  # the first signal waits for the update, which is held
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 143
    assert not list((tmp_path / "run").glob(".mae-*")) and not (tmp_path / "run" / "checkpoint-last.pth").exists()
