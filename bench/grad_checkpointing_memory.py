"""Peak memory of one ViT-L/16 fine-tuning step with and without gradient checkpointing (CPU).

    python bench/grad_checkpointing_memory.py [--batch 8] [--img 224] [--threads 2]

Each variant runs in a fresh subprocess so that neither inherits the other's allocator high-water
mark; the child reports its own peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`) as one JSON line.
A step is forward, cross-entropy, backward and an AdamW step over the layer-decay groups, i.e. what
the fine-tuning loop does; the model is `vit_large_patch16(num_classes=1000)` at its defaults
(drop_path_rate 0.1). Needs about 10 GB of RAM at batch 8.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(checkpointing: bool, batch: int, img: int, threads: int) -> None:
    import torch
    import torch.nn.functional as F

    from mae.large.models.vit import apply_lr_scale, param_groups_lrd, vit_large_patch16

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = vit_large_patch16(num_classes=1000, img_size=img).train()
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(param_groups_lrd(model, weight_decay=0.05, layer_decay=0.75))
    apply_lr_scale(optimizer, 1e-3)
    imgs = torch.randn(batch, 3, img, img)
    labels = torch.randint(0, 1000, (batch,))
    rss_before = current_rss_mb()

    start = time.perf_counter()
    loss = F.cross_entropy(model(imgs), labels)
    loss.backward()
    # High-water mark of forward + backward, where the saved activations live; AdamW then allocates
    # its two moment buffers (2 x 1.2 GB for ViT-L), which can set a later, checkpointing-independent peak.
    backward_peak_mb = peak_rss_mb()
    backward_s = time.perf_counter() - start
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"checkpointing": checkpointing, "rss_before_step_mb": rss_before,
                      "backward_peak_rss_mb": backward_peak_mb, "peak_rss_mb": peak_rss_mb(),
                      "backward_s": backward_s, "step_s": seconds, "loss": loss.item()}))


def run_child(checkpointing: bool, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "on" if checkpointing else "off",
           "--batch", str(args.batch), "--img", str(args.img), "--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.path.insert(0, str(REPO))
        child(args.child == "on", args.batch, args.img, args.threads)
        return

    results = [run_child(False, args), run_child(True, args)]
    print(f"vit_large_patch16, batch {args.batch}, {args.img}x{args.img}, {args.threads} threads, one AdamW step")
    print("MiB / s            RSS before   fwd+bwd peak   (growth)   step peak   fwd+bwd s   step s")
    for r in results:
        growth = r["backward_peak_rss_mb"] - r["rss_before_step_mb"]
        print(f"checkpointing {'on ' if r['checkpointing'] else 'off'} {r['rss_before_step_mb']:>10.0f} "
              f"{r['backward_peak_rss_mb']:>14.0f} {growth:>10.0f} {r['peak_rss_mb']:>11.0f} "
              f"{r['backward_s']:>11.1f} {r['step_s']:>8.1f}")
    off, on = results
    growth_on, growth_off = (r["backward_peak_rss_mb"] - r["rss_before_step_mb"] for r in (on, off))
    print(f"ratios on/off: fwd+bwd peak {on['backward_peak_rss_mb'] / off['backward_peak_rss_mb']:.2f}, "
          f"fwd+bwd growth {growth_on / growth_off:.2f}, step peak {on['peak_rss_mb'] / off['peak_rss_mb']:.2f}, "
          f"fwd+bwd time {on['backward_s'] / off['backward_s']:.2f}")
    if abs(on["loss"] - off["loss"]) > 1e-4 * abs(off["loss"]):  # same seed, same model: same loss
        print(f"warning: losses differ ({off['loss']} vs {on['loss']})")


if __name__ == "__main__":
    main()
