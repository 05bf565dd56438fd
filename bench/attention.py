"""Attention weights on the explicit path against a plain forward, in one process.

    .venv/bin/python bench/attention.py [--rounds 5] [--batch 1] [--size 224]

plain:     `model.forward_encoder(imgs, mask_ratio=0)`: the normal encoder forward (SDPA), what the maps ride on;
one layer: `attention_maps(model, imgs, layers=(-1,))`: the same blocks, plus the last layer's weights formed
           explicitly (its qkv once more, softmax(q k^T / sqrt(d)) in float32, the cls rows kept);
all 24:    `attention_maps(model, imgs, layers=None, rollout=True)`: the weights of every layer, their head
           average multiplied into the rollout (what `mae-large attention --layer 0,...,23 --rollout` computes).

The model is ViT-L from a seeded random init (timings do not depend on the values), under inference_mode.
Rounds alternate between the three; medians and the ratios to the plain forward are printed.
Targets: one layer <= 1.3x, all 24 layers <= 3x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, median  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from mae.large import mae_vit_large_patch16
    from mae.large.viz.attention import attention_maps

    print(machine_header())
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = mae_vit_large_patch16(img_size=args.size).eval().to(device)
    imgs = torch.randn(args.batch, 3, args.size, args.size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cases = {
        "plain": lambda: model.forward_encoder(imgs, mask_ratio=0.0),
        "one layer": lambda: attention_maps(model, imgs, layers=(-1,)),
        "all 24 + rollout": lambda: attention_maps(model, imgs, layers=None, rollout=True),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():  # warm-up: first-call allocations, kernel selection
            fn()
        sync()
        for _ in range(args.rounds):
            for name, fn in cases.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    plain = median(times["plain"])
    print(f"ViT-L fp32, {args.size}x{args.size}, batch {args.batch}, {args.rounds} rounds, {device}")
    for name, values in times.items():
        print(f"{name:>17}: median {median(values):.3f} s  (min {min(values):.3f})")
    print(f"one layer / plain:        {median(times['one layer']) / plain:.2f}x (target <= 1.3x)")
    print(f"all 24 + rollout / plain: {median(times['all 24 + rollout']) / plain:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
