"""Loading the full ViT-L checkpoint: the official demo's path against `from_pretrained`, fresh processes.

    .venv/bin/python bench/load.py [--runs 5]

plain:       model = mae_vit_large_patch16()          # random init of 330 M parameters
             sd = torch.load(path, map_location="cpu")["model"]
             model.load_state_dict(sd, strict=False)  # copies 1.32 GB
pretrained:  MaskedAutoencoderViT.from_pretrained(path) # meta device + mmap + assign: no init, no copy
safetensors: the same from the same tensors saved as .safetensors (memory-mapped too, no pickle)

Each run is a fresh interpreter; the parent reads the child's peak RSS with wait4. `load_s` is the
build + load time measured inside the child (imports excluded: both pay the same `import torch`);
`wall_s` is the whole process. "+forward" also runs one image through the model, which pages the
mmapped weights in (that is where the file's 1.32 GB shows up in RSS on the mmap path).
The checkpoint is a seeded random init in the official format (the released file is not available
offline); loading cost depends on format and size only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, bench_checkpoint, machine_header, median, run_checked, spread, wait_for_quiet  # noqa: E402


def child(mode: str, path: str, forward: bool) -> None:
    t0 = time.perf_counter()
    import torch

    from mae.large import MaskedAutoencoderViT, mae_vit_large_patch16

    t1 = time.perf_counter()
    if mode == "safetensors":
        model = MaskedAutoencoderViT.from_pretrained(path)
    elif mode == "plain":
        model = mae_vit_large_patch16()
        checkpoint = torch.load(path, map_location="cpu")
        model.load_state_dict(checkpoint["model"], strict=False)
        model.eval()
    else:
        model = MaskedAutoencoderViT.from_pretrained(path)
    t2 = time.perf_counter()
    if forward:
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            model(torch.randn(1, 3, 224, 224, generator=g), 0.75, torch.rand(1, 196, generator=g))
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "forward_s": t3 - t2}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", choices=["plain", "pretrained", "safetensors"])
    parser.add_argument("--forward", action="store_true")
    parser.add_argument("--path")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.forward)
        return

    path = bench_checkpoint()
    paths = {"plain": path, "pretrained": path, "safetensors": safetensors_copy(path)}
    size_mb = path.stat().st_size / 1024**2
    print(machine_header())
    print(f"# checkpoint: {path} ({size_mb:.0f} MiB), seeded random init in the official format "
          "(the released file is not available offline)")
    results: dict[tuple[str, bool], dict[str, list[float]]] = {}
    for forward in (False, True):
        for _ in range(args.runs):
            for mode in ("plain", "pretrained", "safetensors"):  # interleaved, so drifting load hits all alike
                wait_for_quiet()
                cmd = [PYTHON, __file__, "--child", mode, "--path", str(paths[mode])] + (["--forward"] if forward else [])
                run = run_checked(cmd)
                inner = json.loads(run.stdout.strip().splitlines()[-1])
                r = results.setdefault((mode, forward), {"wall": [], "rss": [], "load": [], "forward": []})
                r["wall"].append(run.wall_s)
                r["rss"].append(run.peak_rss_mb)
                r["load"].append(inner["load_s"])
                r["forward"].append(inner["forward_s"])

    print(f"\n{'path':<22}{'build+load s':>20}{'forward s':>20}{'process wall s':>20}{'peak RSS MiB':>20}"
          f"{'RSS / file':>12}")
    for (mode, forward), r in results.items():
        name = mode + (" +forward" if forward else "")
        fwd = spread(r["forward"], ".3f") if forward else "-"
        print(f"{name:<22}{spread(r['load'], '.3f'):>20}{fwd:>20}{spread(r['wall'], '.2f'):>20}"
              f"{spread(r['rss'], '.0f'):>20}{median(r['rss']) / size_mb:>12.2f}")
    plain, ours = results[("plain", False)], results[("pretrained", False)]
    print(f"\nfrom_pretrained speed-up (build+load, medians of {args.runs}): "
          f"{median(plain['load']) / median(ours['load']):.1f}x   target >= 10x")
    print(f"whole-process wall ratio pretrained/plain: {median(ours['wall']) / median(plain['wall']):.2f}x")
    print(f"from_pretrained peak RSS / file size: {median(ours['rss']) / size_mb:.2f}   target <= 1.25")
    st = results[("safetensors", False)]
    print(f"safetensors / zip pickle, from_pretrained build+load (medians): {median(st['load']) / median(ours['load']):.2f}x"
          f"   peak RSS: {median(st['rss']) / median(ours['rss']):.2f}x")
    fwd = results[("pretrained", True)]
    print(f"from_pretrained + one forward, peak RSS / file size: {median(fwd['rss']) / size_mb:.2f} "
          f"(plain + forward: {median(results[('plain', True)]['rss']) / size_mb:.2f})")


def safetensors_copy(path: Path) -> Path:
    """The benchmark checkpoint's tensors as a .safetensors file beside it (written once, atomically)."""
    out = path.with_suffix(".safetensors")
    if out.exists():
        return out
    import torch
    from safetensors.torch import save_file

    tmp = out.with_suffix(".tmp")
    save_file(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"], tmp)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    main()
