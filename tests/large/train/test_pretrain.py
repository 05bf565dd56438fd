"""Pre-training: the recipe's defaults, the weight-decay groups, a frozen encoder, resume from any update, and that a
small MAE learns real digits."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from mae.large import MaskedAutoencoderViT
from mae.large.errors import InvalidArgumentError
from mae.large.train.pretrain import PretrainConfig, pretrain
from mae.large.train.pretrain_model import ENCODER_PREFIXES, freeze_encoder, weight_decay_groups
from mae.large.train.trainer import RunStopped
from tests.helpers import save_official, small_config, small_state_dict, use_small_architecture, write_digits_tree

LIGHT = dict(input_size=32, batch_size=16, accum_iter=1, blr=8e-3, warmup_epochs=1, workers=0, device="cpu", amp="off",
             preview_every=0, preview_images=4, save_every=0)


@pytest.fixture
def one_thread():
    """One torch thread: the tiny models are several times faster so on shared cores (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small(monkeypatch, one_thread):
    """The small architecture as the default."""
    use_small_architecture(monkeypatch)
    return small_config()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """1,000 digits to pre-train on (100 per class) and 200 others held out, as image folders."""
    root = tmp_path_factory.mktemp("pretrain_digits")
    write_digits_tree(root / "all", per_class=120)
    for label in range(10):
        files = sorted((root / "all" / str(label)).iterdir())
        for part, chosen in (("train", files[:100]), ("val", files[100:])):
            (root / part / str(label)).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, root / part / str(label) / f.name)
    return root / "train", root / "val"


def test_the_defaults_are_pretrain_md() -> None:
    # PRETRAIN.md (ViT-L): --batch_size 64 --accum_iter 1 on 64 GPUs (effective 4096) --norm_pix_loss --mask_ratio 0.75
    # --epochs 800 --warmup_epochs 40 --blr 1.5e-4 --weight_decay 0.05; main_pretrain.py: AdamW betas (0.9, 0.95),
    # min_lr 0, RandomResizedCrop(input_size, scale=(0.2, 1.0), interpolation=3) + RandomHorizontalFlip.
    c = PretrainConfig()
    assert (c.batch_size, c.effective_batch, c.mask_ratio, c.epochs, c.warmup_epochs, c.blr, c.weight_decay) == (
        64, 4096, 0.75, 800, 40.0, 1.5e-4, 0.05)
    assert (c.betas, c.min_lr, c.scale, c.input_size, c.mask, c.clip_grad) == ((0.9, 0.95), 0.0, (0.2, 1.0), 224,
                                                                                  "random", None)
    assert c.architecture().norm_pix_loss is False and c.target == "auto"  # auto: norm-pix for a fresh decoder
    arch = c.architecture()
    assert (arch.embed_dim, arch.depth, arch.decoder_embed_dim, arch.decoder_depth, arch.decoder_num_heads) == (
        1024, 24, 512, 8, 16)


def test_weight_decay_groups_are_timm_0_3_2s_add_weight_decay() -> None:
    model = MaskedAutoencoderViT(small_config())
    groups = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = ([names[id(p)] for p in g["params"]] for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05]
    assert "cls_token" in decay and "mask_token" in decay  # (1, 1, D): not one-dimensional, so decayed
    assert "pos_embed" not in decay + no_decay and "decoder_pos_embed" not in decay + no_decay  # frozen tables
    assert all(n.endswith(".bias") or dict(model.named_parameters())[n].dim() == 1 for n in no_decay)
    assert all(not n.endswith(".bias") and dict(model.named_parameters())[n].dim() > 1 for n in decay)
    frozen = freeze_encoder(model)
    groups = weight_decay_groups(model, 0.05)
    left = {names[id(p)] for g in groups for p in g["params"]}
    assert frozen > 0 and not any(n.startswith(ENCODER_PREFIXES) for n in left) and "mask_token" in left


def test_a_frozen_encoder_stays_bit_for_bit(small, digits, tmp_path) -> None:
    start = save_official(tmp_path / "start.pth", small_state_dict())
    run = pretrain(digits[0], tmp_path / "run", PretrainConfig(epochs=1, freeze_encoder=True, **LIGHT), checkpoint=start)
    after = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)["model"]
    before = small_state_dict()
    encoder = [k for k in before if k.startswith(ENCODER_PREFIXES)]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)
    assert not torch.equal(after["decoder_pred.weight"], before["decoder_pred.weight"])
    assert run.args["frozen_encoder_tensors"] == len([k for k in encoder if "pos_embed" not in k])


def test_a_stopped_run_resumes_bit_for_bit_from_the_update_it_stopped_at(small, digits, tmp_path) -> None:
    config = PretrainConfig(epochs=2, **{**LIGHT, "accum_iter": 2})  # 62 micro-steps an epoch, an update every 2
    whole = pretrain(digits[0], tmp_path / "whole", config)
    asked = iter(range(100))
    with pytest.raises(RunStopped) as info:  # asked to stop at the 8th update: epoch 0, after micro-step 16
        pretrain(digits[0], tmp_path / "cut", config, stop=lambda: next(asked) >= 7)
    assert (info.value.position.epoch, info.value.position.step) == (0, 16)
    state = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert state["epoch"] == -1 and state["resume_at"]["step"] == 16  # the official reader restarts epoch 0
    resumed = pretrain(digits[0], tmp_path / "cut", config, resume=tmp_path / "cut")
    a = torch.load(tmp_path / "whole" / "checkpoint-last.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint-last.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert all(torch.equal(x, y) for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
               for x, y in zip(s.values(), t.values()))
    assert [r["train_loss"] for r in whole.history] == [json.loads(line)["train_loss"] for line in
                                                        (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed.history] == [0, 1]


def test_a_run_folder_is_not_started_over(small, digits, tmp_path) -> None:
    pretrain(digits[0], tmp_path / "run", PretrainConfig(epochs=1, **LIGHT))
    with pytest.raises(InvalidArgumentError, match="already holds a run"):
        pretrain(digits[0], tmp_path / "run", PretrainConfig(epochs=1, **LIGHT))


def test_a_decoder_of_other_sizes_starts_fresh_and_is_said(small, digits, tmp_path) -> None:
    start = save_official(tmp_path / "start.pth", small_state_dict())
    notes: list[str] = []
    run = pretrain(digits[0], tmp_path / "run", PretrainConfig(epochs=1, decoder_depth=1, decoder_dim=16, **LIGHT),
                   checkpoint=start, on_progress=lambda e, i: notes.extend(i["notes"]) if e == "start" else None)
    assert any("decoder (2 blocks of 32) is not the run's (1 blocks of 16)" in n for n in notes)
    saved = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)
    assert saved["model"]["decoder_embed.weight"].shape == (16, 64)
    assert run.args["architecture"]["decoder_depth"] == 1 and run.args["start"] == "encoder"


def test_a_small_mae_learns_real_digits(monkeypatch, one_thread, digits, tmp_path) -> None:
    """Six epochs of a small MAE (32 x 32, patch 4: a patch is one digit pixel; 4 blocks of 64, a 2-block decoder)
    on 1,000 digits: the held-out reconstruction loss (pixel space, the fixed masks) falls under half its initial value
    and under the baseline of filling every removed patch with the visible pixels' mean colour."""
    use_small_architecture(monkeypatch, small_config(patch_size=4, depth=4, decoder_embed_dim=64))
    config = PretrainConfig(epochs=6, target="pixels", **{**LIGHT, "blr": 1.2e-2, "warmup_epochs": 2, "batch_size": 32,
                                                           "preview_every": 6, "knn_every": 6})
    run = pretrain(digits[0], tmp_path / "run", config, val=digits[1], knn=digits)
    first, last = run.args["heldout_initial"], run.history[-1]
    assert last["val_pixel_loss"] < 0.5 * first["val_pixel_loss"], (first, last)
    assert last["val_pixel_loss"] < last["val_baseline_pixel_loss"], last
    assert (tmp_path / "run" / "preview.png").is_file() and (tmp_path / "run" / "loss.png").is_file()
    # The run's checkpoint says what it trained: loaded with ViT-L as the default again, it builds the run's model.
    monkeypatch.undo()
    saved = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)["model"]
    model = MaskedAutoencoderViT.from_pretrained(tmp_path / "run" / "checkpoint-last.pth")
    assert (model.config.patch_size, model.config.depth, model.config.decoder_embed_dim) == (4, 4, 64)
    assert model.config.norm_pix_loss is False and model.load_report.kind == "full"
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # k-NN top-1 of the encoder's features (20-NN, 1,000 train / 200 val digits): reported, not gated.
    assert 0.0 <= first["knn_top1"] <= 100.0 and 0.0 <= last["knn_top1"] <= 100.0
    print(f"\nheld-out pixel loss {first['val_pixel_loss']:.3f} -> {last['val_pixel_loss']:.3f} (baseline "
          f"{last['val_baseline_pixel_loss']:.3f}); norm-pix loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}; "
          f"k-NN top-1 {first['knn_top1']:.1f} -> {last['knn_top1']:.1f}")



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_child(rank: int, world: int, port: int, args: tuple) -> None:  # pragma: no cover - runs in a child
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _curve(rank, *args)


def _curve(rank: int, data: Path, out: Path, batch: int, losses_file: Path) -> None:
    """Two epochs (24 updates of 16 images); rank 0 writes the per-step losses (global batch means)."""
    losses: list[float] = []
    pretrain(data, out, PretrainConfig(epochs=2, **{**LIGHT, "batch_size": batch}),
             on_progress=lambda event, info: losses.append(info["loss"]) if event == "step" else None)
    if rank == 0:
        losses_file.write_text(json.dumps(losses))


def test_two_gloo_processes_follow_the_single_process_loss_curve(small, digits_tree, tmp_path) -> None:
    """The same 16 images per update, as one batch of 16 or two ranks of 8: every image's crop, flip and mask are
    keyed by its index, so the per-step losses agree to float rounding."""
    import torch.multiprocessing as mp

    _curve(0, digits_tree, tmp_path / "world1", 16, tmp_path / "1.json")
    # Forked, not spawned: the children start at once and keep the test's small architecture.
    mp.start_processes(_ddp_child, args=(2, _free_port(), (digits_tree, tmp_path / "world2", 8, tmp_path / "2.json")),
                       nprocs=2, join=True, start_method="fork")
    curves = {world: json.loads((tmp_path / f"{world}.json").read_text()) for world in (1, 2)}
    assert len(curves[1]) == len(curves[2]) == 2 * (200 // 16) >= 20
    worst = max(abs(a - b) / abs(a) for a, b in zip(curves[1], curves[2]))
    assert worst < 1e-5, (worst, curves[1], curves[2])
    print(f"\n2 ranks of 8 vs 1 of 16: worst relative loss difference {worst:.1e} over {len(curves[1])} steps")
    assert all(math.isfinite(v) for v in curves[1])


def test_a_continued_decoder_keeps_its_target_and_another_one_is_said(small, tmp_path) -> None:
    """auto: the catalogue's target for its file name (the visualisation file predicts pixels), a run's recorded
    target; asking for another one is one note; a fresh decoder gets the recipe's norm-pix."""
    from mae.large.train.pretrain_model import build_model

    visualize = save_official(tmp_path / "mae_visualize_vit_large.pth", small_state_dict())
    cpu = torch.device("cpu")
    auto = build_model(small, visualize, target="auto", seed=0, device=cpu)
    assert (auto.start, auto.target.target, auto.notes) == ("full", "pixels", [])
    assert auto.model.config.norm_pix_loss is False
    other = build_model(small, visualize, target="norm-pix", seed=0, device=cpu)
    assert other.target.target == "norm-pix" and other.model.config.norm_pix_loss is True
    assert len(other.notes) == 1 and "predicts pixels" in other.notes[0] and "on norm-pix" in other.notes[0]
    unknown = build_model(small, save_official(tmp_path / "mine.pth", small_state_dict()), target="auto", seed=0,
                          device=cpu)
    assert unknown.target.target == "norm-pix" and "not known" in unknown.notes[0] and "pixels" in unknown.notes[0]
    # A run of this tool records its target: continued with auto, it stays.
    run = tmp_path / "run.pth"
    torch.save({"model": small_state_dict(), "args": {"target": "pixels"}}, run)
    assert build_model(small, run, target="auto", seed=0, device=cpu).target.target == "pixels"


def test_each_images_masking_is_keyed_by_seed_epoch_and_index(small) -> None:
    """random: the official `random_masking` rule on noise from the image's own generator (seed, "mask", epoch, index),
    so an image is masked the same in any batch, on any rank; block and grid: the paper's Figure 6 masks."""
    from mae.large.data.labelled import LabelledBatch
    from mae.large.models.masks import block_mask, grid_mask
    from mae.large.train.pretrain import _Recipe
    from mae.large.utils.distributed import DistContext
    from mae.large.utils.keyed import derive_seed

    def masking(mask: str, indices: list[int], epoch: int) -> dict:
        recipe = _Recipe(None, small, PretrainConfig(mask=mask, input_size=32), DistContext(device=torch.device("cpu")), 0)
        batch = LabelledBatch(torch.zeros(len(indices), 3, 32, 32), torch.full((len(indices),), -1), [],
                              torch.tensor(indices))
        return recipe.masking(batch, epoch)

    random = masking("random", [5, 9, 2], epoch=3)
    assert random["mask_ratio"] == 0.75
    expected = torch.rand(small.num_patches, generator=torch.Generator().manual_seed(derive_seed(0, "mask", 3, 9)))
    assert torch.equal(random["noise"][1], expected)
    assert torch.equal(masking("random", [9], epoch=3)["noise"][0], expected)  # another batch, the same image's noise
    assert not torch.equal(masking("random", [9], epoch=4)["noise"][0], expected)  # a new draw each epoch
    grid = (small.img_size[0] // small.patch_size, small.img_size[1] // small.patch_size)
    block = masking("block", [5, 9], epoch=0)["mask"]
    assert torch.equal(block[1], block_mask(grid, 0.75, derive_seed(0, "mask", 0, 9)))
    assert int(block[0].sum()) == int(block[1].sum()) and not torch.equal(block[0], block[1])
    assert all(torch.equal(m, grid_mask(grid)) for m in masking("grid", [5, 9], epoch=0)["mask"])


@pytest.mark.parametrize("mask", ["block", "grid"])
def test_a_run_with_another_mask_kind_trains(small, digits_tree, tmp_path, mask) -> None:
    run = pretrain(digits_tree, tmp_path / "run", PretrainConfig(epochs=1, mask=mask, **LIGHT))
    assert math.isfinite(run.history[0]["train_loss"]) and run.args["config"]["mask"] == mask


def test_the_run_uses_pretrain_mds_lr_rule_and_adamw_betas(small, digits, tmp_path) -> None:
    """PRETRAIN.md / `main_pretrain.py`: `args.lr = args.blr * eff_batch_size / 256` with eff_batch_size = batch x
    accum_iter x world size, and `torch.optim.AdamW(param_groups, lr=args.lr, betas=(0.9, 0.95))`: what the run's
    optimiser holds, not only the config's fields. Batch 16 x accumulation 4 at blr 1e-3: lr 2.5e-4."""
    config = PretrainConfig(epochs=1, **{**LIGHT, "accum_iter": 4, "blr": 1e-3})
    run = pretrain(digits[0], tmp_path / "run", config)
    assert run.args["lr"] == pytest.approx(1e-3 * 16 * 4 / 256, rel=1e-12)
    saved = torch.load(tmp_path / "run" / "checkpoint-last.pth", weights_only=True)["optimizer"]
    assert [tuple(g["betas"]) for g in saved["param_groups"]] == [(0.9, 0.95)] * 2
    assert sorted(g["weight_decay"] for g in saved["param_groups"]) == [0.0, 0.05]
