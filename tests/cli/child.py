"""Run `mae-large` in a child process the way the console script does (`cli.app.main`), with the tests'
small architecture, and optionally stop at a chosen point so a test can send a signal there.

    python -m tests.cli.child POINT mae-large-args...

POINT is `none`, or where to write the file `$MAE_TEST_READY` and then wait (60 s at most):
`figure` (inside a figure write: its temporary file exists), `features` (inside the features file write),
`step` (a training run's 5th optimiser update is done: wait there until a signal asks the run to stop), `held`
(the same place, held whatever is asked),
`batch` (the worker thread is computing a batch, between two figures), `shard` (inside the second shard
write of `features --out DIR`), `rss` (no stop: resident memory sampled every 250 shard rows, written to
$MAE_TEST_READY at exit), `stuck-cleanup` (inside a figure
write whose clean-up then hangs, so only a second signal can end the run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _arrive() -> None:
    Path(os.environ["MAE_TEST_READY"]).write_text("ready")
    time.sleep(60)


def main() -> None:
    point, args = sys.argv[1], sys.argv[2:]
    from mae.large import catalog
    from tests.helpers import small_config

    config = small_config()
    name = f"vit_d{config.embed_dim}_depth{config.depth}_heads{config.num_heads}_patch{config.patch_size}"
    sizes = {k: v for k, v in config.to_dict().items() if k not in ("name", "norm_pix_loss")}
    catalog.ARCHITECTURES[name] = catalog.Architecture(name, "the tests' small MAE", sizes)
    catalog.DEFAULT_ARCHITECTURE = name

    if point in ("figure", "stuck-cleanup"):
        from matplotlib.figure import Figure

        savefig = Figure.savefig
        calls = [0]

        def slow_savefig(self, *a, **k):
            savefig(self, *a, **k)
            calls[0] += 1
            if calls[0] == 2:  # the first figure is complete, the second one half-written
                try:
                    _arrive()
                finally:
                    if point == "stuck-cleanup":
                        time.sleep(60)

        Figure.savefig = slow_savefig
    elif point == "features":
        import safetensors.torch

        save_file = safetensors.torch.save_file

        def slow_save(*a, **k):
            save_file(*a, **k)
            _arrive()

        safetensors.torch.save_file = slow_save
    elif point == "shard":  # inside the second shard's write: the first shard is complete, the second a temporary
        import safetensors.torch

        save_file = safetensors.torch.save_file
        saves = [0]

        def slow_shard(*a, **k):
            save_file(*a, **k)
            saves[0] += 1
            if saves[0] == 2:
                _arrive()

        safetensors.torch.save_file = slow_shard
    elif point == "rss":  # sample this process's resident memory every 250 rows; written to $MAE_TEST_READY at exit
        import atexit
        import json

        from mae.large.evaluate import store as feature_store

        add, samples = feature_store.ShardWriter.add, []

        def sampled_add(self, *a, **k):
            add(self, *a, **k)
            if a[0] % 250 == 0:
                with open("/proc/self/statm") as f:
                    samples.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))

        feature_store.ShardWriter.add = sampled_add
        atexit.register(lambda: Path(os.environ["MAE_TEST_READY"]).write_text(json.dumps(samples)))
    elif point == "step":  # after the 5th update: wait (at most 60 s) until a signal asks the run to stop
        import torch

        from mae.large.utils import cancel

        step = torch.optim.AdamW.step
        updates = [0]

        def waiting_step(self, *a, **k):
            result = step(self, *a, **k)
            updates[0] += 1
            if updates[0] == 5:
                Path(os.environ["MAE_TEST_READY"]).write_text("ready")
                waited = time.monotonic()
                while not cancel.requested() and time.monotonic() - waited < 60:
                    time.sleep(0.01)
            return result

        torch.optim.AdamW.step = waiting_step
    elif point == "held":  # after the 5th update: held (60 s at most) whatever is asked, until the process is killed
        import torch

        step = torch.optim.AdamW.step
        updates = [0]

        def held_step(self, *a, **k):
            result = step(self, *a, **k)
            updates[0] += 1
            if updates[0] == 5:
                _arrive()
            return result

        torch.optim.AdamW.step = held_step
    elif point == "batch":
        import mae.large.data.images as image

        load_image = image.load_image
        calls = [0]

        def slow_load(*a, **k):
            calls[0] += 1
            if calls[0] == 3:  # batch size 2: the second batch is being prepared in the worker
                _arrive()
            return load_image(*a, **k)

        image.load_image = slow_load

    sys.argv = ["mae-large", *args]
    from cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
