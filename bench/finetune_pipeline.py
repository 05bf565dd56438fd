"""End-to-end `mae-large finetune` (decode, the recipe's augmentation, mixup, the step) against the training step
alone on pre-built tensors (`bench/finetune.py`'s plain loop): how much of the device the data pipeline keeps busy.

    .venv/bin/python bench/finetune_pipeline.py [--device cuda] [--size 224] [--batch 64] [--images 1024] [--workers 8]

The images are realistic JPEGs (500x375, quality 90, `features_pipeline.jpeg_folder`) in 4 class folders; the model is
ViT-L/16 from a seeded random official-format file (`_common.bench_checkpoint`; timings do not depend on the
values); the full recipe: RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 /
cutmix 1.0, drop path 0.2, autocast bf16 on CUDA (off on the CPU), as the plain loop. Two epochs; the second one's
images/s is reported (the first pays the worker start-up and kernel selection). "plain" is the same model, batch and
precision on tensors already on the device, measured in the same run. Target on a GPU: end to end >= 0.8x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, bench_checkpoint, machine_header  # noqa: E402
from features_pipeline import jpeg_folder  # noqa: E402


def class_tree(root: Path, images: list[Path], classes: int) -> Path:
    """`root/CLASS/image.jpg` as links to `images`, dealt round-robin into `classes` folders."""
    for i, image in enumerate(images):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.name).symlink_to(image)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=32, help="training images per epoch")
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    print(machine_header())
    photos = sorted(jpeg_folder(args.images).glob("*.jpg"))
    checkpoint = bench_checkpoint()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="mae-finetune-bench-") as tmp:
        train = class_tree(Path(tmp) / "train", photos, 4)
        val = class_tree(Path(tmp) / "val", photos[: max(8, args.batch)], 4)
        command = [sys.executable, "-m", "cli", "finetune", str(train), str(val), "--checkpoint", str(checkpoint),
                   "--out", str(Path(tmp) / "run"), "--epochs", "2", "--warmup-epochs", "1", "--size", str(args.size),
                   "--batch-size", str(args.batch), "--effective-batch", str(args.batch), "--workers", str(args.workers),
                   "--device", args.device, "--no-checkpoints", "--json"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return 1
        log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    plain_cmd = [sys.executable, str(REPO / "bench" / "finetune.py"), "--device", args.device, "--size", str(args.size),
                 "--batch", str(args.batch), "--steps", str(max(4, args.images // args.batch)), "--loop", "plain"]
    plain = json.loads(subprocess.run(plain_cmd, capture_output=True, text=True, check=True, env=env,
                                      cwd=REPO).stdout.strip().splitlines()[-1])
    end_to_end = log[-1]["images_per_s"]
    print(f"\nViT-L/16, size {args.size}, batch {args.batch}, {args.images} JPEGs per epoch, {args.workers} workers, "
          f"device {args.device}")
    print("| | images/s | / plain |\n|---|---|---|")
    print(f"| plain step on pre-built tensors | {plain['images_per_s']:.1f} | 1.00x |")
    print(f"| `mae-large finetune`, epoch 2 (full recipe) | {end_to_end:.1f} | {end_to_end / plain['images_per_s']:.2f}x |")
    print(f"| `mae-large finetune`, epoch 1 (start-up included) | {log[0]['images_per_s']:.1f} | "
          f"{log[0]['images_per_s'] / plain['images_per_s']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
