"""Keyed randomness: a draw's seed is a hash of the run's seed and what the draw is for, never a position in a stream.

`derive_seed(seed, *keys)` gives a 63-bit seed (for `torch.manual_seed`, a `torch.Generator`); `keyed_rng(*keys)`
a `random.Random` seeded the same way (for the augmentations, which draw from Python's generator). Fine-tuning
keys every draw by (seed, what, epoch, sample or step, rank), so a resumed run, a run with worker processes and a
run on N processes draw exactly what an uninterrupted single-process run draws. blake2b, not the salted `hash()`:
the same keys give the same stream in any process, worker or machine. Torch-free.
"""

from __future__ import annotations

import hashlib
import random
import struct

from ..errors import invalid_argument


def _digest(keys: tuple[int | str, ...]) -> int:
    # Each key as bytes (an int as 8 little-endian bytes, a string as UTF-8: 17 and "17" differ), a separator after
    # every key but the first (the run's seed), so (3, 17) and (31, 7) differ.
    h = hashlib.blake2b(digest_size=8)
    for i, key in enumerate(keys):
        h.update(key.encode() if isinstance(key, str) else struct.pack("<q", int(key)))
        if i:
            h.update(b"\x00")
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the draw named by `keys` in the run seeded `seed`: independent streams for different keys,
    the same stream for the same keys in any process."""
    return _digest((int(seed), *keys))


def keyed_rng(*keys: int | str) -> random.Random:
    """A generator that is a pure function of `keys` (e.g. `keyed_rng(seed, "augment", epoch, sample_index)` for an
    image, `keyed_rng(seed, "mixup", epoch, step, rank)` for a batch): `random.Random(derive_seed(*keys))`."""
    if not keys or not all(isinstance(k, (int, str)) and not isinstance(k, bool) for k in keys):
        raise invalid_argument("keys", f"keyed_rng takes one or more ints or strings, got {keys!r}")
    return random.Random(_digest(keys))
