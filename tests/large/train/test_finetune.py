"""Fine-tuning (`mae.large.train.finetune`): it learns, it resumes bit for bit, N processes match one, its files load."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mae.large.checkpoints.classify import classify
from mae.large.checkpoints.read import read_checkpoint
from mae.large.data.images import preprocess
from mae.large.data.labelled import epoch_batches
from mae.large.errors import InvalidArgumentError, MAEError
from mae.large.evaluate.accuracy import evaluate_checkpoint
from mae.large.models.vit import VisionTransformer, ViTConfig
from mae.large.train.finetune import FinetuneConfig, finetune, resumed_config
from mae.large.utils.keyed import derive_seed
from tests.helpers import (
    run_files,
    save_official,
    small_state_dict,
    tensorboard_scalars,
    use_small_architecture,
    write_digits_tree,
)


class ShiftFlip:
    """A light keyed augmentation for 32 x 32 digits: a random shift of up to 2 pixels (no flip: digits have a
    handedness); every draw comes from the rng the run hands over."""

    def __call__(self, img, rng: random.Random) -> torch.Tensor:
        x = preprocess(img, (32, 32), "resize")
        return torch.roll(x, shifts=(rng.randint(-2, 2), rng.randint(-2, 2)), dims=(1, 2))


LIGHT = dict(input_size=32, batch_size=16, accum_iter=1, warmup_epochs=1, blr=0.05, layer_decay=0.9, mixup=0.0,
             cutmix=0.0, smoothing=0.0, drop_path=0.0, workers=0, device="cpu", amp="off")


@pytest.fixture
def small(monkeypatch, tmp_path_factory) -> Iterator[Path]:
    """The small architecture as the default, and its official weights as the pre-trained file. One torch thread:
    the tiny model is several times faster so on shared cores (the thread count is restored)."""
    use_small_architecture(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("pretrained")
    yield save_official(folder / "small.pth", small_state_dict())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory) -> tuple[Path, Path]:
    """1,000 digits to train on (100 per class) and 200 others to validate on."""
    root = tmp_path_factory.mktemp("digits_split")
    write_digits_tree(root / "all", per_class=120)
    for label in range(10):
        files = sorted((root / "all" / str(label)).iterdir())
        for part, chosen in (("train", files[:100]), ("val", files[100:])):
            (root / part / str(label)).mkdir(parents=True)
            for f in chosen:
                shutil.move(f, root / part / str(label) / f.name)
    return root / "train", root / "val"


def test_defaults_are_the_official_vit_l_recipe() -> None:
    c = FinetuneConfig()
    assert (c.epochs, c.warmup_epochs, c.effective_batch, c.blr, c.min_lr, c.layer_decay, c.weight_decay) == (
        50, 5, 1024, 1e-3, 1e-6, 0.75, 0.05)
    assert (c.drop_path, c.smoothing, c.mixup, c.cutmix, c.mixup_switch_prob, c.mixup_mode) == (
        0.2, 0.1, 0.8, 1.0, 0.5, "batch")
    assert (c.auto_augment, c.re_prob, c.input_size, c.global_pool, c.clip_grad, c.betas, c.seed) == (
        "rand-m9-mstd0.5-inc1", 0.25, 224, True, None, (0.9, 0.999), 0)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(InvalidArgumentError, match="drop_path"):
        FinetuneConfig(drop_path=1.0)


def test_keyed_data_order_is_the_same_global_batches_for_any_world_size() -> None:
    one = epoch_batches(100, 8, epoch=3, seed=0)
    two = [epoch_batches(100, 4, epoch=3, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(one) == 12 and [a + b for a, b in zip(*two)] == one
    assert {i for b in one for _, i in b} <= set(range(100)) and len({i for b in one for _, i in b}) == 96
    assert one != epoch_batches(100, 8, epoch=4, seed=0) and derive_seed(0, "x", 1) != derive_seed(0, "x", 2)


def test_fine_tuning_learns_digits_and_writes_a_fine_tuned_checkpoint(small, digits_split, tmp_path) -> None:
    train, val = digits_split
    events: list[str] = []
    run = finetune(train, val, tmp_path / "run", FinetuneConfig(epochs=4, save_every=2, **LIGHT), pretrained=small,
                   train_transform=ShiftFlip(), on_progress=lambda event, _: events.append(event))
    # Chance is 10%; this two-block ViT from a random-init encoder reaches 49.5% after 4 epochs on 1,000 digits.
    assert run.best_top1 > 40.0, run.history
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert events[0] == "start" and events.count("epoch") == 4 and events.count("step") == 4 * (1000 // 16)

    names = run_files(tmp_path / "run")
    assert names == ["checkpoint-1.pth", "checkpoint-3.pth", "checkpoint-best.pth", "checkpoint-last.pth",
                     "config.json", "log.jsonl"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3] and log[-1]["val_top1"] == run.history[-1]["val_top1"]
    assert {"train_loss", "lr", "val_loss", "val_top1", "val_top5", "seconds", "images_per_s"} <= set(log[0])
    # TensorBoard, as engine_finetune.py and main_finetune.py write it: `loss` and `lr` at each update against
    # int((data_iter_step / len(data_loader) + epoch) * 1000), the val numbers against the epoch.
    logged = tensorboard_scalars(tmp_path / "run")
    assert len(logged["loss"]) == len(logged["lr"]) == 4 * (1000 // 16)
    assert [x for x, _ in logged["loss"][:3]] == [0, 16, 32]  # 62 steps an epoch: int(1 / 62 * 1000) = 16
    assert [(x, round(v, 3)) for x, v in logged["perf/test_acc1"]] == [(r["epoch"], round(r["val_top1"], 3)) for r in log]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # Written out: this test's settings (LIGHT, epochs 4, save_every 2), and for the rest the official ViT-L recipe
    # (FINETUNE.md: `--epochs 50 --blr 1e-3 --layer_decay 0.75 --weight_decay 0.05 --drop_path 0.2 --reprob 0.25
    # --mixup 0.8 --cutmix 1.0`, batch 32 x 32 GPUs = 1024; main_finetune.py defaults: `--min_lr 1e-6
    # --smoothing 0.1 --aa rand-m9-mstd0.5-inc1 --mixup_prob 1.0 --mixup_switch_prob 0.5 --mixup_mode batch
    # --global_pool`, no `--clip_grad`; AdamW's betas (0.9, 0.999)).
    assert config["config"] == {
        "model": None, "input_size": 32, "num_classes": None, "global_pool": True, "drop_path": 0.0, "epochs": 4,
        "warmup_epochs": 1, "batch_size": 16, "accum_iter": 1, "effective_batch": 1024, "lr": None, "blr": 0.05,
        "min_lr": 1e-6, "layer_decay": 0.9, "weight_decay": 0.05, "betas": [0.9, 0.999], "clip_grad": None,
        "smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5,
        "mixup_mode": "batch", "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "amp": "off",
        "grad_checkpointing": False, "compile": False, "seed": 0, "workers": 0, "save_every": 2, "save_checkpoints": True,
        "eval_batch_size": None, "device": "cpu", "image_column": None, "label_column": None, "shuffle_buffer": 1000}
    assert (config["num_classes"], config["effective_batch"], config["accum_iter"], config["world_size"]) == (10, 16, 1, 1)
    assert config["lr"] == pytest.approx(0.05 * 16 / 256)  # blr x effective batch / 256 (main_finetune.py)

    last = tmp_path / "run" / "checkpoint-last.pth"
    raw = torch.load(last, weights_only=True)
    assert set(raw) == {"model", "optimizer", "epoch", "scaler", "args", "rng", "best"} and raw["epoch"] == 3
    assert "norm.weight" not in raw["model"] and {"head.weight", "fc_norm.weight"} <= set(raw["model"])
    # fp32 here, so no scaler ran; the entry is still a scaler's state, which the official `load_model` can load.
    assert raw["scaler"] == torch.amp.GradScaler("cpu", enabled=True).state_dict()
    # The optimiser's groups by hand from util/lr_decay.py `param_groups_lrd` for this depth-2 model: num_layers =
    # len(blocks) + 1 = 3, layer id 0 for cls_token / pos_embed / patch_embed, i + 1 for blocks.i, 3 for the rest;
    # lr_scale = layer_decay ** (3 - layer id) with layer decay 0.9; weight decay 0.05 but for 1-D parameters and
    # `no_weight_decay()` (cls_token, pos_embed); groups in the order their first parameter is met.
    def block(i: int, decay: bool) -> list[str]:
        weights = ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
        others = ["norm1.weight", "norm1.bias", "attn.qkv.bias", "attn.proj.bias", "norm2.weight", "norm2.bias",
                  "mlp.fc1.bias", "mlp.fc2.bias"]
        return [f"blocks.{i}.{name}" for name in (weights if decay else others)]

    expected_groups = [
        (0.729, 0.0, ["cls_token", "pos_embed", "patch_embed.proj.bias"]),
        (0.729, 0.05, ["patch_embed.proj.weight"]),
        (0.81, 0.0, block(0, False)), (0.81, 0.05, block(0, True)),
        (0.9, 0.0, block(1, False)), (0.9, 0.05, block(1, True)),
        (1.0, 0.05, ["head.weight"]),
        (1.0, 0.0, ["head.bias", "fc_norm.weight", "fc_norm.bias"]),
    ]
    groups = raw["optimizer"]["param_groups"]
    assert len(groups) == len(expected_groups)
    for group, (scale, decay, names) in zip(groups, expected_groups):
        assert group["lr_scale"] == pytest.approx(scale, rel=1e-12) and group["weight_decay"] == decay
        assert sorted(group["param_names"]) == sorted(names)
    data = read_checkpoint(last)
    from mae.large import MAEConfig, MaskedAutoencoderViT

    kind = classify(data.state_dict, MaskedAutoencoderViT.expected_state(MAEConfig.from_architecture(None)),
                    data.classifier)
    assert (kind.kind, kind.num_classes) == ("fine-tuned", 10)
    model = VisionTransformer.from_pretrained(last, ViTConfig.from_architecture(None, num_classes=10), head="file")
    assert model.load_report.kind == "fine-tuned"
    assert torch.equal(model.state_dict()["head.weight"], raw["model"]["head.weight"])
    # The evaluation job on the saved file gives the run's own last numbers.
    accuracy, _ = evaluate_checkpoint(val, last, batch_size=64, device="cpu", amp="off", workers=0)
    assert accuracy.images == 200 and accuracy.top1 == pytest.approx(log[-1]["val_top1"])
    assert accuracy.loss == pytest.approx(log[-1]["val_loss"], rel=1e-5)


class Interrupt(Exception):
    pass


def test_resume_after_an_interrupted_epoch_is_bit_for_bit(small, digits_tree, tmp_path) -> None:
    # Two threads (the fixture restores the count): resuming with a worker process must not change the main
    # process's threads, which would change the CPU sums' last bits.
    torch.set_num_threads(2)
    # The whole recipe's randomness: RandAugment, random erasing, mixup / cutmix, drop path, label smoothing.
    config = FinetuneConfig(epochs=3, **{**LIGHT, "drop_path": 0.1, "smoothing": 0.1, "mixup": 0.8, "cutmix": 1.0,
                                         "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25})
    whole = finetune(digits_tree, digits_tree, tmp_path / "whole", config, pretrained=small)

    def stop_in_epoch_1(event: str, info: dict) -> None:
        if event == "step" and info["epoch"] == 1 and info["step"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        finetune(digits_tree, digits_tree, tmp_path / "cut", config, pretrained=small, on_progress=stop_in_epoch_1)
    assert torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)["epoch"] == 0
    # Resumed with a worker process decoding: the keyed draws make it the same run.
    resumed = finetune(digits_tree, digits_tree, tmp_path / "cut", resumed_config(tmp_path / "cut", workers=1),
                       resume=tmp_path / "cut")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    a = torch.load(tmp_path / "whole" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    keep = ("epoch", "train_loss", "lr", "val_loss", "val_top1")
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in keep} for r in log] == [{k: r[k] for k in keep} for r in whole.history]

    with pytest.raises(InvalidArgumentError, match="other settings"):
        finetune(digits_tree, digits_tree, tmp_path / "cut", config.replace(blr=0.01, epochs=4), resume=tmp_path / "cut")


def test_train_and_val_must_have_the_same_classes(small, digits_tree, tmp_path) -> None:
    val = tmp_path / "val"
    shutil.copytree(digits_tree, val)
    shutil.rmtree(val / "9")
    with pytest.raises(InvalidArgumentError, match="different class folders.*only in train: 9"):
        finetune(digits_tree, val, tmp_path / "run", FinetuneConfig(**LIGHT), pretrained=small)
    with pytest.raises(InvalidArgumentError, match="num_classes=5"):
        finetune(digits_tree, digits_tree, tmp_path / "run", FinetuneConfig(num_classes=5, **LIGHT), pretrained=small)


class DivergesAtStep3(torch.nn.Module):
    """Cross-entropy, except that the fourth step's loss is NaN (a diverged run)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if self.calls == 4 else loss


def test_a_non_finite_loss_stops_the_run_before_the_update(small, digits_tree, tmp_path, monkeypatch) -> None:
    import mae.large.train.finetune as ft

    steps: list[int] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # counts the updates
        steps.append(len(steps))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ft, "build_criterion", lambda config: DivergesAtStep3())
    monkeypatch.setattr(torch.optim.AdamW, "step", step)

    with pytest.raises(MAEError, match=r"the loss is nan at epoch 0, step 3: training diverged.*blr.*clip_grad"):
        finetune(digits_tree, digits_tree, tmp_path / "run", FinetuneConfig(epochs=1, **LIGHT), pretrained=small,
                 train_transform=ShiftFlip())
    assert steps == [0, 1, 2]  # three updates; the step whose loss is NaN never reaches the optimizer
    assert not list((tmp_path / "run").glob("checkpoint-*.pth"))  # nothing written from a diverged epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_child(rank: int, world: int, port: int, args: tuple) -> None:  # pragma: no cover - runs in a child
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _curve(rank, *args)


def _curve(rank: int, train: Path, pretrained: Path, out: Path, batch: int, losses_file: Path) -> None:
    """One epoch without mixup and drop path; rank 0 writes the per-step losses (global batch means)."""
    losses: list[float] = []
    finetune(train, train, out, FinetuneConfig(epochs=1, **{**LIGHT, "batch_size": batch}), pretrained=pretrained,
             train_transform=ShiftFlip(),
             on_progress=lambda event, info: losses.append(info["loss"]) if event == "step" else None)
    if rank == 0:
        losses_file.write_text(json.dumps(losses))


def test_two_gloo_processes_follow_the_single_process_loss_curve(small, digits_tree, tmp_path) -> None:
    import torch.multiprocessing as mp

    _curve(0, digits_tree, small, tmp_path / "world1", 16, tmp_path / "1.json")
    # Forked, not spawned: the children start at once and keep the test's small architecture.
    mp.start_processes(_ddp_child, args=(2, _free_port(), (digits_tree, small, tmp_path / "world2", 8, tmp_path / "2.json")),
                       nprocs=2, join=True, start_method="fork")
    curves = {world: json.loads((tmp_path / f"{world}.json").read_text()) for world in (1, 2)}
    assert len(curves[1]) == len(curves[2]) == 200 // 16
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(curves[1], curves[2])), (curves[1], curves[2])
    a = torch.load(tmp_path / "world1" / "checkpoint-last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "world2" / "checkpoint-last.pth", weights_only=True)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


@pytest.mark.slow
def test_vit_l_smoke_run_on_the_cpu(vit_l_files, digits_tree, tmp_path) -> None:
    """The full-size path: ViT-L from an encoder-only file, 2 steps of batch 2 at 32 x 32 with the recipe's drop
    path, smoothing and gradient checkpointing; the 3.6 GB-class checkpoint (weights + AdamW state) is written."""
    _, encoder, _ = vit_l_files
    tree = tmp_path / "tree"
    for label in ("0", "1"):
        (tree / label).mkdir(parents=True)
        for f in sorted((digits_tree / label).iterdir())[:2]:
            shutil.copy(f, tree / label / f.name)
    config = FinetuneConfig(input_size=32, batch_size=2, accum_iter=1, epochs=1, mixup=0.0, cutmix=0.0,
                            auto_augment=None, re_prob=0.0, grad_checkpointing=True, workers=0, device="cpu",
                            save_checkpoints=False)
    run = finetune(tree, tree, tmp_path / "run", config, pretrained=encoder)
    assert len(run.history) == 1 and math.isfinite(run.history[0]["train_loss"])
    assert run_files(tmp_path / "run") == ["config.json", "log.jsonl"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["architecture"] == "vit_large_patch16"
