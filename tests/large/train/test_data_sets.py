"""Training on data sets kept as people keep them: a parquet source trains exactly as the ImageFolder tree it was
written from (the same keyed order, bit for bit); tar shards train as a stream whose stopped run resumes bit for bit
and whose order is refused with other readers."""

from __future__ import annotations

import pytest
import torch

from mae.large.errors import InvalidArgumentError
from mae.large.train.finetune import FinetuneConfig, finetune
from mae.large.train.pretrain import PretrainConfig, pretrain
from mae.large.train.trainer import RunStopped
from tests.data_formats import tree_samples, write_hub_parquet, write_tar_shards
from tests.helpers import encoder_only, save_official, small_state_dict, use_small_architecture, write_digits_tree

pytest.importorskip("pyarrow")

FINETUNE = dict(input_size=32, batch_size=8, accum_iter=1, mixup=0.0, cutmix=0.0, auto_augment=None, re_prob=0.0,
                smoothing=0.0, drop_path=0.0, blr=0.05, warmup_epochs=1, device="cpu", amp="off", workers=0, epochs=1,
                save_every=0)
PRETRAIN = dict(input_size=32, batch_size=8, accum_iter=1, blr=8e-3, warmup_epochs=1, workers=0, device="cpu",
                amp="off", preview_every=0, preview_images=2, save_every=0, epochs=2)


@pytest.fixture
def small(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    use_small_architecture(monkeypatch)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    tree = write_digits_tree(root / "tree", per_class=6)
    samples, classes = tree_samples(tree)
    return tree, write_hub_parquet(root / "hub", samples, classes, row_group=7), write_tar_shards(root / "tars", samples)


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint-last.pth", weights_only=True)["model"]


def test_fine_tuning_on_parquet_is_fine_tuning_on_its_tree_bit_for_bit(small, digits, tmp_path) -> None:
    tree, hub, _ = digits
    encoder = save_official(tmp_path / "enc.pth", encoder_only(small_state_dict()))
    config = FinetuneConfig(**FINETUNE)
    a = finetune(tree, tree, tmp_path / "tree", config, pretrained=encoder)
    b = finetune(hub, hub, tmp_path / "hub", config, pretrained=encoder)
    wa, wb = _weights(tmp_path / "tree"), _weights(tmp_path / "hub")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"] and a.best_top1 == b.best_top1
    assert b.args["sources"]["train"]["form"] == "parquet" and b.args["stream"] is None
    assert b.args["classes"] == a.args["classes"]


def test_a_stopped_stream_run_resumes_bit_for_bit(small, digits, tmp_path) -> None:
    _, _, shards = digits
    config = PretrainConfig(**PRETRAIN)
    whole = pretrain(shards, tmp_path / "whole", config)
    assert whole.args["stream"] == {"readers": 1, "shuffle_buffer": 1000}
    assert whole.args["sources"]["data"]["form"] == "webdataset"
    asked = iter(range(100))
    with pytest.raises(RunStopped) as info:
        pretrain(shards, tmp_path / "cut", config, stop=lambda: next(asked) >= 4)
    assert (info.value.position.epoch, info.value.position.step) == (0, 5)
    pretrain(shards, tmp_path / "cut", config, resume=tmp_path / "cut")
    wa, wb = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(InvalidArgumentError, match=r"stream readers \(world size x workers: 1 then, 2 now\)"):
        pretrain(shards, tmp_path / "cut", config.replace(workers=2, epochs=3), resume=tmp_path / "cut")
