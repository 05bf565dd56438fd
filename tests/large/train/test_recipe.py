"""The fine-tuning recipe's numbers, pinned to the official sources rather than to the library's own values:
facebookresearch/mae (commit efb2a80) FINETUNE.md (the ViT-L command: `--batch_size 32` on 4 x 8 GPUs = effective
1024, `--epochs 50 --blr 1e-3 --layer_decay 0.75 --weight_decay 0.05 --drop_path 0.2 --reprob 0.25 --mixup 0.8
--cutmix 1.0`), `main_finetune.py` (defaults: warmup 5, min_lr 1e-6, smoothing 0.1, mixup_prob 1.0,
mixup_switch_prob 0.5; `args.lr = args.blr * eff_batch_size / 256`), `engine_finetune.train_one_epoch` and
`util/lr_sched.adjust_learning_rate` (the per-iteration schedule), `models_vit.py` and timm v0.3.2 (commit
6504a428: `timm/models/vision_transformer.py` drop-path rule, `timm/data/mixup.py` `Mixup._params_per_batch`,
`timm/loss/cross_entropy.py`)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.images import preprocess
from mae.large.data.labelled import TrainImages, epoch_batches
from mae.large.data.loader import image_folder
from mae.large.data.mixup import LabelSmoothingCrossEntropy, Mixup, SoftTargetCrossEntropy
from mae.large.models.layers import DropPath
from mae.large.train.finetune import FinetuneConfig, _build_model, build_criterion, build_train_transform, finetune
from tests.helpers import save_official, small_state_dict, use_small_architecture
from tests.large.data.test_mixup import beta_cdf

LIGHT = dict(input_size=32, batch_size=16, accum_iter=1, warmup_epochs=1, blr=0.05, layer_decay=0.9, mixup=0.0,
             cutmix=0.0, smoothing=0.0, drop_path=0.0, workers=0, device="cpu", amp="off", save_checkpoints=False)


@pytest.fixture
def small(monkeypatch, tmp_path_factory) -> Iterator[Path]:
    """The small architecture (embed 64, depth 2, 32 x 32) as the default, and its official weights as the
    pre-trained file; one torch thread while the test runs (restored)."""
    use_small_architecture(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_official(tmp_path_factory.mktemp("pretrained") / "small.pth", small_state_dict())
    torch.set_num_threads(threads)


def _log_softmax(logits: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(v) for v in logits))
    return [v - log_z for v in logits]


# ---- 5. label smoothing reaches the loss ---------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_reaches_the_criterion_and_the_mixup_targets(smoothing: float) -> None:
    """`main_finetune.py`: with mixup the smoothing is in mixup's targets (`Mixup(..., label_smoothing=
    args.smoothing)`, `SoftTargetCrossEntropy`), without it in `LabelSmoothingCrossEntropy(smoothing=...)`; 0.1 by
    default. The losses by hand (timm/loss/cross_entropy.py): (1 - s) NLL + s mean(-log p); and against the
    soft target of `mixup_target` (off = s / n, on = 1 - s + off) -sum(t log p), the same number."""
    logits, target = [2.0, 0.5, -1.0, 0.0], 1
    logp = _log_softmax(logits)
    by_hand = (1 - smoothing) * -logp[target] + smoothing * sum(-v for v in logp) / 4
    x, y = torch.tensor([logits]), torch.tensor([target])

    config = FinetuneConfig(mixup=0.0, cutmix=0.0) if smoothing == 0.1 else FinetuneConfig(
        mixup=0.0, cutmix=0.0, smoothing=smoothing)
    plain = build_criterion(config)
    assert isinstance(plain, LabelSmoothingCrossEntropy) and plain.smoothing == smoothing
    assert float(plain(x, y)) == pytest.approx(by_hand, rel=1e-6)

    mixed = FinetuneConfig() if smoothing == 0.1 else FinetuneConfig(smoothing=smoothing)  # mixup 0.8, cutmix 1.0
    assert isinstance(build_criterion(mixed), SoftTargetCrossEntropy)
    mixup = mixed.augment.mixup_fn(4)
    assert mixup is not None and mixup.label_smoothing == smoothing
    # prob 0: never mixed, so the targets are the smoothed one-hot rows alone.
    unmixed = Mixup(mixup.mixup_alpha, mixup.cutmix_alpha, prob=0.0, label_smoothing=mixup.label_smoothing,
                    num_classes=4)
    _, soft = unmixed(torch.zeros(2, 3, 4, 4), torch.tensor([target, 3]), random.Random(0))
    off = smoothing / 4
    assert soft[0].tolist() == pytest.approx([off, 1 - smoothing + off, off, off])
    assert float(build_criterion(mixed)(x, soft[:1])) == pytest.approx(by_hand, rel=1e-6)


def test_no_smoothing_is_plain_cross_entropy() -> None:
    criterion = build_criterion(FinetuneConfig(mixup=0.0, cutmix=0.0, smoothing=0.0))
    assert type(criterion) is torch.nn.CrossEntropyLoss
    assert FinetuneConfig(smoothing=0.0).augment.mixup_fn(4).label_smoothing == 0.0


# ---- 6. mixup 0.8 and cutmix 1.0, not the other way round ----------------------------------------------------
def test_the_recipes_mixup_has_the_official_alphas() -> None:
    """FINETUNE.md `--mixup 0.8 --cutmix 1.0`, `main_finetune.py`: `Mixup(mixup_alpha=args.mixup,
    cutmix_alpha=args.cutmix, prob=args.mixup_prob (1.0), switch_prob=args.mixup_switch_prob (0.5),
    mode='batch', label_smoothing=args.smoothing (0.1), num_classes=args.nb_classes)`."""
    mixup = FinetuneConfig().augment.mixup_fn(1000)
    assert mixup is not None
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.prob, mixup.switch_prob, mixup.mode,
            mixup.label_smoothing, mixup.num_classes) == (0.8, 1.0, 1.0, 0.5, "batch", 0.1, 1000)
    other = FinetuneConfig(mixup=0.3, cutmix=0.6).augment.mixup_fn(10)  # each setting to its own alpha
    assert other is not None and (other.mixup_alpha, other.cutmix_alpha) == (0.3, 0.6)
    assert FinetuneConfig(mixup=0.3, cutmix=0.0).augment.mixup_fn(10).cutmix_alpha == 0.0


def test_the_recipes_lambdas_follow_beta_08_for_mixup_and_beta_1_for_cutmix() -> None:
    """timm's `_params_per_batch` with both on: `use_cutmix = rand() < switch_prob`, then `lam =
    beta(cutmix_alpha, cutmix_alpha) if use_cutmix else beta(mixup_alpha, mixup_alpha)`. By hand on the same
    seeded stream, then by the laws: the empirical CDF of each kind of draw against Beta(0.8, 0.8) and Beta(1, 1)
    (which differ by up to 0.033) at 19 points, within 5 standard errors (<= 0.0125 at 40,000 draws)."""
    mixup = FinetuneConfig().augment.mixup_fn(10)
    assert mixup is not None
    rng, hand = random.Random(5), random.Random(5)
    for _ in range(200):
        draw = mixup.sample(32, 32, rng)
        assert hand.random() < 1.0  # prob 1.0: always mixed
        use_cutmix = hand.random() < 0.5
        lam = hand.betavariate(1.0, 1.0) if use_cutmix else hand.betavariate(0.8, 0.8)
        assert (draw.cutmix, draw.drawn_lam) == (use_cutmix, lam)
        if use_cutmix:
            hand.randrange(32), hand.randrange(32)  # the box centre (`rand_bbox`), drawn after lambda
    rng = random.Random(6)
    cut: list[float] = []
    mix: list[float] = []
    while min(len(cut), len(mix)) < 40000:
        draw = mixup.sample(32, 32, rng)
        (cut if draw.cutmix else mix).append(draw.drawn_lam)
    grid = [i / 20 for i in range(1, 20)]
    bound = 5 * 0.5 / math.sqrt(40000)
    for lams, alpha, other in ((mix[:40000], 0.8, 1.0), (cut[:40000], 1.0, 0.8)):
        ordered = np.sort(np.array(lams))
        for x in grid:
            empirical = np.searchsorted(ordered, x) / len(ordered)
            assert abs(empirical - beta_cdf(x, alpha, alpha)) < bound, (alpha, x, empirical)
        # The swapped law would be noticed: it lies more than twice the bound away somewhere on the grid.
        assert max(abs(beta_cdf(x, alpha, alpha) - beta_cdf(x, other, other)) for x in grid) > 2 * bound


# ---- 7. lr = blr x effective batch / 256 ---------------------------------------------------------------------
def test_lr_is_blr_times_the_effective_batch_over_256(small, tmp_path) -> None:
    """FINETUNE.md: "`lr` = `blr` * effective batch size / 256"; `main_finetune.py` `args.lr = args.blr *
    eff_batch_size / 256` with `eff_batch_size = batch_size * accum_iter * world_size`. The ViT-L run: blr 1e-3,
    32 x 1 x 32 GPUs = 1024 -> lr 4e-3. Here one process, batch 1 x accumulation 1024 (1,024 tiny images), stopped
    when the run starts: the settings it starts with."""
    tree = tmp_path / "tree"
    for label in range(2):
        (tree / str(label)).mkdir(parents=True)
        for i in range(512):
            Image.new("RGB", (4, 4), (label * 200, i % 256, 0)).save(tree / str(label) / f"{i:03d}.png")
    started: list[dict] = []

    class Started(Exception):
        pass

    def stop_at_start(event: str, details: dict) -> None:
        if event == "start":
            started.append(details)
            raise Started

    config = FinetuneConfig(**{**LIGHT, "batch_size": 1, "accum_iter": None, "effective_batch": 1024, "blr": 1e-3})
    with pytest.raises(Started):
        finetune(tree, tree, tmp_path / "run", config, pretrained=small, on_progress=stop_at_start)
    [args] = started
    assert (args["effective_batch"], args["accum_iter"], args["world_size"]) == (1024, 1024, 1)
    assert args["lr"] == pytest.approx(4e-3, rel=1e-12)
    # The same with batch 16 x accumulation 2 = 32: 1e-3 x 32 / 256 = 1.25e-4.
    started.clear()
    config = FinetuneConfig(**{**LIGHT, "batch_size": 16, "accum_iter": 2, "blr": 1e-3})
    with pytest.raises(Started):
        finetune(tree, tree, tmp_path / "run2", config, pretrained=small, on_progress=stop_at_start)
    assert started[0]["effective_batch"] == 32 and started[0]["lr"] == pytest.approx(1.25e-4, rel=1e-12)


# ---- 8. drop path 0.2, decayed linearly over the blocks ------------------------------------------------------
def test_the_fine_tuning_model_has_the_recipes_drop_path_in_every_block() -> None:
    """FINETUNE.md `--drop_path 0.2` for ViT-L reaches `models_vit.VisionTransformer(drop_path_rate=...)`, whose
    timm base gives block i the rate `dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]`:
    0.2 * i / 23 for ViT-L's 24 blocks (block 0: none). Built as `finetune` builds it, on the meta device."""
    with torch.device("meta"):
        model = _build_model(FinetuneConfig(), 1000, None, torch.device("meta"))
    assert len(model.blocks) == 24
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)  # rate 0: timm's Identity
    for i, block in enumerate(model.blocks[1:], 1):
        assert isinstance(block.drop_path, DropPath)
        assert block.drop_path.drop_prob == pytest.approx(0.2 * i / 23, rel=1e-6), i
    assert model.blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    with torch.device("meta"):
        other = _build_model(FinetuneConfig(drop_path=0.1), 1000, None, torch.device("meta"))
    assert other.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert other.blocks[12].drop_path.drop_prob == pytest.approx(0.1 * 12 / 23, rel=1e-6)


# ---- 11. augmentation keyed by (seed, epoch, index) ----------------------------------------------------------
class Draws:
    """A train transform that records the first draw of the rng it is handed, then returns the plain image."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        self.draws.append(rng.random())
        return preprocess(img, (32, 32), "resize")


def test_a_samples_augmentation_changes_with_the_epoch_and_repeats_with_the_key(digits_tree) -> None:
    source = image_folder(digits_tree)
    draws = Draws()
    data = TrainImages(source, draws, seed=0)
    for key in ((0, 7), (1, 7), (0, 7), (0, 8)):
        data[key]
    at_0, at_1, again, other = draws.draws
    assert at_0 != at_1  # the same image in epoch 0 and epoch 1
    assert at_0 == again  # the same (seed, epoch, index)
    assert at_0 != other  # another image
    TrainImages(source, draws, seed=1)[(0, 7)]
    assert draws.draws[-1] != at_0  # another seed
    TrainImages(source, draws, seed=0)[(0, 7)]
    assert draws.draws[-1] == at_0  # a new dataset (another process), the same key
    # The recipe's own transform on one image: epoch 0 and epoch 1 give different tensors, a repeat the same.
    recipe = TrainImages(source, build_train_transform(FinetuneConfig(input_size=32)), seed=0)
    x0, x1, x0_again = (recipe[key][0] for key in ((0, 3), (1, 3), (0, 3)))
    assert not torch.equal(x0, x1) and torch.equal(x0, x0_again)
    # Every batch of epoch e carries e in its keys.
    assert {e for batch in epoch_batches(200, 16, epoch=3, seed=0) for e, _ in batch} == {3}


def test_in_a_run_no_draw_of_epoch_0_comes_back_in_epoch_1(small, digits_tree, tmp_path) -> None:
    """Two epochs over 192 of the 200 digits: had the augmentation ignored the epoch, every image seen in both
    epochs (at least 184) would get its epoch-0 draws again."""
    draws, epochs = Draws(), []
    finetune(digits_tree, digits_tree, tmp_path / "run", FinetuneConfig(epochs=2, **LIGHT), pretrained=small,
             train_transform=draws,
             on_progress=lambda event, info: epochs.append(len(draws.draws)) if event == "epoch_start" else None)
    assert epochs == [0, 192] and len(draws.draws) == 384
    first, second = set(draws.draws[:192]), set(draws.draws[192:])
    assert len(first) == len(second) == 192 and not first & second


# ---- 12. the learning rate is set per iteration ------------------------------------------------------------
def official_lr(epoch: float, *, lr: float, min_lr: float, warmup: float, epochs: int) -> float:
    """`util/lr_sched.adjust_learning_rate`, written out: linear warmup, then half-cycle cosine to min_lr."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


@pytest.mark.parametrize("accum", [1, 2])
def test_the_lr_of_every_update_is_the_schedule_at_the_fractional_epoch(small, digits_tree, tmp_path, monkeypatch,
                                                                        accum: int) -> None:
    """`engine_finetune.train_one_epoch`: "we use a per iteration (instead of per epoch) lr scheduler": at
    every `data_iter_step % accum_iter == 0` it calls `adjust_learning_rate(optimizer, data_iter_step /
    len(data_loader) + epoch, args)`, which sets each group's lr to the schedule times its `lr_scale`; the
    optimiser steps on `(data_iter_step + 1) % accum_iter == 0`. Recorded at every AdamW step of a 2-epoch run
    of 12 steps an epoch (warm-up 1 epoch, then the cosine), peak lr = blr x 16 x accum / 256."""
    seen: list[list[tuple[float, float]]] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append([(g["lr"], g["lr_scale"]) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    config = FinetuneConfig(epochs=2, **{**LIGHT, "accum_iter": accum, "auto_augment": None, "re_prob": 0.0})
    finetune(digits_tree, digits_tree, tmp_path / "run", config, pretrained=small, train_transform=Draws())
    peak = 0.05 * 16 * accum / 256
    steps = 200 // 16  # 12 per epoch (drop_last)
    expected = [official_lr(s / steps + e, lr=peak, min_lr=1e-6, warmup=1, epochs=2)
                for e in range(2) for s in range(0, steps, accum)]  # set at each accumulation's first micro-step
    assert len(seen) == len(expected) == 2 * steps // accum
    for groups, lr in zip(seen, expected):
        assert {scale for _, scale in groups} == {0.9 ** 3, 0.9 ** 2, 0.9, 1.0}
        for group_lr, scale in groups:
            assert group_lr == pytest.approx(lr * scale, rel=1e-12, abs=1e-15)
    assert len({round(groups[-1][0], 12) for groups in seen}) == len(seen)  # a new value at every update


def test_every_mixup_draw_of_a_run_has_its_own_key(small, digits_tree, tmp_path, monkeypatch) -> None:
    """Mixup / cutmix draw (lambda, the switch, the box) from a generator keyed by (seed, epoch, step, rank): two
    epochs of 12 steps make 24 different keys, so no batch of epoch 1 repeats epoch 0's mixing."""
    import mae.large.train.finetune as module

    keys: list[tuple] = []
    keyed = module.keyed_rng

    def recording(*key):
        if key[1] == "mixup":
            keys.append(key)
        return keyed(*key)

    monkeypatch.setattr(module, "keyed_rng", recording)
    finetune(digits_tree, digits_tree, tmp_path / "run", FinetuneConfig(epochs=2, **{**LIGHT, "mixup": 0.8}),
             pretrained=small)
    assert len(keys) == 24 and len(set(keys)) == 24
    assert {k[2] for k in keys} == {0, 1}  # the epoch is part of the key
