"""k-NN and the linear probe on real data (scikit-learn's hand-written digits as 64-d "features"),
against scikit-learn's own classifiers; LARS and the schedule against the official formulas."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from mae.large.errors import InvalidArgumentError, MAEError
from mae.large.evaluate.knn import knn
from mae.large.evaluate.probe import build_head, probe, save_probe
from mae.large.evaluate.source import as_source, check_compatible, labels_of
from mae.large.utils.optim import LARS, cosine_lr

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

# The official protocol with settings that make the digits split converge: 21 steps an epoch (`test_probe.py`
# covers the default grid protocol).
PROBE = {"protocol": "official", "epochs": 50, "batch_size": 64, "blr": 10.0, "warmup_epochs": 10}


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xva), torch.tensor(yva)


class Streamed:
    """A feature source that only streams blocks (as a shard directory does), counting its passes."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor, self.rows, self.dim, self.passes = tensor, tensor.shape[0], tensor.shape[1], 0

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        self.passes += 1
        for start in range(0, self.rows, size):
            yield self._tensor[start:start + size].clone()


# ---- k-NN -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 20])
def test_uniform_knn_agrees_with_sklearn(digits, k: int) -> None:
    xtr, ytr, xva, yva = digits
    ours = knn(xtr, ytr, xva, yva, k=k, weighting="uniform", dtype=torch.float64)
    theirs = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xtr.numpy(), ytr.numpy())
    agree = (ours.predictions.numpy() == theirs.predict(xva.numpy())).mean()
    assert agree >= 0.99, agree
    assert ours.top1 > 90 and ours.top5 >= ours.top1
    assert sum(ours.counts.values()) == len(yva) and set(ours.per_class) == set(range(10))
    assert math.isclose(sum(ours.per_class[c] * ours.counts[c] for c in ours.counts) / len(yva), ours.top1)


def test_softmax_knn_is_far_above_chance(digits) -> None:
    xtr, ytr, xva, yva = digits
    result = knn(xtr.float(), ytr, xva.float(), yva)  # k=20, T=0.07, float32: the defaults
    assert result.top1 > 90 and result.top5 > 99  # chance is 10%
    assert result.predictions.dtype == torch.int64 and result.predictions.shape == yva.shape


@pytest.mark.parametrize("weighting", ["softmax", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_equals_unchunked_exactly(digits, weighting: str, dtype: torch.dtype) -> None:
    xtr, ytr, xva, yva = digits
    whole = knn(xtr, ytr, xva, yva, weighting=weighting, dtype=dtype, chunk_rows=100_000, val_block_rows=100_000)
    for chunk_rows, val_block_rows in ((1, 450), (19, 100), (256, 7), (1000, 1)):
        part = knn(xtr, ytr, xva, yva, weighting=weighting, dtype=dtype, chunk_rows=chunk_rows, val_block_rows=val_block_rows)
        assert torch.equal(part.predictions, whole.predictions), (chunk_rows, val_block_rows)
        assert (part.top1, part.top5, part.per_class) == (whole.top1, whole.top5, whole.per_class)


def test_streamed_source_equals_tensor(digits) -> None:
    xtr, ytr, xva, yva = digits
    train = Streamed(xtr.float())
    streamed = knn(train, ytr, Streamed(xva.float()), yva, chunk_rows=128, val_block_rows=200)
    direct = knn(xtr.float(), ytr, xva.float(), yva, chunk_rows=128, val_block_rows=200)
    assert torch.equal(streamed.predictions, direct.predictions) and streamed.top1 == direct.top1
    assert train.passes == math.ceil(len(yva) / 200)  # the train set streams once per block of val rows


def test_tied_neighbours_go_to_the_earlier_row_whatever_the_chunks() -> None:
    same = torch.ones(6, 4)  # six identical training rows: every one is equally near
    labels = torch.tensor([3, 1, 2, 0, 1, 2])
    for chunk_rows in (1, 2, 4, 6):
        one = knn(same, labels, torch.ones(1, 4), torch.tensor([3]), k=1, chunk_rows=chunk_rows)
        assert one.predictions.tolist() == [3]
        two = knn(same, labels, torch.ones(1, 4), torch.tensor([1]), k=3, weighting="uniform", chunk_rows=chunk_rows)
        assert two.predictions.tolist() == [1]  # neighbours rows 0, 1, 2: a three-way tie goes to the lowest class


def test_default_temperature_is_dinos_and_decides_a_close_vote() -> None:
    """The weighted vote of Wu et al. 2018 as DINO's `eval_knn.py` (`knn_classifier`) computes it: each of the k
    nearest training rows adds exp(cosine similarity / T) to its class, with T = 0.07 (its `--temperature`
    default). Here one class-0 row at similarity 0.90 faces two class-1 rows at 0.84: class 0 wins iff
    (0.90 - 0.84) / T > ln 2, true at T = 0.07 (0.857) and false at T = 0.1 (0.6)."""
    def unit(cos: float, sign: float = 1.0) -> list[float]:
        return [cos, sign * math.sqrt(1.0 - cos * cos)]

    train = torch.tensor([unit(0.90), unit(0.84), unit(0.84, -1.0), unit(0.0)])  # the last is not among k = 3
    labels = torch.tensor([0, 1, 1, 2])
    query, truth = torch.tensor([[1.0, 0.0]]), torch.tensor([0])

    def votes(t: float) -> list[float]:  # by hand, per class 0, 1
        return [math.exp(0.90 / t), 2 * math.exp(0.84 / t)]

    assert votes(0.07)[0] > votes(0.07)[1] and votes(0.1)[0] < votes(0.1)[1]  # the two temperatures disagree
    assert knn(train, labels, query, truth, k=3).predictions.tolist() == [0]  # the default: T = 0.07
    assert knn(train, labels, query, truth, k=3, temperature=0.07).predictions.tolist() == [0]
    assert knn(train, labels, query, truth, k=3, temperature=0.1).predictions.tolist() == [1]


@pytest.mark.parametrize("weighting", ["uniform", "softmax"])
def test_top5_counts_the_fifth_ranked_class(weighting: str) -> None:
    """Top-5 is the true class among the first five of the vote ranking: fifth counts, sixth does not. Fifteen
    equally near training rows vote 5, 4, 3, 2, 1, 0 for classes 0..5; the true classes are 4 (fifth) and 5
    (sixth)."""
    train = torch.ones(15, 3)
    labels = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 2 + [4])
    result = knn(train, labels, torch.ones(2, 3), torch.tensor([4, 5]), k=15, weighting=weighting, num_classes=6)
    assert result.predictions.tolist() == [0, 0]
    assert (result.top1, result.top5) == (0.0, 50.0)


def test_probe_top5_counts_the_fifth_ranked_class() -> None:
    """The probe's top-5 (`main_linprobe.py` through timm's `accuracy(output, target, topk=(1, 5))`): logits
    ranked 5 > 4 > 3 > 2 > 1 > 0, true classes 4 (fifth: a hit) and 5 (sixth: a miss)."""
    from mae.large.evaluate.probe import _accuracy

    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]] * 2)
    top1, top5 = _accuracy(torch.nn.Identity(), as_source(logits), torch.tensor([4, 5]), 8, torch.device("cpu"))
    assert (top1, top5) == (0.0, 50.0)


def test_knn_refusals(digits) -> None:
    xtr, ytr, xva, yva = digits
    with pytest.raises(InvalidArgumentError, match="weighting"):
        knn(xtr, ytr, xva, yva, weighting="distance")
    with pytest.raises(InvalidArgumentError, match="k=2000"):
        knn(xtr, ytr, xva, yva, k=2000)
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        knn(xtr, ytr, xva[:, :10], yva)
    with pytest.raises(InvalidArgumentError, match="one label per row"):
        knn(xtr, ytr[:-1], xva, yva)
    with pytest.raises(InvalidArgumentError, match="not a feature source"):
        as_source([[1.0, 2.0]])


# ---- linear probe -------------------------------------------------------------------------------------
def test_official_probe_is_within_three_points_of_logistic_regression(digits) -> None:
    xtr, ytr, xva, yva = digits
    seen: list[dict] = []
    result = probe(xtr.float(), ytr, xva.float(), yva, on_epoch=seen.append, **PROBE)
    reference = 100 * LogisticRegression(max_iter=5000).fit(xtr.numpy(), ytr.numpy()).score(xva.numpy(), yva.numpy())
    assert result.top1 >= reference - 3, (result.top1, reference)
    assert result.top1 > 90 and result.top5 >= result.top1
    assert seen == result.history and [h["epoch"] for h in seen] == list(range(PROBE["epochs"]))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.head_state) == {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked",
                                      "head.1.weight", "head.1.bias"}
    assert result.head_state["head.1.weight"].shape == (10, 64)
    assert result.args["lr"] == PROBE["blr"] * 64 / 256 and result.args["steps_per_epoch"] == len(ytr) // 64


@pytest.mark.filterwarnings("ignore:protocol='official' makes only")  # 3 epochs: a short run on purpose
def test_probe_is_deterministic_and_streaming_changes_nothing(digits) -> None:
    xtr, ytr, xva, yva = digits
    settings = {**PROBE, "epochs": 3, "warmup_epochs": 1}
    first = probe(xtr.float(), ytr, xva.float(), yva, **settings)
    again = probe(xtr.float(), ytr, xva.float(), yva, **settings)
    train = Streamed(xtr.float())  # 64 * 64 * 4 bytes: a group of 4 batches at a time, several passes an epoch
    streamed = probe(train, ytr, Streamed(xva.float()), yva, memory_bytes=64 * 64 * 4 * 4, chunk_rows=100, **settings)
    other = probe(xtr.float(), ytr, xva.float(), yva, **{**settings, "seed": 1})
    for result in (again, streamed):
        assert result.history == first.history
        assert all(torch.equal(result.head_state[key], value) for key, value in first.head_state.items())
    assert train.passes > 3 * 2
    assert not torch.equal(other.head_state["head.1.weight"], first.head_state["head.1.weight"])


def test_batch_is_capped_at_the_training_set(digits) -> None:
    xtr, ytr, xva, yva = digits
    with pytest.warns(UserWarning, match="fewer than 1000"):  # 2 steps: said so
        result = probe(xtr[:100].float(), ytr[:100], xva.float(), yva, protocol="official", epochs=2,
                       warmup_epochs=1)  # batch 16384
    assert result.args["batch_size"] == 100 and result.args["steps_per_epoch"] == 1
    assert result.args["lr"] == pytest.approx(0.1 * 100 / 256)


def test_save_probe_loads_with_weights_only(digits, tmp_path) -> None:
    xtr, ytr, xva, yva = digits
    with pytest.warns(UserWarning, match="fewer than 1000"):
        result = probe(xtr.float(), ytr, xva.float(), yva, protocol="official", epochs=1, warmup_epochs=0,
                       batch_size=256)
    path = tmp_path / "head.pth"
    save_probe(result, path, extra={"classes": [str(c) for c in range(10)], "checkpoint": "x.pth"})
    saved = torch.load(path, weights_only=True)
    assert saved["args"]["classes"][3] == "3" and saved["args"]["epochs"] == 1
    head = build_head(64, 10)
    head.load_state_dict({k.removeprefix("head."): v for k, v in saved["model"].items()})
    with pytest.raises(InvalidArgumentError, match="plain values"):
        save_probe(result, tmp_path / "bad.pth", extra={"x": torch.zeros(1)})
    assert not (tmp_path / "bad.pth").exists()


def test_head_init_is_the_official_one() -> None:
    head = build_head(1024, 1000, torch.Generator().manual_seed(0))
    norm, linear = head
    assert isinstance(norm, torch.nn.BatchNorm1d) and not norm.affine and norm.eps == 1e-6
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.02) and not linear.bias.any()


# ---- LARS and the schedule ----------------------------------------------------------------------------
def test_lars_step_by_hand() -> None:
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([weight, bias], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    weight.grad, bias.grad = torch.tensor([[0.7, 2.6]]), torch.tensor([2.0, 0.0])
    opt.step()
    update = torch.tensor([[0.7, 2.6]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # decay: 2-D only -> [1.0, 3.0]
    update = update * (0.001 * 5.0 / math.sqrt(10.0))  # trust ratio: 2-D only
    assert torch.allclose(weight, torch.tensor([[3.0, 4.0]]) - 0.5 * update)
    assert torch.allclose(bias, torch.tensor([0.0, -1.0]))  # plain momentum SGD: no decay, no ratio
    weight.grad, bias.grad = torch.tensor([[0.7, 2.6]]), torch.tensor([2.0, 0.0])
    before = weight.detach().clone()
    opt.step()  # the momentum buffer: mu = 0.9 * mu + update
    second = (torch.tensor([[0.7, 2.6]]) + 0.1 * before)
    second = second * (0.001 * before.norm() / second.norm())
    assert torch.allclose(weight, before - 0.5 * (0.9 * update + second))
    assert torch.allclose(bias, torch.tensor([0.0, -1.0]) - 0.5 * (0.9 * 2.0 + 2.0) * torch.tensor([1.0, 0.0]))


def test_lars_defaults_are_the_official_ones() -> None:
    """facebookresearch/mae `util/lars.py`: `LARS(params, lr=0, weight_decay=0, momentum=0.9,
    trust_coefficient=0.001)`, which `main_linprobe.py` builds with lr and weight decay only."""
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    opt = LARS([weight])
    assert opt.defaults == {"lr": 0.0, "weight_decay": 0.0, "momentum": 0.9, "trust_coefficient": 0.001}
    # One step with only lr given, by the official rule: a 2-D parameter's update is the gradient (+ decay 0)
    # times trust_coefficient * ||w|| / ||g||; mu = 0.9 * 0 + update; w -= lr * mu.
    opt = LARS([weight], lr=2.0)
    weight.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1
    opt.step()
    update = [0.001 * 5.0 / 1.0 * g for g in (0.6, 0.8)]  # [0.003, 0.004]
    expected = torch.tensor([[3.0 - 2.0 * update[0], 4.0 - 2.0 * update[1]]])  # [[2.994, 3.992]]
    assert torch.allclose(weight.detach(), expected, rtol=0, atol=1e-6), weight
    # Momentum 0.9 by default: a second identical step moves by lr * (0.9 * update + update'), update' taken at
    # the new weight's norm.
    before = weight.detach().clone()
    weight.grad = torch.tensor([[0.6, 0.8]])
    opt.step()
    second = 0.001 * float(before.norm()) * torch.tensor([[0.6, 0.8]])
    assert torch.allclose(weight.detach(), before - 2.0 * (0.9 * torch.tensor([update]) + second), rtol=0, atol=1e-6)


def test_lars_zero_weight_uses_a_ratio_of_one() -> None:
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([weight], lr=1.0, momentum=0.0)
    weight.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(weight, -torch.ones(2, 2))


def test_schedule_matches_the_official_formula() -> None:
    lr, epochs, warmup = 6.4, 50, 10
    assert cosine_lr(0.0, lr=lr, epochs=epochs, warmup_epochs=warmup) == 0.0
    assert cosine_lr(5.0, lr=lr, epochs=epochs, warmup_epochs=warmup) == pytest.approx(3.2)
    assert cosine_lr(2 + 3 / 4, lr=lr, epochs=epochs, warmup_epochs=warmup) == pytest.approx(lr * 2.75 / 10)
    assert cosine_lr(10.0, lr=lr, epochs=epochs, warmup_epochs=warmup) == pytest.approx(lr)
    assert cosine_lr(30.0, lr=lr, epochs=epochs, warmup_epochs=warmup) == pytest.approx(lr / 2)
    at = 37.25
    official = 1e-3 + (lr - 1e-3) * 0.5 * (1 + math.cos(math.pi * (at - warmup) / (epochs - warmup)))
    assert cosine_lr(at, lr=lr, epochs=epochs, warmup_epochs=warmup, min_lr=1e-3) == pytest.approx(official)


# ---- compatibility and labels -------------------------------------------------------------------------
def test_check_compatible() -> None:
    meta = {"checkpoint": "mae_pretrain_vit_large.pth", "layer": "24", "pool": "cls", "transform": "eval-224"}
    check_compatible(meta, dict(meta))
    check_compatible({"pool": "cls"}, {"pool": "cls", "other": "x"})  # keys on neither side are fine
    with pytest.raises(InvalidArgumentError, match=r"differ in pool \(train 'cls', val 'mean'\)"):
        check_compatible(meta, {**meta, "pool": "mean"})
    with pytest.raises(InvalidArgumentError, match=r"differ in layer \(train '24', val '12'\)"):
        check_compatible(meta, {**meta, "layer": 12})
    with pytest.raises(InvalidArgumentError, match=r"transform \(train 'eval-224', val not recorded\)"):
        check_compatible(meta, {k: v for k, v in meta.items() if k != "transform"})
    check_compatible({"layer": 24}, {"layer": "24"})  # compared as text: an index and its metadata string agree


def test_labels_of() -> None:
    source = as_source(torch.zeros(3, 2))
    with pytest.raises(InvalidArgumentError, match="val features have no labels") as info:
        labels_of(source, "val")
    assert info.value.argument == "val"
    source.labels = torch.tensor([0, 1, 1])
    assert labels_of(source).dtype == torch.int64


def test_a_source_that_lies_about_its_rows(digits) -> None:
    xtr, ytr, xva, yva = digits
    short = Streamed(xtr)
    short.rows += 1
    with pytest.raises(MAEError, match="says it has"):
        knn(short, torch.cat([ytr, ytr[:1]]), xva, yva)
