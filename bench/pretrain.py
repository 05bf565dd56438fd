"""Pre-training step throughput: `mae-large pretrain`'s step (the shared loop and the pre-training recipe) against
a plain PyTorch step at the same size.

    python bench/pretrain.py --device cpu --size 64 --batch 4 --steps 4 --repeats 3
    python bench/pretrain.py --device cpu --size 64 --batch 4 --steps 8 --interleave --threads 1  # a shared CPU: below
    python bench/pretrain.py --device cuda --size 224 --batch 64 --steps 20      # one GPU, unattended

Both train ViT-L/16's MAE (`mae_vit_large_patch16`, norm-pix target, mask ratio 0.75) with AdamW (betas 0.9, 0.95)
over timm 0.3.2's `add_weight_decay` groups, on pre-built tensors (no data loading to overlap). The library step is
`trainer.train_epoch` with `pretrain`'s own recipe: each image's masking noise drawn from its keyed generator,
keyed seeding per step, the autocast / scaler path, the loss check before the backward, the per-iteration cosine
lr. The plain step is `model(x)` (its own `torch.rand` noise), loss, backward, step, with the same lr schedule.
Autocast is bf16 on CUDA and off on the CPU in both. The variants run in fresh processes, alternated `--repeats`
times; the ratio is of the medians. With `--interleave` both loops run in one process on one model instead, a step of
one then a step of the other (ABBA order), each step timed alone, in wall and in process CPU seconds; printed are the
ratio of the median wall times, the median of the step-by-step ratios and the ratio of the median CPU times. On a
CPU shared with other work, where a step's wall time varies 2x from one minute to the next, that compares the loops
under the same load, which fresh processes minutes apart do not; with `--threads 1` the CPU time is the work of the
step itself (with two threads it also counts the threads' spin-waiting for each other, which grows with the load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train import REPO, WARMUP_STEPS, alternate, library_epoch, median_of, timed  # noqa: E402


def loops(args: argparse.Namespace, steps: int) -> tuple[Any, dict[str, Callable[[int, int], None]], Callable[[int], None]]:
    """The device, both loops over one model (`run(first, count)` trains micro-steps first .. first + count - 1), and
    the library step's own draws alone (`keyed(step)`)."""
    sys.path.insert(0, str(REPO))
    import torch

    from mae.large.data.labelled import LabelledBatch
    from mae.large.models.mae import mae_vit_large_patch16
    from mae.large.train.pretrain import PretrainConfig, _Recipe
    from mae.large.train.pretrain_model import weight_decay_groups
    from mae.large.utils.device import autocast
    from mae.large.utils.distributed import DistContext
    from mae.large.utils.keyed import derive_seed
    from mae.large.utils.optim import cosine_lr, set_lr

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = "bf16" if device.type == "cuda" else "off"
    torch.manual_seed(0)
    model = mae_vit_large_patch16(norm_pix_loss=True, img_size=args.size).to(device).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.95))
    batches = [LabelledBatch(torch.randn(args.batch, 3, args.size, args.size), torch.full((args.batch,), -1), [],
                             torch.arange(i * args.batch, (i + 1) * args.batch)) for i in range(steps)]

    class Prebuilt(_Recipe):
        limit = steps

        def batches(self, epoch: int, start: int) -> list:
            return batches[start:self.limit]

    config = PretrainConfig(batch_size=args.batch, input_size=args.size)
    recipe = Prebuilt(None, model.config, config, DistContext(device=device), 0)  # type: ignore[arg-type]

    def plain(first: int, count: int) -> None:
        for step in range(first, first + count):
            set_lr(optimizer, cosine_lr(step / steps, lr=1e-3, epochs=1, warmup_epochs=0.5))
            with autocast(amp, device):
                loss = model(batches[step].images.to(device), mask_ratio=0.75)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

    def keyed(step: int) -> None:
        """What the library's step draws that the plain step does not: the step's keyed seed in a forked generator
        state, each image's keyed masking noise."""
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(derive_seed(0, "step", 0, step, 0))
            recipe.masking(batches[step], 0)

    return device, {"plain": plain, "library": library_epoch(model, recipe, optimizer, device, amp, steps)}, keyed


def child(args: argparse.Namespace) -> dict[str, float]:
    device, runs, _ = loops(args, args.steps + WARMUP_STEPS)
    return timed(runs[args.loop], args.steps, args.batch, device)


def interleaved(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], float]:
    """Wall and process-CPU seconds of each loop's steps, alternated step by step in one process (ABBA), after
    `WARMUP_STEPS` untimed steps each; and the CPU seconds of the library step's own draws (the mean of 100)."""
    import torch

    device, runs, keyed = loops(args, args.steps + WARMUP_STEPS)
    seconds: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in ("plain", "library")}
    for step in range(args.steps + WARMUP_STEPS):
        for name in ("plain", "library") if step % 2 == 0 else ("library", "plain"):
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name](step, 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= WARMUP_STEPS:
                seconds[name]["wall"].append(time.perf_counter() - wall)
                seconds[name]["cpu"].append(time.process_time() - cpu)
    cpu = time.process_time()
    for i in range(100):
        keyed(i % (args.steps + WARMUP_STEPS))
    return seconds, (time.process_time() - cpu) / 100


def report_interleaved(args: argparse.Namespace, seconds: dict[str, dict[str, list[float]]], keyed: float) -> None:
    """Each loop's step times, and three estimates of library / plain throughput: the ratio of the median wall
    times, the median of the step-by-step ratios (a plain step against the library step next to it, which cancels
    a load that drifts over minutes), and the ratio of the median process CPU times (all threads; what other work
    on the machine takes is not counted)."""
    med = statistics.median
    print("| device | size | batch | step | images/s (median wall) | wall s per step | CPU s per step |\n"
          "|---|---|---|---|---|---|---|")
    for name, t in seconds.items():
        print(f"| {args.device} | {args.size} | {args.batch} | {name} | {args.batch / med(t['wall']):.3f} | "
              f"{', '.join(f'{v:.2f}' for v in t['wall'])} | {', '.join(f'{v:.2f}' for v in t['cpu'])} |")
    plain, library = seconds["plain"], seconds["library"]
    paired = [p / q for p, q in zip(plain["wall"], library["wall"], strict=True)]
    print(f"\nlibrary / plain throughput, interleaved in one process, {len(paired)} steps each:\n"
          f"  median wall times: {med(plain['wall']) / med(library['wall']):.3f}\n"
          f"  median of step-by-step ratios (wall): {med(paired):.3f} (range {min(paired):.3f}-{max(paired):.3f})\n"
          f"  median CPU times: {med(plain['cpu']) / med(library['cpu']):.3f}\n"
          f"the library step's own draws (keyed step seed in a forked generator state, keyed masking noise): "
          f"{keyed * 1e3:.3f} ms CPU a step, {keyed / med(library['cpu']):.2e} of its median step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interleave", action="store_true", help="both loops in one process, step by step")
    parser.add_argument("--threads", type=int, default=None, help="torch's intra-op threads (default: torch's own)")
    parser.add_argument("--loop", choices=("library", "plain"), default=None)
    args = parser.parse_args()
    if args.interleave:
        report_interleaved(args, *interleaved(args))
        return
    if args.loop is not None:
        import json

        print(json.dumps(child(args)))
        return
    common = ["--device", args.device, "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    common += ["--threads", str(args.threads)] if args.threads else []
    plain, library = alternate(__file__, common, [["--loop", "plain"], ["--loop", "library"]], args.repeats)
    print("| device | size | batch | step | images/s (median) | runs | peak GiB |\n|---|---|---|---|---|---|---|")
    for name, runs in (("plain PyTorch", plain), ("library", library)):
        each = ", ".join(f"{r['images_per_s']:.2f}" for r in runs)
        print(f"| {args.device} | {args.size} | {args.batch} | {name} | {median_of(runs, 'images_per_s'):.2f} | "
              f"{each} | {median_of(runs, 'peak_gib'):.2f} |")
    print(f"\nlibrary / plain throughput: {median_of(library, 'images_per_s') / median_of(plain, 'images_per_s'):.3f}")


if __name__ == "__main__":
    main()
