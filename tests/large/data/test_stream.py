"""`data.stream`: the training order of tar shards: whole shards per reader, a bounded shuffle buffer keyed by
(seed, epoch), the same number of steps on every rank."""

from __future__ import annotations

import pytest

from mae.large.data.stream import deal, reader_order, stream_batches, stream_steps

SHARDS = [(0, 40), (40, 75), (75, 120), (120, 150), (150, 200), (200, 230)]  # six shards of 30-50 samples


def _reader_of(index: int, dealt: list[list[tuple[int, int]]]) -> int:
    return next(r for r, pieces in enumerate(dealt) if any(a <= index < b for a, b in pieces))


@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 0), (2, 1), (3, 2)])
def test_every_rank_takes_the_same_steps_of_distinct_samples(world: int, workers: int) -> None:
    steps = stream_steps(SHARDS, 8, world, workers)
    plans = [stream_batches(SHARDS, 8, epoch=3, seed=5, rank=r, world_size=world, workers=workers) for r in range(world)]
    assert all(len(plan) == steps for plan in plans) and steps > 0
    keys = [key for plan in plans for batch in plan for key in batch]
    assert all(len(batch) == 8 for plan in plans for batch in plan)
    assert len(set(keys)) == len(keys) and all(epoch == 3 for epoch, _ in keys)  # no sample twice in an epoch
    assert len(keys) > 0.6 * 230  # what is dropped: each reader's last partial batch, the ranks' surplus


def test_a_reader_reads_whole_shards_and_a_worker_gets_its_own_reader() -> None:
    world, workers = 2, 2
    dealt = deal(SHARDS, world * workers)
    assert sorted(p for pieces in dealt for p in pieces) == SHARDS  # six shards, four readers: none split
    for rank in range(world):
        plan = stream_batches(SHARDS, 5, epoch=0, seed=1, rank=rank, world_size=world, workers=workers)
        for i, batch in enumerate(plan[:4]):  # while every reader has batches, batch i is reader i mod workers's
            assert {_reader_of(k, dealt) for _, k in batch} == {rank * workers + i % workers}


def test_the_shuffle_buffer_bounds_how_far_ahead_a_sample_comes() -> None:
    order = reader_order([(0, 300)], buffer=16, seed=0, epoch=0, reader=0)
    assert sorted(order) == list(range(300))
    # At output position t the reader has read t + 16 samples: nothing later can come out.
    assert all(index < t + 16 for t, index in enumerate(order))
    assert max(t - order.index(t) for t in range(300) if t - 16 >= 0) > 0  # and it does shuffle
    assert order != sorted(order)


def test_the_order_is_keyed_by_seed_and_epoch() -> None:
    def plan(seed: int, epoch: int) -> list:
        return stream_batches(SHARDS, 8, epoch=epoch, seed=seed, rank=0, world_size=2, workers=1, buffer=20)

    assert plan(0, 1) == plan(0, 1)  # a resumed run computes the same batches, then skips those done
    assert [[i for _, i in b] for b in plan(0, 1)] != [[i for _, i in b] for b in plan(0, 2)]
    assert plan(0, 1) != plan(1, 1)
    # The readers keep their shards across epochs (only the order within them changes).
    dealt = deal(SHARDS, 2)
    for epoch in (1, 2):
        assert {_reader_of(i, dealt) for b in plan(0, epoch) for _, i in b} == {0}


def test_fewer_shards_than_readers_are_split_by_member() -> None:
    dealt = deal([(0, 10), (10, 30)], 5)
    assert all(pieces for pieces in dealt)  # every reader has a piece
    assert sorted(i for pieces in dealt for a, b in pieces for i in range(a, b)) == list(range(30))
    for pieces in dealt:  # a piece never crosses a shard
        assert all(b <= 10 or a >= 10 for a, b in pieces)
    assert stream_steps([(0, 10), (10, 30)], 2, 5, 0) >= 1


def test_balanced_dealing() -> None:
    loads = [sum(b - a for a, b in pieces) for pieces in deal(SHARDS, 3)]
    assert max(loads) - min(loads) <= max(b - a for a, b in SHARDS)
    assert sum(loads) == 230
