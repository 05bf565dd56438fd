"""The cost of the NaN / Inf scan in `from_pretrained`: the same load with the scan and without it.

    .venv/bin/python bench/nonfinite_scan.py [--runs 5]

scan:    MaskedAutoencoderViT.from_pretrained(path)        # each loaded tensor read once (load.scan)
no scan: the same, with `load.nonfinite_tensors` monkeypatched to find nothing (the scan reads no tensor)

Each run is a fresh interpreter on the full ViT-L checkpoint in the official format (a seeded random init:
the values do not change the cost, every tensor is finite, so the scan is one sum per tensor). The file
is memory-mapped, so without the scan `from_pretrained` reads no weight at all; the scan is the first
read of the 1.32 GB (from the page cache: the file is read once before the runs). "+forward" also runs
one image, which reads every weight anyway, so it shows what the scan costs on the way to a first result.

A last child times the scan's candidates in one process over the loaded (memory-mapped) tensors: the
sum per tensor (what `checkpoint.count_nonfinite` does) on first touch, then warm, against
`torch.isfinite(t).all()` per tensor, warm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, bench_checkpoint, machine_header, median, run_checked, spread, wait_for_quiet  # noqa: E402


def _no_scan() -> None:
    from mae.large.checkpoints import load

    load.nonfinite_tensors = lambda state: {}  # type: ignore[assignment]


def child(mode: str, path: str, forward: bool) -> None:
    import torch

    from mae.large import MaskedAutoencoderViT

    if mode == "noscan":
        _no_scan()
    t0 = time.perf_counter()
    model = MaskedAutoencoderViT.from_pretrained(path)
    t1 = time.perf_counter()
    if forward:
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            model(torch.randn(1, 3, 224, 224, generator=g), 0.75, torch.rand(1, 196, generator=g))
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "forward_s": t2 - t1}))


def variants(path: str) -> None:
    import torch

    from mae.large import MaskedAutoencoderViT
    from mae.large.utils.nonfinite import nonfinite_tensors

    _no_scan()
    model = MaskedAutoencoderViT.from_pretrained(path)
    state = dict(model.state_dict())

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    result = {
        "sum_first_touch_s": timed(lambda: nonfinite_tensors(state)),
        "sum_warm_s": min(timed(lambda: nonfinite_tensors(state)) for _ in range(3)),
        "isfinite_all_warm_s": min(timed(lambda: [bool(torch.isfinite(t).all()) for t in state.values()])
                                   for _ in range(3)),
    }
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", choices=["scan", "noscan", "variants"])
    parser.add_argument("--forward", action="store_true")
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child == "variants":
        variants(args.path)
        return
    if args.child:
        child(args.child, args.path, args.forward)
        return

    path = bench_checkpoint()
    size_mb = path.stat().st_size / 1024**2
    with path.open("rb") as f:  # into the page cache, so that every run reads it from memory alike
        while f.read(1 << 24):
            pass
    print(machine_header())
    print(f"# checkpoint: {path} ({size_mb:.0f} MiB), seeded random init in the official format; "
          f"{args.runs} fresh processes each, alternating")
    results: dict[tuple[str, bool], dict[str, list[float]]] = {}
    for forward in (False, True):
        for _ in range(args.runs):
            for mode in ("noscan", "scan"):
                wait_for_quiet()
                cmd = [PYTHON, __file__, "--child", mode, "--path", str(path)] + (["--forward"] if forward else [])
                run = run_checked(cmd)
                inner = json.loads(run.stdout.strip().splitlines()[-1])
                r = results.setdefault((mode, forward), {"load": [], "forward": [], "rss": []})
                r["load"].append(inner["load_s"])
                r["forward"].append(inner["forward_s"])
                r["rss"].append(run.peak_rss_mb)

    print(f"\n{'path':<18}{'from_pretrained s':>22}{'forward s':>20}{'load+forward s':>18}{'peak RSS MiB':>18}")
    for (mode, forward), r in results.items():
        name = ("scan" if mode == "scan" else "no scan") + (" +forward" if forward else "")
        fwd = spread(r["forward"], ".3f") if forward else "-"
        total = f"{median([a + b for a, b in zip(r['load'], r['forward'])]):.3f}" if forward else "-"
        print(f"{name:<18}{spread(r['load'], '.3f'):>22}{fwd:>20}{total:>18}{spread(r['rss'], '.0f'):>18}")
    ratio = median(results[("scan", False)]["load"]) / median(results[("noscan", False)]["load"])
    with_fwd = [median([a + b for a, b in zip(results[(m, True)]["load"], results[(m, True)]["forward"])])
                for m in ("scan", "noscan")]
    print(f"\nfrom_pretrained with the scan / without (medians of {args.runs}): {ratio:.2f}x "
          f"(+{median(results[('scan', False)]['load']) - median(results[('noscan', False)]['load']):.3f} s)")
    print(f"load + first forward with the scan / without: {with_fwd[0] / with_fwd[1]:.2f}x")
    print(f"peak RSS / file size, from_pretrained alone: scan {median(results[('scan', False)]['rss']) / size_mb:.2f}, "
          f"no scan {median(results[('noscan', False)]['rss']) / size_mb:.2f}")

    v: dict[str, list[float]] = {}
    for _ in range(args.runs):
        wait_for_quiet()
        run = run_checked([PYTHON, __file__, "--child", "variants", "--path", str(path)])
        for key, value in json.loads(run.stdout.strip().splitlines()[-1]).items():
            v.setdefault(key, []).append(value)
    print(f"\nscan of the {size_mb:.0f} MiB of loaded tensors in one process ({args.runs} processes): sum per tensor "
          f"on first touch {spread(v['sum_first_touch_s'], '.3f')} s, warm {spread(v['sum_warm_s'], '.3f')} s; "
          f"isfinite(t).all() per tensor, warm {spread(v['isfinite_all_warm_s'], '.3f')} s "
          f"({median(v['isfinite_all_warm_s']) / median(v['sum_warm_s']):.1f}x the sum)")


if __name__ == "__main__":
    main()
