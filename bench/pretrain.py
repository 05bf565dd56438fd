"""Pre-training step throughput: `mae-large pretrain`'s step (the shared loop and the pre-training recipe) against
a plain PyTorch step at the same size.

    python bench/pretrain.py --device cpu --size 64 --batch 4 --steps 4 --repeats 3
    python bench/pretrain.py --device cuda --size 224 --batch 64 --steps 20      # one GPU, unattended

Both train ViT-L/16's MAE (`mae_vit_large_patch16`, norm-pix target, mask ratio 0.75) with AdamW (betas 0.9, 0.95)
over timm 0.3.2's `add_weight_decay` groups, on pre-built tensors (no data loading to overlap). The library step is
`trainer.train_epoch` with `pretrain`'s own recipe: each image's masking noise drawn from its keyed generator,
keyed seeding per step, the autocast / scaler path, the loss check before the backward, the per-iteration cosine
lr. The plain step is `model(x)` (its own `torch.rand` noise), loss, backward, step, with the same lr schedule.
Autocast is bf16 on CUDA and off on the CPU in both. The variants run in fresh processes, alternated `--repeats`
times; the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import REPO, WARMUP_STEPS, alternate, library_epoch, median_of, timed  # noqa: E402


def child(args: argparse.Namespace) -> dict[str, float]:
    sys.path.insert(0, str(REPO))
    import torch

    from mae.large.data.labelled import LabelledBatch
    from mae.large.models.mae import mae_vit_large_patch16
    from mae.large.train.pretrain import PretrainConfig, _Recipe
    from mae.large.train.pretrain_model import weight_decay_groups
    from mae.large.utils.device import autocast
    from mae.large.utils.distributed import DistContext
    from mae.large.utils.optim import cosine_lr, set_lr

    device = torch.device(args.device)
    amp = "bf16" if device.type == "cuda" else "off"
    torch.manual_seed(0)
    model = mae_vit_large_patch16(norm_pix_loss=True, img_size=args.size).to(device).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    steps = args.steps + WARMUP_STEPS
    batches = [LabelledBatch(torch.randn(args.batch, 3, args.size, args.size), torch.full((args.batch,), -1), [],
                             torch.arange(i * args.batch, (i + 1) * args.batch)) for i in range(steps)]

    if args.loop == "library":
        class Prebuilt(_Recipe):
            limit = steps

            def batches(self, epoch: int, start: int) -> list:
                return batches[start:self.limit]

        config = PretrainConfig(batch_size=args.batch, input_size=args.size)
        recipe = Prebuilt(None, model.config, config, DistContext(device=device), 0)  # type: ignore[arg-type]
        run = library_epoch(model, recipe, optimizer, device, amp, steps)
    else:
        def run(first: int, count: int) -> None:
            for step in range(first, first + count):
                set_lr(optimizer, cosine_lr(step / steps, lr=1e-3, epochs=1, warmup_epochs=0.5))
                with autocast(amp, device):
                    loss = model(batches[step].images.to(device), mask_ratio=0.75)[0]
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss.item()

    return timed(run, args.steps, args.batch, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop", choices=("library", "plain"), default=None)
    args = parser.parse_args()
    if args.loop is not None:
        import json

        print(json.dumps(child(args)))
        return
    common = ["--device", args.device, "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    plain, library = alternate(__file__, common, [["--loop", "plain"], ["--loop", "library"]], args.repeats)
    print("| device | size | batch | step | images/s (median) | runs | peak GiB |\n|---|---|---|---|---|---|---|")
    for name, runs in (("plain PyTorch", plain), ("library", library)):
        each = ", ".join(f"{r['images_per_s']:.2f}" for r in runs)
        print(f"| {args.device} | {args.size} | {args.batch} | {name} | {median_of(runs, 'images_per_s'):.2f} | "
              f"{each} | {median_of(runs, 'peak_gib'):.2f} |")
    print(f"\nlibrary / plain throughput: {median_of(library, 'images_per_s') / median_of(plain, 'images_per_s'):.3f}")


if __name__ == "__main__":
    main()
