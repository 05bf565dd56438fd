"""k-NN and linear-probe time on cached features, against the bare arithmetic they cannot avoid, in one process.

    .venv/bin/python bench/evaluate.py [--train 100000] [--val 10000] [--dim 1024] [--classes 100]
                                       [--epochs 3] [--rounds 2] [--device cpu]

Data: random clusters (a Gaussian centre per class scaled by 0.2, unit noise: k-NN is far from saturated),
float32, `--train` x `--dim` for training and `--val` x `--dim` for validation. Rounds alternate between
each measurement and its baseline.

k-NN  (k=20, softmax vote, default chunks): `evaluate.knn` against the same (val x D) @ (D x train)
      product computed tile by tile with the same tiles, nothing kept (the matmul floor). Also the same
      k-NN from a source that only streams blocks (as a shard directory does).
probe (official settings: batch 16384, blr 0.1, LARS, cosine schedule, per-epoch val accuracy): seconds per
      epoch, against a plain SGD (momentum 0.9) epoch over the same shuffled batches with the same head, loss
      and val pass. Also the probe on a streamed source whose budget holds a quarter of the training set
      (each epoch gathers its batches in sequential passes).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, median, spread, wait_for_quiet  # noqa: E402


class Streamed:
    """A source that only streams blocks (copies, as reading shards would)."""

    def __init__(self, tensor) -> None:
        self._tensor, self.rows, self.dim = tensor, tensor.shape[0], tensor.shape[1]

    def chunks(self, size: int) -> Iterator:
        for start in range(0, self.rows, size):
            yield self._tensor[start:start + size].clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--val", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["knn", "probe"], default=None, help="run one of the two parts")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from mae.large.evaluate.knn import knn
    from mae.large.evaluate.probe import build_head, probe
    from mae.large.utils.optim import cosine_lr, set_lr

    print(machine_header())
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(args.classes, args.dim, generator=gen)
    ytr = torch.randint(args.classes, (args.train,), generator=gen)
    yva = torch.randint(args.classes, (args.val,), generator=gen)
    xtr = centres[ytr] * 0.2 + torch.randn(args.train, args.dim, generator=gen)
    xva = centres[yva] * 0.2 + torch.randn(args.val, args.dim, generator=gen)
    if device.type == "cuda":
        xtr, xva = xtr.to(device), xva.to(device)

    def tiled_matmul() -> None:  # the product knn computes, with its default tiles (4096 x 4096), nothing kept
        q = F.normalize(xva, dim=1)
        for start in range(0, args.train, 4096):
            keys = F.normalize(xtr[start:start + 4096], dim=1)
            for v in range(0, args.val, 4096):
                q[v:v + 4096] @ keys.T
        sync()

    results: dict[str, object] = {}

    def run_knn() -> None:
        results["knn"] = knn(xtr, ytr, xva, yva, k=20, device=device)
        sync()

    def run_knn_streamed() -> None:
        results["knn_streamed"] = knn(Streamed(xtr), ytr, Streamed(xva), yva, k=20, device=device)
        sync()

    def epoch_times(**kwargs) -> list[float]:
        stamps = [time.perf_counter()]
        result = probe(kwargs.pop("train", xtr), ytr, xva, yva, protocol="official", epochs=args.epochs, device=device,
                       on_epoch=lambda _: (sync(), stamps.append(time.perf_counter())), **kwargs)
        results["probe"] = result
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def sgd_epoch_times() -> list[float]:  # the same batches, head, loss, schedule and val pass; torch's SGD
        g = torch.Generator().manual_seed(0)
        head = build_head(args.dim, args.classes, g).to(device)
        batch = min(16384, args.train)
        steps, lr = args.train // batch, 0.1 * batch / 256
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
        times = []
        for epoch in range(args.epochs):
            start = time.perf_counter()
            head.train()
            order = torch.randperm(args.train, generator=g)
            for step in range(steps):
                idx = order[step * batch:(step + 1) * batch]
                set_lr(opt, cosine_lr(epoch + step / steps, lr=lr, epochs=args.epochs, warmup_epochs=min(10, args.epochs)))
                loss = F.cross_entropy(head(xtr[idx.to(xtr.device)]), ytr[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            head.eval()
            with torch.no_grad():
                for v in range(0, args.val, 8192):
                    head(xva[v:v + 8192]).topk(5, dim=1)
            sync()
            times.append(time.perf_counter() - start)
        return times

    def time_knn() -> None:
        tiled_matmul()  # warm-up
        timed: dict[str, list[float]] = {"matmul": [], "knn": [], "knn_streamed": []}
        for _ in range(args.rounds):
            for name, fn in (("matmul", tiled_matmul), ("knn", run_knn), ("knn_streamed", run_knn_streamed)):
                start = time.perf_counter()
                fn()
                timed[name].append(time.perf_counter() - start)
        mm, kn, ks = (median(timed[n]) for n in ("matmul", "knn", "knn_streamed"))
        flops = 2.0 * args.val * args.train * args.dim
        print(f"tiled matmul (floor):  {spread(timed['matmul'])} s  ({flops / mm / 1e9:.0f} GFLOP/s)")
        print(f"knn k=20 (tensor):     {spread(timed['knn'])} s  -> {kn / mm:.2f}x the matmul; top1 {results['knn'].top1:.1f}%")
        print(f"knn k=20 (streamed):   {spread(timed['knn_streamed'])} s  -> {ks / mm:.2f}x the matmul; "
              f"top1 {results['knn_streamed'].top1:.1f}%")

    def time_probe() -> None:
        probe_times: dict[str, list[float]] = {"sgd": [], "probe": [], "probe_streamed": []}
        quarter = args.train * args.dim * 4 // 4
        for _ in range(args.rounds):
            probe_times["sgd"] += sgd_epoch_times()
            probe_times["probe"] += epoch_times()
            top1 = results["probe"].top1
            if device.type == "cpu":
                probe_times["probe_streamed"] += epoch_times(train=Streamed(xtr), memory_bytes=quarter)
        sgd, pr = median(probe_times["sgd"]), median(probe_times["probe"])
        steps = args.train // min(16384, args.train)
        print(f"probe: {args.epochs} epochs x {steps} steps of batch {min(16384, args.train)}, val pass each epoch; "
              f"top1 after {args.epochs} epochs {top1:.1f}%")
        print(f"plain SGD epoch:       {spread(probe_times['sgd'])} s")
        print(f"probe epoch (LARS):    {spread(probe_times['probe'])} s  -> {pr / sgd:.2f}x the SGD epoch")
        if probe_times["probe_streamed"]:
            ps = median(probe_times["probe_streamed"])
            print(f"probe epoch (streamed, budget 1/4 of the set): {spread(probe_times['probe_streamed'])} s  -> "
                  f"{ps / sgd:.2f}x the SGD epoch")

    load = wait_for_quiet()
    print(f"{args.train} x {args.dim} train, {args.val} val, {args.classes} classes, float32, {device}; "
          f"1-min load before: {load:.2f}; {args.rounds} rounds")
    if args.only != "probe":
        time_knn()
    if args.only != "knn":
        time_probe()


if __name__ == "__main__":
    main()
