"""Reading images from a parquet file and from tar shards against the same JPEGs read as files; memory over a long
parquet source.

    .venv/bin/python bench/datasets.py [--images 400] [--batch-size 32] [--workers 0,2] [--rounds 7] [--threads 1]
                                       [--memory-mb 400]

Throughput: the same JPEG bytes (500x375, quality 90, from the sample photographs) as files in a folder, as one
parquet file in the hub's layout (an `image` struct {bytes, path}, 100 rows per row group as `datasets` writes
image data) and as WebDataset tar shards (100 samples each); each source goes through the same `data.image_loader`
(decode, the official evaluation transform at 224, batches of `--batch-size`) with 0 and N worker processes. The
runs alternate file, parquet, tar, then the reverse order, `--rounds` times, so the machine's drift falls on every
source alike; the ratios are medians of each round's ratio against the files measured in the same run. Target:
>= 0.95x. Beside images per second of wall-clock time, images per CPU second (the process and its workers): the
decoding work itself, which the other jobs of a shared machine disturb far less than the clock. The measuring
process runs torch at `--threads` (1: on a small machine shared with other jobs, two intra-op threads make every
small tensor op of the transform wait for a free core, which swamps the decoding being compared; the worker
processes run one thread each, as torch's DataLoader sets them).

Memory: a parquet source `--memory-mb` long (row groups of 100 rows) read from start to end through the loader in
a fresh process, 0 workers; the growth of its resident memory (its own peak, `VmHWM`, minus its RSS after the first
batch) against two row groups' image bytes + 200 MB. (`ru_maxrss` would not do: a child started from this process
keeps this process's high-water mark across the exec.) A tar source of the same rows too. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, REPO, machine_header  # noqa: E402
from features_pipeline import jpeg_folder  # noqa: E402

ROW_GROUP = 100  # rows per row group: what `datasets` writes for image data (and the hub's parquet conversions)


def write_parquet(path: Path, blobs: list[tuple[str, bytes]], labels: list[int]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        return path
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array([{"bytes": b, "path": n} for n, b in blobs], type=image),
                      "label": pa.array(labels, type=pa.int64())})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP, use_dictionary=False)  # repeated images stay whole
    tmp.rename(path)
    return path


def write_tars(folder: Path, blobs: list[tuple[str, bytes]], labels: list[int], per: int = 100) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-len(blobs) // per)
    pattern = str(folder / f"shard-{{0000..{count - 1:04d}}}.tar")
    if (folder / f"shard-{count - 1:04d}.tar").is_file():
        return pattern
    for k in range(count):
        with tarfile.open(folder / f"shard-{k:04d}.tar", "w") as archive:
            for (name, data), label in zip(blobs[k * per:(k + 1) * per], labels[k * per:(k + 1) * per]):
                for ext, body in (("jpg", data), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"{Path(name).stem}.{ext}")
                    info.size = len(body)
                    archive.addfile(info, io.BytesIO(body))
    return pattern


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the loader's workers, joined at its end)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def images_per_s(refs, batch_size: int, workers: int) -> tuple[float, float]:
    """Images per second of wall-clock time, and per CPU second (every process of the run)."""
    from mae.large.data.loader import image_loader

    start, cpu = time.perf_counter(), _cpu_s()
    count = 0
    for batch in image_loader(refs, 224, "eval", batch_size, workers=workers):
        count += len(batch)
    return count / (time.perf_counter() - start), count / (_cpu_s() - cpu)


def throughput(args: argparse.Namespace) -> None:
    import torch

    from mae.large.data.sources import open_source

    torch.set_num_threads(args.threads)
    folder = jpeg_folder(args.images)
    files = sorted(folder.glob("*.jpg"))
    blobs = [(p.name, p.read_bytes()) for p in files]
    labels = [i % 10 for i in range(len(blobs))]
    parquet = write_parquet(CACHE / f"bench_{args.images}.parquet", blobs, labels)
    tars = write_tars(CACHE / f"bench_tars_{args.images}", blobs, labels)
    sources = {"files": list(files), "parquet": open_source([parquet]).paths, "tar": open_source([tars]).paths}
    mb = sum(len(b) for _, b in blobs) / 2**20
    print(f"# {len(blobs)} JPEGs 500x375 q90 ({mb:.1f} MB), batch {args.batch_size}, eval transform at 224; "
          f"parquet: {ROW_GROUP} rows per row group; tars: 100 samples per shard; torch threads {args.threads}")
    for workers in [int(w) for w in args.workers.split(",")]:
        for refs in sources.values():  # warm the page cache, the open files and the workers' imports alike
            images_per_s(refs[: args.batch_size * 2], args.batch_size, workers)
        rates: dict[str, list[float]] = {name: [] for name in sources}
        per_cpu: dict[str, list[float]] = {name: [] for name in sources}
        for r in range(args.rounds):
            order = list(sources) if r % 2 == 0 else list(reversed(sources))
            for name in order:
                wall, cpu = images_per_s(sources[name], args.batch_size, workers)
                rates[name].append(wall)
                per_cpu[name].append(cpu)
        base, base_cpu = statistics.median(rates["files"]), statistics.median(per_cpu["files"])
        for name, values in rates.items():
            ratio = statistics.median(v / f for v, f in zip(values, rates["files"]))
            cpu_ratio = statistics.median(v / f for v, f in zip(per_cpu[name], per_cpu["files"]))
            print(f"workers {workers}: {name:8s} {statistics.median(values):7.1f} images/s (runs: "
                  f"{', '.join(f'{v:.1f}' for v in values)}); x{ratio:.3f} the files' {base:.1f}; per CPU second "
                  f"{statistics.median(per_cpu[name]):.1f}, x{cpu_ratio:.3f} the files' {base_cpu:.1f}")


_CHILD = r"""
import json, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
sys.path.insert(0, sys.argv[1])
from mae.large.data.sources import open_source
from mae.large.data.loader import image_loader

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

source = open_source([sys.argv[2]])
loader = iter(image_loader(source.paths, 224, "eval", 32, workers=0))
first = next(loader)  # the imports, the first row group and Pillow's buffers are the baseline's
before = rss_mb()
count = len(first)
for batch in loader:
    count += len(batch)
with open("/proc/self/status") as f:  # this process's own high-water mark (ru_maxrss keeps the forking parent's)
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
print(json.dumps({"images": count, "before_mb": before, "peak_mb": peak}))
"""


def memory(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq

    folder = jpeg_folder(args.images)
    one = [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.jpg"))]
    per_image = statistics.mean(len(b) for _, b in one)
    rows = int(args.memory_mb * 2**20 / per_image) // ROW_GROUP * ROW_GROUP
    blobs = [(f"{i:06d}_{one[i % len(one)][0]}", one[i % len(one)][1]) for i in range(rows)]
    labels = [i % 10 for i in range(rows)]
    parquet = write_parquet(CACHE / f"bench_memory_{rows}.parquet", blobs, labels)
    tars = write_tars(CACHE / f"bench_memory_tars_{rows}", blobs, labels, per=1000)
    meta = pq.ParquetFile(parquet).metadata
    groups = meta.num_row_groups
    group_mb = max(sum(len(b) for _, b in blobs[g * ROW_GROUP:(g + 1) * ROW_GROUP]) for g in range(groups)) / 2**20
    bound = 2 * group_mb + 200
    print(f"# memory: {rows} rows ({sum(len(b) for _, b in blobs) / 2**20:.0f} MB of JPEG bytes), {groups} row groups "
          f"of {ROW_GROUP} (largest {group_mb:.1f} MB); bound: 2 row groups + 200 MB = {bound:.0f} MB")
    for name, given in (("parquet", parquet), ("tar", tars)):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(given), str(args.threads)],
                              capture_output=True, text=True, check=True)
        got = json.loads(done.stdout.strip().splitlines()[-1])
        growth = got["peak_mb"] - got["before_mb"]
        print(f"memory {name:8s}: {got['images']} images, RSS {got['before_mb']:.0f} MB before the loop, peak "
              f"{got['peak_mb']:.0f} MB: growth {growth:.0f} MB ({'under' if growth < bound else 'OVER'} the "
              f"{bound:.0f} MB bound)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default=f"0,{os.cpu_count() or 2}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-mb", type=float, default=400.0)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(machine_header())
    throughput(args)
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
