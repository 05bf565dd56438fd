"""`mae-large evaluate VAL --checkpoint FINETUNED`: a fine-tuned classifier's top-1 / top-5 / loss, checked against
the same numbers computed here by hand from the model's logits."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from cli.app import app
from mae.large.data.images import load_image
from mae.large.data.loader import image_folder
from mae.large.models.vit import VisionTransformer, ViTConfig
from tests.helpers import save_official


def test_evaluate_matches_a_direct_computation(runner, small_arch, digits_tree, tmp_path) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.from_architecture(None, num_classes=10)).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # a head that ranks the classes differently per image
    path = save_official(tmp_path / "ft.pth", model.state_dict(), epoch=3, args={"note": "extra entries are fine"})
    source = image_folder(digits_tree)
    images = torch.stack([load_image(p, (32, 32), "eval") for p in source.paths])
    labels = torch.tensor(source.labels)
    with torch.no_grad():
        logits = model(images)
    top5 = logits.topk(5, dim=1).indices
    expected = {"top1": 100.0 * int((top5[:, 0] == labels).sum()) / 200,
                "top5": 100.0 * int((top5 == labels[:, None]).any(1).sum()) / 200,
                "loss": F.cross_entropy(logits, labels).item(), "images": 200}

    done = runner.invoke(app, ["evaluate", str(digits_tree), "-c", str(path), "--batch-size", "48", "--device", "cpu",
                               "--json"])
    assert done.exit_code == 0, done.output
    got = json.loads(done.stdout)
    assert got["images"] == 200 and abs(got["top1"] - expected["top1"]) < 1e-9 and abs(got["top5"] - expected["top5"]) < 1e-9
    assert abs(got["loss"] - expected["loss"]) <= 1e-5 * expected["loss"]

    table = runner.invoke(app, ["evaluate", str(digits_tree), "-c", str(path), "--device", "cpu"])
    assert table.exit_code == 0 and f"{expected['top1']:.3f}" in table.output


def test_a_pre_training_file_or_a_class_mismatch_is_one_line(runner, small_arch, small_ckpts, digits_tree, tmp_path):
    done = runner.invoke(app, ["evaluate", str(digits_tree), "-c", str(small_ckpts[1]), "--device", "cpu"])
    assert done.exit_code == 1 and "no trained classifier" in done.output and len(done.output.strip().splitlines()) == 1
    model = VisionTransformer(ViTConfig.from_architecture(None, num_classes=7))
    path = save_official(tmp_path / "ft7.pth", model.state_dict())
    done = runner.invoke(app, ["evaluate", str(digits_tree), "-c", str(path), "--device", "cpu"])
    assert done.exit_code == 1 and "10 class folders and the classifier 7 classes" in done.output
