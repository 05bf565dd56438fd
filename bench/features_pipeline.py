"""End-to-end `extract_features` (decode, resize, forward) against the forward alone, by worker count.

    .venv/bin/python bench/features_pipeline.py [--images 48] [--batch-size 16] [--workers 0,1,2] [--device auto]

The images are realistic JPEGs (500x375, quality 90, made from the sample photographs). The model is the ViT-L
encoder (seeded random init: timings do not depend on the values) with the probe's cls pooling, evaluation
crop. "forward only" runs the same batches, already decoded, through the same model: the ceiling the
pipeline can reach. Target on a GPU: end-to-end >= 0.8x forward-only. On a 2-core CPU the forward is the
bottleneck by far, so the ratio says how much decoding costs beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, machine_header, sample_photographs  # noqa: E402


def jpeg_folder(count: int) -> Path:
    from PIL import Image

    folder = CACHE / f"jpeg500x375_{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in sample_photographs()]
    for i in range(count):
        img = sources[i % len(sources)]
        w, h = img.size
        box = ((i * 13) % max(1, w // 4), (i * 7) % max(1, h // 4))
        crop = img.crop((box[0], box[1], box[0] + w * 3 // 4, box[1] + h * 3 // 4))
        crop.resize((500, 375), Image.Resampling.BICUBIC).save(folder / f"img_{i:04d}.jpg", quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default=f"0,1,2,{min((os.cpu_count() or 2) - 1, 8)}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import torch

    from mae.large import VisionTransformer
    from mae.large.data.images import load_image
    from mae.large.evaluate.features import classifier_for_pool, extract_features
    from mae.large.utils.device import resolve_device

    print(machine_header())
    device = resolve_device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model = VisionTransformer(classifier_for_pool("cls")).to(device).eval()
    paths = sorted(jpeg_folder(args.images).glob("*.jpg"))
    decoded = torch.stack([load_image(p, size=224, crop="eval") for p in paths])

    def forward_only() -> float:
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            for i in range(0, len(decoded), args.batch_size):
                model.forward_features(decoded[i:i + args.batch_size].to(device, non_blocking=True)).float().cpu()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(decoded) / (time.perf_counter() - start)

    def end_to_end(workers: int) -> tuple[float, float]:
        """(images/s over the whole run, images/s after the first batch): the second leaves out the start-up, the
        worker processes' start and each one's first batch, which a data set of thousands of batches amortises."""
        start = time.perf_counter()
        first = None
        rows = 0
        for _ in extract_features(model, paths, batch_size=args.batch_size, dtype=dtype, device=device,
                                  workers=workers):
            rows += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        assert rows == len(paths) and first is not None
        return len(paths) / (end - start), (len(paths) - args.batch_size) / (end - first)

    forward_only()  # warm-up
    base = forward_only()
    print(f"{len(paths)} JPEGs 500x375, batch {args.batch_size}, {device.type}, {args.dtype}")
    print(f"forward only: {base:.2f} images/s")
    for workers in sorted({int(w) for w in args.workers.split(",")}):
        rate, steady = end_to_end(workers)
        print(f"end to end, {workers} workers: {rate:.2f} images/s = {rate / base:.2f}x forward only; after the first "
              f"batch {steady:.2f} images/s = {steady / base:.2f}x")


if __name__ == "__main__":
    main()
