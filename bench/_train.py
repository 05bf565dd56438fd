"""What the training benchmarks share: the library's loop (`mae.large.train.trainer.train_epoch`) over pre-built
batches, timing after warm-up steps, and fresh child processes alternated between the variants.

A variant's child prints one JSON line: images/s of the timed steps and the peak memory
(`torch.cuda.max_memory_allocated` on CUDA, the process's RSS high-water mark on the CPU).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 2  # not timed: allocator and kernel selection


def library_epoch(model: Any, recipe: Any, optimizer: Any, device: Any, amp: str, steps: int,
                  clip_grad: float | None = None, lr: float = 1e-3) -> Callable[[int, int], None]:
    """`run(first, count)`: micro-steps `first` .. `first + count - 1` of the library's loop (keyed seeding, autocast
    and scaler path, loss check, per-iteration cosine lr), as an epoch of `steps` micro-steps."""
    import torch

    from mae.large.train.trainer import LoopConfig, Position, train_epoch
    from mae.large.utils.distributed import DistContext

    loop = LoopConfig(epochs=1, steps=steps, accum=1, lr=lr, warmup_epochs=0.5, min_lr=0.0, clip_grad=clip_grad,
                      amp=amp, seed=0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def run(first: int, count: int) -> None:
        recipe.limit = first + count
        train_epoch(model, model, recipe, optimizer, scaler, loop, DistContext(device=device), epoch=0,
                    start=Position(0, first))

    return run


def timed(run: Callable[[int, int], None], steps: int, batch: int, device: Any, warmup: int = WARMUP_STEPS
          ) -> dict[str, float]:
    """Images/s of `run` over `steps` micro-steps after `warmup` untimed ones, and the peak memory in GiB."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(0, warmup)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    run(warmup, steps)
    sync()
    seconds = time.perf_counter() - began
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"images_per_s": steps * batch / seconds, "peak_gib": peak / 2**30}


def alternate(script: str, common: Sequence[str], variants: Sequence[Sequence[str]], repeats: int
              ) -> list[list[dict[str, float]]]:
    """Each variant's results over `repeats` rounds, each round running every variant once in a fresh process, in
    turn (so a slower stretch of a shared machine falls on every variant alike)."""
    results: list[list[dict[str, float]]] = [[] for _ in variants]
    for _ in range(repeats):
        for i, variant in enumerate(variants):
            done = subprocess.run([sys.executable, script, *common, *variant], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(variant)} failed:\n{done.stderr[-2000:]}")
            results[i].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def median_of(runs: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)
