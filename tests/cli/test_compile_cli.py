"""`--compile` on the commands: the flag reaches the job, and the compile time is a line of the command's output.

torch.compile is given the `aot_eager` backend (tracing only: seconds, not a minute); what inductor computes is
tests/large/models/test_compile.py's and tests/large/jobs/test_compile_jobs.py's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from cli.app import app
from tests.helpers import encoder_only, save_official, small_state_dict


@pytest.fixture
def traced(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real = torch.compile

    def compile(model: Any = None, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile)
    return calls


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretrain_says_what_compiling_cost(runner, small_arch, digits_tree, tmp_path, traced, one_thread) -> None:
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    done = runner.invoke(app, ["pretrain", str(digits_tree), "-c", str(encoder), "-o", str(tmp_path / "run"),
                               "--epochs", "1", "--size", "32", "--batch-size", "16", "--accum-iter", "1", "--device",
                               "cpu", "--amp", "off", "--preview-every", "0", "--compile"])
    assert done.exit_code == 0, done.output
    assert "torch.compile: the training step compiled in" in done.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["compile"] is True
    assert [call["fullgraph"] for call in traced] == [True]


def test_the_inference_commands_say_what_compiling_cost(runner, small_arch, small_ckpts, images, tmp_path, traced,
                                                        one_thread) -> None:
    """Without --compile nothing is compiled or said; with it, the note says what compiling cost."""
    full, encoder = small_ckpts
    folder = str(images[0].parent)
    commands = {
        "the encoder's forward pass": ["features", folder, "-c", str(encoder), "-o", str(tmp_path / "f.safetensors"),
                                       "--batch-size", "2", "--crop", "resize"],
        "the masked forward pass": ["loss", folder, "-c", str(full), "--batch-size", "2"],
    }
    for what, command in commands.items():
        plain = runner.invoke(app, command)
        assert plain.exit_code == 0, plain.output
        assert "torch.compile" not in plain.stderr
        compiled = runner.invoke(app, [*command, "--compile"])
        assert compiled.exit_code == 0, compiled.output
        assert f"torch.compile: {what} compiled in" in compiled.stderr, compiled.stderr
    rec = runner.invoke(app, ["reconstruct", str(images[0]), "-c", str(full), "-o", str(tmp_path / "rec"), "--compile"])
    assert rec.exit_code == 0, rec.output
    assert len(traced) == 3 and all(call == {"fullgraph": True, "dynamic": False} for call in traced)  # one per job
