"""Forward throughput of MAE ViT-L (mask ratio 0.75) against transformers, the matmul roofline, and the
bfloat16 fast mode's speed and accuracy on real photographs.

    .venv/bin/python bench/throughput.py [--rounds 7] [--batches 1 8]

* fp32: this model and `transformers.ViTMAEForPreTraining` holding the same weights (converted with
  `mae.large.checkpoints.keys.to_huggingface`) and the same masking noise, timed alternately in one process
  under `torch.inference_mode()`; images/s from the median of `--rounds` timed forwards each.
* roofline: FLOPs per image counted from the configuration (`_common.flops_per_image`), against the
  nominal figures (180 GFLOP/s fp32, 410 GFLOP/s bf16) and against matmul rates measured here, now.
* bf16: the same forward under `torch.autocast("cpu", torch.bfloat16)` (what `--dtype bfloat16` and
  `reconstruct_files(dtype=torch.bfloat16)` run), with the cached weight casts of `layers.Linear`,
  and with them disabled (plain autocast, the previous behaviour).
* quality: 32 real photographs (matplotlib's sample photographs, cropped/flipped/resized, see
  `_common.image_folder`) reconstructed in fp32 and bf16 with the same masks; PSNR of the
  reconstruction image in [0, 1] (what the figure shows) and of the raw prediction, and the loss
  difference. The weights are a seeded random init (the released checkpoint is not available
  offline): the reconstructions are not pictures, but the comparison measures what bf16 rounding
  does to this network's numerics, which is what the PSNR target is about.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import flops_per_image, image_folder, machine_header, median, wait_for_quiet  # noqa: E402

NOMINAL_FP32_GFLOPS = 180.0
NOMINAL_BF16_GFLOPS = 410.0


def matmul_rate(dtype, shapes=((4096, 1024, 4096), (400, 1024, 4096), (1576, 512, 2048), (50, 1024, 4096))):
    """Best-of GFLOP/s of torch.mm on this machine for a few shapes (the last ones are MAE's)."""
    import torch

    rates = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        reps = max(3, int(4e10 / (2 * m * k * n)))
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = min(best, (time.perf_counter() - t) / reps)
        rates[(m, k, n)] = 2 * m * k * n / best / 1e9
    return rates


@contextlib.contextmanager
def plain_autocast_linear():
    """Disable `layers.Linear`'s cast cache: every call recasts, as plain autocast does."""
    from mae.large.models.layers import Linear

    original = Linear._cast_weights
    Linear._cast_weights = lambda self, dtype: None
    try:
        yield
    finally:
        Linear._cast_weights = original


def call(name: str, ours, hf, imgs, noise):
    """One forward of the variant `name`."""
    import torch

    if name == "transformers fp32":
        return hf(pixel_values=imgs, noise=noise)
    if name == "ours fp32":
        return ours(imgs, 0.75, noise)
    if name == "ours bf16 (cached casts)":
        with torch.autocast("cpu", torch.bfloat16):
            return ours(imgs, 0.75, noise)
    with plain_autocast_linear(), torch.autocast("cpu", torch.bfloat16):
        return ours(imgs, 0.75, noise)


def psnr(a, b, peak: float) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def quality(model, count: int, batch: int) -> None:
    import torch

    from mae.large.data.images import collect_images, denormalize
    from mae.large.jobs.forward import reconstruct_files

    folder = image_folder(count)
    paths, _ = collect_images([folder])
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        runs[dtype] = list(reconstruct_files(model, paths, batch_size=batch, dtype=dtype))
    p_img, p_raw, p_paste, dloss, rloss, same_mask = [], [], [], [], [], True
    for a, b in zip(runs[torch.float32], runs[torch.bfloat16]):
        same_mask &= torch.equal(a.mask, b.mask)
        img_a = denormalize(model.unpatchify(a.pred[None])[0]).clamp(0, 1)
        img_b = denormalize(model.unpatchify(b.pred[None])[0]).clamp(0, 1)
        p_img.append(psnr(img_b, img_a, 1.0))
        m = model.unpatchify(a.mask[:, None].expand(-1, a.pred.shape[-1])[None])[0]
        orig = denormalize(a.image).clamp(0, 1)
        p_paste.append(psnr(orig * (1 - m) + img_b * m, orig * (1 - m) + img_a * m, 1.0))
        p_raw.append(psnr(b.pred, a.pred, float(a.pred.max() - a.pred.min())))
        dloss.append(abs(b.loss - a.loss))
        rloss.append(abs(b.loss - a.loss) / abs(a.loss))
    print(f"\nbf16 vs fp32 on {len(p_img)} real photographs ({folder}), batch {batch}, same masks: {same_mask}")
    print(f"  PSNR reconstruction image [0,1]:      median {median(p_img):.1f} dB, min {min(p_img):.1f} dB "
          f"(target >= 35 dB: {'met' if min(p_img) >= 35 else 'NOT met'})")
    print(f"  PSNR reconstruction + visible [0,1]:  median {median(p_paste):.1f} dB, min {min(p_paste):.1f} dB")
    print(f"  PSNR raw prediction (peak = range):   median {median(p_raw):.1f} dB, min {min(p_raw):.1f} dB")
    print(f"  |loss bf16 - loss fp32|: median {median(dloss):.2e}, max {max(dloss):.2e} "
          f"(relative: median {median(rloss):.2e}, max {max(rloss):.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--images", type=int, default=32, help="photographs for the bf16 quality check")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = parser.parse_args()

    import torch

    from mae.large import MAEConfig, MaskedAutoencoderViT
    from mae.large.checkpoints.keys import to_huggingface

    print(machine_header())
    config = MAEConfig.vit_large()
    flops = flops_per_image(config, 0.75)
    gflop = flops["total"] / 1e9
    print(f"# FLOPs per image at mask ratio 0.75 (counted from the config): {gflop:.2f} GFLOP "
          f"(encoder {flops['encoder'] / 1e9:.2f} on {1 + int(config.num_patches * 0.25)} tokens, decoder "
          f"{flops['decoder'] / 1e9:.2f} on {1 + config.num_patches} tokens, patch/embed/pred "
          f"{(flops['patch_embed'] + flops['decoder_embed'] + flops['decoder_pred']) / 1e9:.2f}); nominal ~41")

    torch.manual_seed(0)
    ours = MaskedAutoencoderViT(config).eval()
    hf = None
    if not args.no_hf:
        import transformers

        from tests.helpers import hf_config

        hf = transformers.ViTMAEForPreTraining(hf_config(config)).eval()
        missing, unexpected = hf.load_state_dict(to_huggingface(ours.state_dict()), strict=False)
        assert not unexpected and all("pos_embed" in k or "position_embeddings" in k for k in missing), (missing, unexpected)
        print(f"# transformers attention implementation: {hf.config._attn_implementation}")

    wait_for_quiet()
    fp32_rates = matmul_rate(torch.float32)
    bf16_rates = matmul_rate(torch.bfloat16)
    peak32, peak16 = max(fp32_rates.values()), max(bf16_rates.values())
    print("# torch.mm GFLOP/s measured now, (M, K, N): fp32 " +
          ", ".join(f"{s}: {r:.0f}" for s, r in fp32_rates.items()) + "; bf16 " +
          ", ".join(f"{s}: {r:.0f}" for s, r in bf16_rates.items()))

    rows = []
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        imgs = torch.randn(batch, 3, 224, 224, generator=g)
        noise = torch.rand(batch, config.num_patches, generator=g)
        results: dict[str, list[float]] = {}
        with torch.inference_mode():
            out = ours(imgs, 0.75, noise)
            if hf is not None:
                ref = hf(pixel_values=imgs, noise=noise)
                assert torch.equal(ref.mask, out.mask)
                err = float((ref.logits - out.pred).abs().max() / out.pred.abs().max())
                print(f"# batch {batch}: same mask as transformers, max relative difference of pred {err:.1e}")
            names = ["ours fp32", "transformers fp32", "ours bf16 (cached casts)", "ours bf16 plain autocast"]
            if hf is None:
                names.remove("transformers fp32")
            # Alternate the variants round by round so a change in load hits them all alike.
            for name in names:
                for _ in range(2):  # warm-up (and the one-off bf16 weight cast)
                    call(name, ours, hf, imgs, noise)
            for _ in range(args.rounds):
                wait_for_quiet()
                for name in names:
                    t = time.perf_counter()
                    call(name, ours, hf, imgs, noise)
                    results.setdefault(name, []).append(time.perf_counter() - t)
        for name, times in results.items():
            rows.append((batch, name, batch / median(times), times))

    print(f"\n{'batch':>5}  {'variant':<26}{'images/s':>10}{'s/forward (min-max)':>24}{'vs ours fp32':>14}"
          f"{'roofline 180/410':>18}{'vs measured peak':>18}")
    for batch, name, ips, times in rows:
        base = next(r[2] for r in rows if r[0] == batch and r[1] == "ours fp32")
        bf16 = "bf16" in name
        nominal_peak = NOMINAL_BF16_GFLOPS if bf16 else NOMINAL_FP32_GFLOPS
        measured_peak = peak16 if bf16 else peak32
        achieved = gflop * ips
        print(f"{batch:>5}  {name:<26}{ips:>10.2f}{f'{median(times):.3f} ({min(times):.3f}-{max(times):.3f})':>24}"
              f"{ips / base:>13.2f}x{achieved / nominal_peak:>17.0%}{achieved / measured_peak:>17.0%}")
    print(f"\n(roofline = {gflop:.2f} GFLOP x images/s / peak; nominal peaks 180 fp32 / 410 bf16 GFLOP/s; measured peaks "
          f"{peak32:.0f} fp32 / {peak16:.0f} bf16 GFLOP/s, best torch.mm shape above)")
    if hf is not None:
        for batch in args.batches:
            ours_ips = next(r[2] for r in rows if r[0] == batch and r[1] == "ours fp32")
            hf_ips = next(r[2] for r in rows if r[0] == batch and r[1] == "transformers fp32")
            print(f"batch {batch}: ours/transformers fp32 = {ours_ips / hf_ips:.2f}x (target >= 1.0x); "
                  f"roofline fraction {gflop * ours_ips / NOMINAL_FP32_GFLOPS:.0%} of 180 GFLOP/s (target >= 85%), "
                  f"{gflop * ours_ips / peak32:.0%} of the measured {peak32:.0f}")
    for batch in args.batches:
        ours_ips = next(r[2] for r in rows if r[0] == batch and r[1] == "ours fp32")
        bf_ips = next(r[2] for r in rows if r[0] == batch and r[1] == "ours bf16 (cached casts)")
        print(f"batch {batch}: bf16/fp32 = {bf_ips / ours_ips:.2f}x (target >= 2x)")

    if args.images:
        quality(ours, args.images, batch=8)


if __name__ == "__main__":
    main()
