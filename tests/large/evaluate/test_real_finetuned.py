"""The official fine-tuned ViT-L on ImageNet val must reproduce its published numbers. Runs when
data/mae_finetuned_vit_large.pth and an ImageNet val ImageFolder tree (environment variable MAE_IMAGENET_VAL: the
1,000 synset folders) are present; skipped with the reason otherwise. About 50,000 forward passes of ViT-L:
a GPU machine's test (set MAE_EVAL_DEVICE, default auto)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mae.large import catalog

ENTRY = catalog.CHECKPOINTS["finetuned"]
VAL = os.environ.get("MAE_IMAGENET_VAL")


@pytest.mark.skipif(not ENTRY.default_path.exists(),
                    reason=f"{ENTRY.filename} is not in data/; run `mae-large download finetuned` to run this test")
@pytest.mark.skipif(not VAL or not Path(VAL).is_dir(),
                    reason="set MAE_IMAGENET_VAL to an ImageNet-1k val ImageFolder tree (1,000 synset folders)")
def test_official_fine_tuned_vit_l_reproduces_its_imagenet_accuracy() -> None:
    from mae.large.evaluate.accuracy import evaluate_checkpoint

    accuracy, _ = evaluate_checkpoint(VAL, ENTRY.default_path, batch_size=64,
                                      device=os.environ.get("MAE_EVAL_DEVICE", "auto"), amp="auto")
    reference = catalog.FINETUNED_REFERENCE
    print(f"top-1 {accuracy.top1:.3f} (reference {reference['top1']}), top-5 {accuracy.top5:.3f} "
          f"(reference {reference['top5']}), loss {accuracy.loss:.3f} (reference {reference['loss']})")
    assert accuracy.images == 50_000
    assert abs(accuracy.top1 - reference["top1"]) <= 0.1
