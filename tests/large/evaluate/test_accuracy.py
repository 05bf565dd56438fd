"""`evaluate_model`'s counts on logits written by hand: top-1, top-5 (the fifth-ranked class counts, the sixth
does not) and the mean cross-entropy, as `engine_finetune.evaluate` computes them with timm's `accuracy(output,
target, topk=(1, 5))`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mae.large.data.loader import image_folder
from mae.large.evaluate.accuracy import evaluate_model

LOGITS = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]  # class c ranks (c + 1)-th


class FixedLogits(torch.nn.Module):
    """Every image gets the same logits, LOGITS."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor(LOGITS).expand(images.shape[0], -1)


def test_top5_counts_the_fifth_ranked_class(tmp_path: Path) -> None:
    for label in range(6):  # one image per class folder 0..5
        (tmp_path / str(label)).mkdir()
        Image.fromarray(np.full((4, 4, 3), 40 * label, dtype=np.uint8)).save(tmp_path / str(label) / "a.png")
    source = image_folder(tmp_path)
    assert source.labels == [0, 1, 2, 3, 4, 5]
    result = evaluate_model(FixedLogits(), source, batch_size=4, device=torch.device("cpu"),
                            transform=lambda img: torch.zeros(3, 4, 4))
    # Top-1: only class 0's image; top-5: classes 0..4 (class 4 is ranked fifth), not class 5 (sixth).
    assert result.images == 6
    assert result.top1 == pytest.approx(100 / 6) and result.top5 == pytest.approx(500 / 6)
    log_z = math.log(sum(math.exp(v) for v in LOGITS))
    assert result.loss == pytest.approx(sum(log_z - v for v in LOGITS) / 6)
