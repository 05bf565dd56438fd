"""The training order of a stream source (WebDataset tar shards): whole shards per reader, a bounded shuffle buffer.

A map-style source (folder, list, parquet, arrow) trains in `labelled.epoch_batches`'s order: one permutation of
every sample per epoch, the same global batches for any world size. A tar shard is read front to back, so its
order is a stream's:

* **readers**: a run has `world_size x max(1, workers)` of them; rank `r`'s DataLoader worker `w` is reader
  `r * readers_per_rank + w` (the DataLoader hands its batch `i` to worker `i mod workers`). The shards are dealt to
  the readers once for the run, balanced by sample count (largest first, each to the least loaded reader), so
  every reader reads whole shards and the same ones every epoch. With fewer shards than readers, each shard is
  split by member into equal contiguous pieces until every reader has one (stated here rather than refused).
* **each epoch**: a reader takes its pieces in an order drawn from `derive_seed(seed, "stream", epoch, reader)` and
  passes their samples through a shuffle buffer of `buffer` samples (fill it; then each new sample takes the
  place of a uniformly drawn one, which is emitted; at the end the rest are emitted shuffled), with the same
  generator. It emits whole batches (its last partial batch is dropped). A rank takes its readers' batches in turn.
* **steps** per epoch are the same on every rank: the fewest batches any rank's readers hold together
  (`stream_steps`); a rank's batches beyond it are dropped.

What differs from a map-style source, plainly: the order depends on the world size and the number of workers (not
only on the global batch), a batch mixes the samples of one reader's buffer window rather than of the whole data
set, and each epoch drops each reader's last partial batch and the ranks' surplus. What is kept: the order is a pure
function of (seed, epoch, shards, world size, workers, buffer), so a resumed run (the same world size and workers;
the runs check it) continues bit for bit, like a map-style one; augmentation stays keyed by the sample's index.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..errors import invalid_argument
from ..utils.keyed import derive_seed

__all__ = ["SHUFFLE_BUFFER", "readers", "stream_batches", "stream_steps"]

SHUFFLE_BUFFER = 1000  # samples a reader holds for shuffling (their indices; the bytes are read when emitted)

Piece = tuple[int, int]  # [start, end) of the source's sample indices, within one shard


def readers(world_size: int, workers: int) -> int:
    """The readers of a run: one per DataLoader worker (one per rank without workers) on every rank."""
    return world_size * max(1, workers)


def _pieces(shards: Sequence[Piece], count: int) -> list[Piece]:
    """The shards as pieces; with fewer shards than `count` readers, each is split into equal contiguous parts."""
    shards = [s for s in shards if s[1] > s[0]]
    if not shards or len(shards) >= count:
        return shards
    parts = -(-count // len(shards))
    out = []
    for start, end in shards:
        n = end - start
        out += [(start + n * k // parts, start + n * (k + 1) // parts) for k in range(parts)
                if n * (k + 1) // parts > n * k // parts]
    return out


def deal(shards: Sequence[Piece], count: int) -> list[list[Piece]]:
    """The pieces of each of `count` readers: balanced by samples, largest first, each to the least loaded reader
    (ties: the lower reader), each reader's pieces in shard order."""
    pieces = _pieces(shards, count)
    loads, dealt = [0] * count, [[] for _ in range(count)]
    for piece in sorted(pieces, key=lambda p: (-(p[1] - p[0]), p[0])):
        reader = min(range(count), key=lambda r: (loads[r], r))
        dealt[reader].append(piece)
        loads[reader] += piece[1] - piece[0]
    return [sorted(d) for d in dealt]


def reader_order(pieces: Sequence[Piece], buffer: int, seed: int, epoch: int, reader: int) -> list[int]:
    """One reader's samples of `epoch`, in the order its shuffle buffer emits them (module docstring)."""
    rng = random.Random(derive_seed(seed, "stream", epoch, reader))
    order = list(pieces)
    rng.shuffle(order)
    out: list[int] = []
    held: list[int] = []
    for start, end in order:
        for index in range(start, end):
            if len(held) < buffer:
                held.append(index)
                continue
            j = rng.randrange(buffer)
            out.append(held[j])
            held[j] = index
    rng.shuffle(held)
    return out + held


def _check(batch_size: int, world_size: int, workers: int, buffer: int) -> None:
    for name, value, least in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("workers", workers, 0),
                               ("shuffle_buffer", buffer, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise invalid_argument(name, f"{name} must be an integer >= {least}, got {value!r}")


def stream_steps(shards: Sequence[Piece], batch_size: int, world_size: int, workers: int) -> int:
    """Global steps of an epoch: the fewest whole batches any rank's readers hold together."""
    _check(batch_size, world_size, workers, 1)
    per_rank = max(1, workers)
    dealt = deal(shards, readers(world_size, workers))
    sizes = [sum(e - s for s, e in pieces) // batch_size for pieces in dealt]
    return min(sum(sizes[r * per_rank:(r + 1) * per_rank]) for r in range(world_size))


def stream_batches(shards: Sequence[Piece], batch_size: int, *, epoch: int, seed: int, rank: int = 0,
                   world_size: int = 1, workers: int = 0, buffer: int = SHUFFLE_BUFFER) -> list[list[tuple[int, int]]]:
    """Rank `rank`'s batches of `epoch` as `(epoch, index)` keys (as `labelled.epoch_batches` gives them): its readers'
    whole batches taken in turn, `stream_steps` of them.

    Args:
        shards: each shard's [start, end) of the source's sample indices (`Source.pieces`).
        batch_size: samples per batch on each rank.
        epoch, seed: what keys the order.
        rank, world_size: this process among the run's.
        workers: DataLoader workers per rank (0: one reader, the main process).
        buffer: the shuffle buffer, in samples.
    """
    _check(batch_size, world_size, workers, buffer)
    per_rank = max(1, workers)
    dealt = deal(shards, readers(world_size, workers))
    steps = stream_steps(shards, batch_size, world_size, workers)
    lists = []
    for w in range(per_rank):
        reader = rank * per_rank + w
        order = reader_order(dealt[reader], buffer, seed, epoch, reader)
        lists.append([order[b * batch_size:(b + 1) * batch_size] for b in range(len(order) // batch_size)])
    batches: list[list[int]] = []
    taken, w = [0] * per_rank, 0
    while len(batches) < steps:  # in turn, passing over a reader with no batch left
        if taken[w] < len(lists[w]):
            batches.append(lists[w][taken[w]])
            taken[w] += 1
        w = (w + 1) % per_rank
    return [[(epoch, i) for i in batch] for batch in batches]
