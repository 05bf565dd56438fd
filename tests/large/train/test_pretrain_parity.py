"""The pre-training step against the official one: the project's loop (`trainer.train_epoch`, the pre-training
groups and AdamW) from the official initial weights, on the same batches and masking noise, gives the losses, the
learning rates and the parameters the official `engine_pretrain.train_one_epoch` + `main_pretrain.py`'s optimizer
gave (tests/reference/mae_official_pretrain_steps.safetensors; its README says how they were made)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from mae.large import MAEConfig, MaskedAutoencoderViT
from mae.large.train.pretrain_model import weight_decay_groups
from mae.large.train.trainer import LoopConfig, train_epoch
from mae.large.utils.distributed import DistContext
from tests.helpers import REFERENCE

VECTORS = REFERENCE / "mae_official_pretrain_steps.safetensors"
# fp32 on both sides, different attention kernels: timm 0.3.2's explicit softmax(q k^T * scale) in the official run,
# torch's scaled_dot_product_attention (the CPU math kernel) here; a few AdamW steps amplify the last-bit differences
# of the gradients only as far as this.
LOSS_RTOL = 1e-5
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-6


def _comparable(name: str, value: torch.Tensor) -> torch.Tensor:
    """A parameter without the keys' bias (the middle third of `qkv.bias`): softmax does not change when a constant is
    added to every key, so that bias's gradient is zero in exact arithmetic and float rounding noise on either side;
    AdamW divides by the gradient's own size, so that noise moves it by about lr per step in any direction. (The
    losses, where it cancels, are compared at LOSS_RTOL; measured: q and v biases within 3e-9, k bias up to 7e-5.)"""
    if name.endswith("attn.qkv.bias"):
        third = value.numel() // 3
        return torch.cat([value[:third], value[2 * third:]])
    return value


def _reference() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    with safe_open(str(VECTORS), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, {k: json.loads(v) if v[:1] in "[{" else v  # noqa: SIM118
                                                         for k, v in f.metadata().items()}


class _Replay:
    """The official run's batches and masking noise, as a recipe of the project's loop."""

    def __init__(self, ref: dict[str, torch.Tensor], case: str, names: dict[str, list[str]]) -> None:
        self.ref, self.case, self.names, self.seen, self.losses = ref, case, names, 0, []

    def batches(self, epoch: int, start: int):
        return list(range(len(self.names[str(epoch)])))[start:]

    def loss(self, net, step_in_epoch, epoch, step):
        images = self.ref[self.names[str(epoch)][step_in_epoch]]
        noise = self.ref[f"{self.case}.noise{self.seen}"]
        self.seen += 1
        loss = net(images, mask_ratio=0.75, noise=noise).loss
        self.losses.append(loss.detach().clone())
        return loss

    def failures(self, batch) -> int:
        return 0

    def raise_failures(self, batch) -> None:
        raise AssertionError("no failures in a replay")


def _model(ref: dict[str, torch.Tensor], meta: dict) -> MaskedAutoencoderViT:
    config = meta["config"]
    model = MaskedAutoencoderViT(MAEConfig(**{k: v for k, v in config.items() if k in (
        "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
        "decoder_num_heads", "mlp_ratio")}, norm_pix_loss=True))
    model.load_state_dict({k[len("init."):]: v for k, v in ref.items() if k.startswith("init.")})
    return model


@pytest.mark.parametrize("case", ["a1", "a2"])
def test_the_loop_makes_the_official_updates(case: str) -> None:
    ref, meta = _reference()
    args, cases = meta["args"], meta["cases"]
    model = _model(ref, meta)
    groups = weight_decay_groups(model, args["weight_decay"])
    names = {id(p): n for n, p in model.named_parameters()}
    # The groups as the official add_weight_decay made them: [no decay, decay], each in named_parameters order.
    assert [[names[id(p)] for p in g["params"]] for g in groups] == [g["params"] for g in meta["param_groups"]]
    assert [g["weight_decay"] for g in groups] == [g["weight_decay"] for g in meta["param_groups"]]
    optimizer = torch.optim.AdamW(groups, lr=args["lr"], betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    epochs = cases[case]["epochs"]
    replay = _Replay(ref, case, epochs)
    lrs: list[float] = []
    for epoch in sorted(int(e) for e in epochs):
        loop = LoopConfig(epochs=args["epochs"], steps=len(epochs[str(epoch)]), accum=cases[case]["accum_iter"],
                          lr=args["lr"], warmup_epochs=args["warmup_epochs"], min_lr=args["min_lr"], clip_grad=None,
                          amp="off", seed=0)
        train_epoch(model, model, replay, optimizer, scaler, loop, DistContext(), epoch=epoch,
                    notify=lambda event, info: lrs.append(optimizer.param_groups[0]["lr"]))
        state = model.state_dict()
        for name, expected in ((k[len(f"{case}.after_epoch{epoch}."):], v) for k, v in ref.items()
                               if k.startswith(f"{case}.after_epoch{epoch}.")):
            torch.testing.assert_close(_comparable(name, state[name]), _comparable(name, expected), rtol=PARAM_RTOL,
                                       atol=PARAM_ATOL, msg=name)
    torch.testing.assert_close(torch.stack(replay.losses), ref[f"{case}.loss"], rtol=LOSS_RTOL, atol=0)
    assert lrs == ref[f"{case}.lr"].tolist()  # the schedule, bit for bit
    for name in meta["adam_keys"]:
        param = dict(model.named_parameters())[name]
        adam = optimizer.state[param]
        assert float(adam["step"]) == float(ref[f"{case}.adam.{name}.step"])
        torch.testing.assert_close(_comparable(name, adam["exp_avg"]),
                                   _comparable(name, ref[f"{case}.adam.{name}.exp_avg"]), rtol=PARAM_RTOL, atol=1e-8)
        torch.testing.assert_close(_comparable(name, adam["exp_avg_sq"]),
                                   _comparable(name, ref[f"{case}.adam.{name}.exp_avg_sq"]), rtol=PARAM_RTOL, atol=1e-10)
