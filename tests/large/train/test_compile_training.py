"""`compile=True` in the training recipes: the step runs through torch.compile (the blocks, `trainer.compile_model`), its
compile time is an event, evaluation and monitoring stay eager, and the run computes what the eager run computes.

These tests check the wiring, so torch.compile is given the `aot_eager` backend (the forward and backward graphs
traced and run as traced, no code generation: seconds instead of a minute); inductor's numerics for a training step
are tests/large/models/test_compile.py's. With it the losses equal the eager run's to float32 rounding (1e-5).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mae.large.train.finetune import FinetuneConfig, finetune
from mae.large.train.pretrain import PretrainConfig, pretrain
from tests.helpers import save_official, small_state_dict, use_small_architecture

FINETUNE = dict(input_size=32, batch_size=16, accum_iter=1, warmup_epochs=1, blr=0.05, layer_decay=0.9, mixup=0.0,
                cutmix=0.0, smoothing=0.0, drop_path=0.0, workers=0, device="cpu", amp="off", epochs=1,
                save_checkpoints=False)
PRETRAIN = dict(input_size=32, batch_size=16, accum_iter=1, blr=8e-3, warmup_epochs=1, workers=0, device="cpu",
                amp="off", preview_every=0, preview_images=4, save_every=0, epochs=1, save_checkpoints=False)


@pytest.fixture
def traced(monkeypatch) -> list[dict[str, Any]]:
    """torch.compile with the aot_eager backend; the keyword arguments of each call are recorded."""
    calls: list[dict[str, Any]] = []
    real = torch.compile

    def compile(model: Any = None, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(model, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile)
    return calls


@pytest.fixture
def small(monkeypatch, tmp_path_factory):
    """The small architecture as the default and its official weights as a file; one torch thread (restored)."""
    use_small_architecture(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_official(tmp_path_factory.mktemp("pretrained") / "small.pth", small_state_dict())
    torch.set_num_threads(threads)


def _events(sink: list[tuple[str, dict[str, Any]]]):
    return lambda event, info: sink.append((event, info))


def test_finetune_compiled_computes_the_eager_run(small, digits_tree, tmp_path, traced) -> None:
    eager = finetune(digits_tree, digits_tree, tmp_path / "eager", FinetuneConfig(**FINETUNE), pretrained=small)
    assert traced == []  # the default never compiles
    heard: list[tuple[str, dict[str, Any]]] = []
    run = finetune(digits_tree, digits_tree, tmp_path / "compiled", FinetuneConfig(**FINETUNE, compile=True),
                   pretrained=small, on_progress=_events(heard))
    assert traced == [{"fullgraph": True, "dynamic": False}]  # the blocks, whole graphs, static shapes: once
    compiled = [info for event, info in heard if event == "compile"]
    assert compiled and compiled[0]["step"] == 0 and compiled[0]["seconds"] > 0
    assert compiled[0]["text"].startswith("torch.compile: the training step compiled in")
    (a,), (b,) = eager.history, run.history
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)  # evaluated eagerly, of weights trained alike
    assert run.args["config"]["compile"] is True


def test_pretrain_compiled_with_a_chosen_mask_computes_the_eager_run(small, digits_tree, tmp_path, traced) -> None:
    """A chosen mask kind (block masks, drawn per image) with compiled blocks: the masking itself stays eager."""
    runs = [pretrain(digits_tree, tmp_path / name, PretrainConfig(**PRETRAIN, mask="block", compile=compiled))
            for name, compiled in (("eager", False), ("compiled", True))]
    assert len(traced) == 1
    (a,), (b,) = runs[0].history, runs[1].history
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
