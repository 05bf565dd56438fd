"""Fine-tuning throughput and memory: `mae.large.train.finetune`'s training loop against the same loop in plain PyTorch.

    python bench/finetune.py --device cpu --size 64 --batch 4 --steps 4
    python bench/finetune.py --device cuda --size 224 --batch 64 --steps 20     # one GPU, unattended

Both loops train ViT-L/16 (`vit_large_patch16`, 1000 classes, drop path 0.2) with AdamW over the layer-decay groups
and the per-iteration cosine schedule, on pre-built tensors (no data loading to overlap). The library loop adds
its keyed seeding per step, the autocast / gradient-scaler path and the loss all-reduce check; the plain loop is
`model(x)`, cross-entropy, backward, step. Autocast is bf16 on CUDA and off on the CPU in both. Each variant runs
in a fresh subprocess; peak memory is `torch.cuda.max_memory_allocated` on CUDA, the process's RSS high-water
mark on the CPU. Prints a markdown row per variant and the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import REPO, WARMUP_STEPS, library_epoch, timed  # noqa: E402


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    import torch

    from mae.large.data.labelled import LabelledBatch
    from mae.large.models.vit import apply_lr_scale, param_groups_lrd, vit_large_patch16
    from mae.large.train.finetune import FinetuneConfig, _Recipe
    from mae.large.utils.device import autocast
    from mae.large.utils.distributed import DistContext
    from mae.large.utils.optim import cosine_lr

    device = torch.device(args.device)
    amp = "bf16" if device.type == "cuda" else "off"
    torch.manual_seed(0)
    model = vit_large_patch16(num_classes=1000, drop_path_rate=0.2, img_size=args.size).to(device)
    model.set_grad_checkpointing(args.grad_checkpointing)
    optimizer = torch.optim.AdamW(param_groups_lrd(model, 0.05, layer_decay=0.75), lr=1e-3)
    steps = args.steps + WARMUP_STEPS
    batches = [LabelledBatch(torch.randn(args.batch, 3, args.size, args.size),
                             torch.randint(0, 1000, (args.batch,)), []) for _ in range(steps)]
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    if args.loop == "library":
        class Prebuilt(_Recipe):
            limit = steps

            def batches(self, epoch: int, start: int) -> list:
                return batches[start:self.limit]

        config = FinetuneConfig(epochs=1, warmup_epochs=0.5, mixup=0.0, cutmix=0.0, batch_size=args.batch)
        recipe = Prebuilt(None, criterion, None, config, DistContext(device=device), 0)  # type: ignore[arg-type]
        run = library_epoch(model, recipe, optimizer, device, amp, steps)
    else:
        def run(first: int, count: int) -> None:
            model.train()
            for step in range(first, first + count):
                apply_lr_scale(optimizer, cosine_lr(step / steps, lr=1e-3, epochs=1, warmup_epochs=0.5))
                x, y = batches[step].images.to(device), batches[step].labels.to(device)
                with autocast(amp, device):
                    loss = criterion(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss.item()

    print(json.dumps(timed(run, args.steps, args.batch, device)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--loop", choices=("library", "plain"), default=None)
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args()
    if args.loop is not None:
        child(args)
        return
    results = {}
    for loop, ckpt in (("plain", False), ("library", False), ("library", True)):
        command = [sys.executable, __file__, "--device", args.device, "--size", str(args.size), "--batch",
                   str(args.batch), "--steps", str(args.steps), "--loop", loop] + (["--grad-checkpointing"] if ckpt else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[(loop, ckpt)] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| device | size | batch | loop | grad ckpt | images/s | peak GiB |\n|---|---|---|---|---|---|---|")
    for (loop, ckpt), r in results.items():
        print(f"| {args.device} | {args.size} | {args.batch} | {loop} | {'on' if ckpt else 'off'} | "
              f"{r['images_per_s']:.2f} | {r['peak_gib']:.2f} |")
    plain, lib, ck = results[("plain", False)], results[("library", False)], results[("library", True)]
    print(f"\nlibrary / plain throughput: {lib['images_per_s'] / plain['images_per_s']:.3f}; "
          f"peak memory with / without gradient checkpointing: {ck['peak_gib'] / lib['peak_gib']:.3f}")


if __name__ == "__main__":
    main()
