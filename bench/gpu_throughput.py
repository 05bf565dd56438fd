"""Forward throughput on a CUDA GPU: this model against transformers, fp32 and bf16 autocast.

Same weights (converted key for key), same images and masking noise, batch 64 by default. Prints
images/s, the ratio to transformers, and how far the two implementations' predictions differ.

    python bench/gpu_throughput.py --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae.large import mae_vit_large_patch16  # noqa: E402
from mae.large.checkpoints.keys import to_huggingface  # noqa: E402


def timed(fn, iters: int) -> float:
    for _ in range(3):  # warm-up: kernels selected, caches filled
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def _precision(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU")
        return 1
    from transformers import ViTMAEForPreTraining

    from tests.helpers import hf_config

    device = torch.device("cuda")
    torch.manual_seed(0)
    ours = mae_vit_large_patch16().eval()
    hf = ViTMAEForPreTraining(hf_config(ours.config)).eval()
    missing, unexpected = hf.load_state_dict(to_huggingface(ours.state_dict()), strict=False)
    assert not unexpected and all("position_embeddings" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        hf.vit.embeddings.position_embeddings.copy_(ours.pos_embed)
    ours, hf = ours.to(device), hf.to(device)
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
    noise = torch.rand(args.batch, 196, generator=g).to(device)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, {args.iters} timed iterations")
    print(f"{'dtype':<10}{'ours img/s':>12}{'transformers img/s':>20}{'ratio':>8}{'max rel diff pred':>20}")
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        def run_ours(dtype=dtype):
            with torch.inference_mode(), _precision(dtype):
                return ours(imgs, 0.75, noise)

        def run_hf(dtype=dtype):
            with torch.inference_mode(), _precision(dtype):
                return hf(pixel_values=imgs, noise=noise)

        t_ours, t_hf = timed(run_ours, args.iters), timed(run_hf, args.iters)
        a, b = run_ours().pred.float(), run_hf().logits.float()
        diff = ((a - b).abs().max() / b.abs().max()).item()
        print(f"{name:<10}{args.batch / t_ours:>12.1f}{args.batch / t_hf:>20.1f}{t_hf / t_ours:>7.2f}x{diff:>20.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
