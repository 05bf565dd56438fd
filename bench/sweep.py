"""A mask-ratio sweep against the same work done as separate reconstructions, in one process.

    .venv/bin/python bench/sweep.py [--rounds 5] [--ratios 0.25,0.5,0.75,0.9]

separate: for each ratio, `reconstruct_files` of the image at that ratio, then the four-panel figure of that
          reconstruction drawn and saved (four forwards, four figures);
sweep:    `sweep_files` over the ratios (one forward per ratio), then one `sweep_figure` with a row per ratio,
          saved: what `mae-large reconstruct --mask-ratio 0.25,0.5,0.75,0.9` does.

The model is ViT-L from a seeded random init (timings do not depend on the values) on one real photograph.
Rounds alternate between the two; medians and the ratio sweep / separate are printed. Target: <= 1.2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, median, sample_photographs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ratios", default="0.25,0.5,0.75,0.9")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]

    import torch

    from mae.large import mae_vit_large_patch16
    from mae.large.jobs.forward import maskings_for, reconstruct_files, sweep_files
    from mae.large.viz.figures import SweepRow, reconstruction_figure, save_figure, sweep_figure
    from mae.large.viz.panels import make_panels

    print(machine_header())
    torch.manual_seed(0)
    model = mae_vit_large_patch16().eval()
    image = sample_photographs()[0]
    out = Path(tempfile.mkdtemp(prefix="mae-sweep-"))

    def separate() -> None:
        for ratio in ratios:
            item = next(iter(reconstruct_files(model, [image], mask_ratio=ratio, seed=2, overlap=False)))
            panels = make_panels(model, item.image[None], item.pred[None], item.mask[None])[0]
            save_figure(reconstruction_figure(panels, title=image.name, loss=item.loss), out / f"separate_{ratio}.png")

    def sweep() -> None:
        item = next(iter(sweep_files(model, [image], maskings_for(model, ratios=ratios, seeds=[2]), overlap=False)))
        rows = [SweepRow(m.ratio, loss, make_panels(model, item.image[None], p[None], k[None])[0])
                for m, p, k, loss in zip(item.maskings, item.preds, item.masks, item.losses)]
        save_figure(sweep_figure(rows, title=image.name, nested=True), out / "sweep.png")

    separate()  # warm-up: first-call allocations, matplotlib's font cache
    sweep()
    times: dict[str, list[float]] = {"separate": [], "sweep": []}
    for _ in range(args.rounds):
        for name, fn in (("separate", separate), ("sweep", sweep)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    sep, swp = median(times["separate"]), median(times["sweep"])
    print(f"ratios {ratios}, {args.rounds} rounds, ViT-L fp32, 224x224, one photograph")
    print(f"separate (4 forwards + 4 figures): median {sep:.3f} s  (min {min(times['separate']):.3f})")
    print(f"sweep    (4 forwards + 1 figure):  median {swp:.3f} s  (min {min(times['sweep']):.3f})")
    print(f"ratio sweep / separate: {swp / sep:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
