"""The linear probe's protocols on real data (scikit-learn's hand-written digits as 64-d "features"): the default
grid (chosen on held-out training rows only, deterministic, close to `LogisticRegression`), the official protocol
pinned to main_linprobe.py and reproducing the code path it replaced, and the too-few-steps warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from mae.large.errors import InvalidArgumentError
from mae.large.evaluate.probe import GRID, MIN_STEPS, OFFICIAL, build_head, probe, save_probe
from mae.large.evaluate.probe_grid import LEARNING_RATES, WEIGHT_DECAYS, holdout_split
from tests.large.evaluate import probe_0e3da7d

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

QUICK = {"epochs": 1, "min_steps": 100}  # a short grid (100 steps a phase) for the properties below
SHORT = pytest.mark.filterwarnings("ignore:protocol='grid' makes only")  # QUICK is short on purpose


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return torch.tensor(xtr).float(), torch.tensor(ytr), torch.tensor(xva).float(), torch.tensor(yva)


@pytest.fixture(scope="module")
def default_run(digits):
    xtr, ytr, xva, yva = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default makes enough steps: no warning
        return probe(xtr, ytr, xva, yva)


class Streamed:
    """A feature source that only streams blocks (as a shard directory does)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor, self.rows, self.dim = tensor, tensor.shape[0], tensor.shape[1]

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.rows, size):
            yield self._tensor[start:start + size].clone()


def _same_head(a, b) -> bool:
    return a.head_state.keys() == b.head_state.keys() and all(torch.equal(a.head_state[k], b.head_state[k])
                                                              for k in a.head_state)


# ---- the default: the grid -------------------------------------------------------------------------------
def test_default_grid_is_within_three_points_of_logistic_regression(digits, default_run) -> None:
    xtr, ytr, xva, yva = digits
    scaler = StandardScaler().fit(xtr.double().numpy())
    reference = 100 * LogisticRegression(max_iter=5000).fit(scaler.transform(xtr.double().numpy()), ytr.numpy()).score(
        scaler.transform(xva.double().numpy()), yva.numpy())
    result = default_run
    assert result.top1 >= reference - 3, (result.top1, reference)
    assert len(result.grid) == len(LEARNING_RATES) * len(WEIGHT_DECAYS) == 52
    assert {(p["lr"], p["weight_decay"]) for p in result.grid} == {(lr, wd) for lr in LEARNING_RATES
                                                                   for wd in WEIGHT_DECAYS}
    best_held = max(p["holdout_top1"] for p in result.grid)
    assert result.grid[result.chosen]["holdout_top1"] == best_held
    args = result.args
    assert (args["protocol"], args["optimizer"], args["holdout"], args["refit"]) == ("grid", "SGD", 0.2, True)
    assert args["fit_rows"] + args["holdout_rows"] == len(ytr) and args["steps"] >= MIN_STEPS
    assert (args["lr"], args["weight_decay"]) == (result.grid[result.chosen]["lr"],
                                                  result.grid[result.chosen]["weight_decay"])
    assert [h["phase"] for h in result.history] == ["refit"] * args["refit_epochs"] and not result.warnings
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_the_saved_head_is_the_official_layout_and_scores_the_same(digits, default_run, tmp_path) -> None:
    xtr, ytr, xva, yva = digits
    path = tmp_path / "head.pth"
    save_probe(default_run, path, extra={"classes": [str(c) for c in range(10)]})
    saved = torch.load(path, weights_only=True)
    head = build_head(64, 10)
    head.load_state_dict({k.removeprefix("head."): v for k, v in saved["model"].items()})
    predicted = head.eval()(xva).argmax(1)
    assert 100.0 * (predicted == yva).double().mean().item() == pytest.approx(default_run.top1)
    assert saved["args"]["learning_rates"] == list(LEARNING_RATES) and saved["args"]["protocol"] == "grid"


@SHORT
def test_the_choice_never_looks_at_val(digits) -> None:
    xtr, ytr, xva, yva = digits
    shuffled = yva[torch.randperm(len(yva), generator=torch.Generator().manual_seed(5))]
    true, other = (probe(xtr, ytr, xva, labels, min_steps=300) for labels in (yva, shuffled))
    assert other.chosen == true.chosen and _same_head(other, true) and other.history == true.history
    assert [(p["holdout_top1"], p["holdout_loss"]) for p in other.grid] == [
        (p["holdout_top1"], p["holdout_loss"]) for p in true.grid]
    assert other.top1 < 30 < true.top1  # val was scored, with the labels it was given


@SHORT
def test_grid_is_deterministic_and_streaming_changes_nothing(digits) -> None:
    xtr, ytr, xva, yva = digits
    first = probe(xtr, ytr, xva, yva, chunk_rows=100, **QUICK)
    again = probe(xtr, ytr, xva, yva, chunk_rows=100, **QUICK)
    # Each batch gathered in a pass over a stream; the same blocks (chunk_rows), the same sums.
    streamed = probe(Streamed(xtr), ytr, Streamed(xva), yva, memory_bytes=1024 * 64 * 4, chunk_rows=100, **QUICK)
    for result in (again, streamed):
        assert (result.grid, result.chosen, result.history) == (first.grid, first.chosen, first.history)
        assert _same_head(result, first)
    other = probe(xtr, ytr, xva, yva, seed=1, **QUICK)
    assert [p["holdout_top1"] for p in other.grid] != [p["holdout_top1"] for p in first.grid]


@SHORT
def test_refit_false_keeps_the_chosen_grid_head(digits) -> None:
    xtr, ytr, xva, yva = digits
    result = probe(xtr, ytr, xva, yva, refit=False, learning_rates=[1e-3, 1e-2], weight_decays=[0.0], **QUICK)
    assert len(result.grid) == 2 and result.args["refit_epochs"] == 0
    assert result.top1 == result.grid[result.chosen]["val_top1"]
    assert {h["phase"] for h in result.history} == {"grid"}


def test_holdout_split_is_stratified_seeded_and_disjoint() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 3)
    fit, held = holdout_split(labels, 0.2, seed=0)
    assert sorted(fit.tolist() + held.tolist()) == list(range(len(labels)))
    assert [int((labels[held] == c).sum()) for c in range(4)] == [2, 1, 0, 1]  # round(0.2 n), never a whole class
    assert torch.equal(holdout_split(labels, 0.2, seed=0)[1], held)
    assert any(not torch.equal(holdout_split(labels, 0.2, seed=s)[1], held) for s in (1, 2, 3))


def test_grid_refusals(digits) -> None:
    xtr, ytr, xva, yva = digits
    with pytest.raises(InvalidArgumentError, match="blr=0.1 is a setting of protocol='official'") as info:
        probe(xtr, ytr, xva, yva, blr=0.1)
    assert info.value.argument == "blr"
    with pytest.raises(InvalidArgumentError, match="holdout=0.3 is a setting of protocol='grid'"):
        probe(xtr, ytr, xva, yva, protocol="official", holdout=0.3)
    with pytest.raises(InvalidArgumentError, match="protocol='lars'"):
        probe(xtr, ytr, xva, yva, protocol="lars")
    for bad in ({"holdout": 1.0}, {"holdout": 0.0}, {"learning_rates": []}, {"weight_decays": [-1.0]}):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            probe(xtr, ytr, xva, yva, **bad)
    with pytest.raises(InvalidArgumentError, match="holds out no row"):
        probe(xtr[:2], torch.tensor([0, 1]), xva, yva)


# ---- the official protocol ----------------------------------------------------------------------------------
def test_official_defaults_are_main_linprobe_py() -> None:
    # main_linprobe.py: --epochs 90, --blr 0.1, --weight_decay 0, --warmup_epochs 10, --min_lr 0, LARS, the head
    # trunc_normal_(std=0.01) (test_knn.py checks the init); FINETUNE.md: effective batch 512 x 32 GPUs = 16384.
    assert OFFICIAL == {"epochs": 90, "batch_size": 16384, "blr": 0.1, "weight_decay": 0.0, "warmup_epochs": 10,
                        "min_lr": 0.0}
    assert GRID["learning_rates"] == LEARNING_RATES and GRID["weight_decays"] == WEIGHT_DECAYS


def test_official_protocol_reproduces_the_previous_code_path_exactly(digits) -> None:
    xtr, ytr, xva, yva = digits
    settings = {"epochs": 3, "batch_size": 64, "blr": 10.0, "warmup_epochs": 1}
    with pytest.warns(UserWarning, match="fewer than 1000"):
        now = probe(xtr, ytr, xva, yva, protocol="official", **settings)
    before = probe_0e3da7d.probe(xtr, ytr, xva, yva, **settings)
    assert now.history == before.history and _same_head(now, before)
    assert {k: v for k, v in now.args.items() if k in before.args} == before.args
    # The defaults, streamed: 90 epochs of one step (the batch is capped at the rows).
    with pytest.warns(UserWarning, match="fewer than 1000"):
        now = probe(Streamed(xtr[:300]), ytr[:300], Streamed(xva), yva, protocol="official", chunk_rows=128)
    before = probe_0e3da7d.probe(Streamed(xtr[:300]), ytr[:300], Streamed(xva), yva, epochs=90, chunk_rows=128)
    assert now.history == before.history and _same_head(now, before) and len(now.history) == 90
    assert now.args["requested_batch_size"] == 16384 and now.args["batch_size"] == 300
    assert (now.top1, now.top5) == (before.top1, before.top5) and now.grid == [] and now.chosen is None


def test_too_few_steps_warn_where_they_should(digits) -> None:
    xtr, ytr, xva, yva = digits  # 1347 training rows
    with pytest.warns(UserWarning, match=r"makes only 90 optimiser steps .* fewer than 1000") as caught:
        small = probe(xtr, ytr, xva, yva, protocol="official")  # the official defaults on a small set
    assert len(caught) == 1 and small.warnings == [str(caught[0].message)] and "\n" not in small.warnings[0]
    with pytest.warns(UserWarning, match="never leaves its warm-up"):
        probe(xtr, ytr, xva, yva, protocol="official", epochs=5, batch_size=64)  # warm-up 10 >= 5 epochs
    with pytest.warns(UserWarning, match="protocol='grid' makes only"):
        probe(xtr, ytr, xva, yva, epochs=1, min_steps=0, learning_rates=[0.01], weight_decays=[0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough steps: nothing said
        enough = probe(xtr, ytr, xva, yva, protocol="official", epochs=48, batch_size=64, warmup_epochs=5)
        assert enough.args["steps"] == 21 * 48 >= MIN_STEPS and enough.warnings == []
        assert probe(xtr, ytr, xva, yva, learning_rates=[0.01], weight_decays=[0.0]).warnings == []


def test_grid_top5_counts_the_fifth_ranked_class() -> None:
    """A head whose logits rank the true class exactly fifth: top-1 misses, top-5 hits (a top-4 would miss)."""
    from mae.large.evaluate.probe_grid import Heads, score_heads
    from mae.large.evaluate.source import as_source

    classes, dim = 7, 7
    weight = torch.diag(torch.tensor([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]))[:, None, :]  # (C, G=1, D)
    heads = Heads(weight, torch.zeros(classes, 1), torch.zeros(dim), torch.ones(dim) - 1e-6)  # standardising: identity
    features = torch.ones(3, dim)  # logits 7, 6, 5, 4, 3, 2, 1: class 4 is ranked fifth, class 5 sixth
    top1, top5, _ = score_heads(heads, as_source(features), torch.tensor([4, 4, 5]), None, 64, torch.device("cpu"))
    assert top1 == [0.0] and top5 == [pytest.approx(200 / 3)]


def test_grid_schedule_is_a_cosine_per_step_without_warm_up() -> None:
    """Each epoch's last lr factor is DINOv2's per-iteration cosine 0.5 * (1 + cos(pi * t / T)) at its last step
    (t = epoch + (steps - 1) / steps), not the epoch's (a per-epoch schedule would give it at t = epoch)."""
    import math

    from mae.large.evaluate.probe_grid import train_heads
    from mae.large.evaluate.source import as_source

    features, labels = torch.randn(32, 6), torch.arange(32) % 3
    epochs, batch = 3, 8  # 4 steps an epoch
    _, _, factors = train_heads(as_source(features), labels, torch.arange(32), [(0.1, 0.0)], init=torch.zeros(3, 6),
                                epochs=epochs, batch=batch, momentum=0.9, seed=0, phase="test",
                                device=torch.device("cpu"), budget_rows=32, chunk_rows=32, on_epoch=None)
    expected = [0.5 * (1 + math.cos(math.pi * (e + 3 / 4) / epochs)) for e in range(epochs)]
    assert factors == pytest.approx(expected, rel=1e-12)
