"""The shard plan: a data set's samples in fixed chunks of ``shard_size`` global indices, and their batches.

Shards are defined over the *global* sample index space, and a shard is always explained in the same batches
(``batch_size`` chunks of that shard, the last possibly shorter). Shard ``k`` therefore holds the same numbers
whether one process wrote it or rank ``k % world_size`` of a ``torchrun`` job did: ranks take shards round-robin
(DistributedSampler's interleaving at shard granularity, without its padding duplicates), so the slices are
disjoint, deterministic and cover the data set exactly once.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

from ..errors import InputError

DEFAULT_SHARD_SAMPLES = 512


class Shard(NamedTuple):
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def plan_shards(length: int, shard_size: int) -> List[Shard]:
    """The shards of a data set of ``length`` samples: fixed chunks of ``shard_size`` global indices."""
    return [Shard(k, start, min(start + shard_size, length))
            for k, start in enumerate(range(0, length, shard_size))]


def assign_shards(shards: Sequence[Shard], rank: int, world_size: int) -> List[Shard]:
    """Rank ``rank``'s shards: every ``world_size``-th, starting at ``rank`` (round-robin, disjoint)."""
    return list(shards[rank::world_size])


def shard_batches(shard: Shard, batch_size: int) -> List[List[int]]:
    """A shard's dataset indices in batches; the same for every world size, so results do not depend on it."""
    return [list(range(s, min(s + batch_size, shard.stop))) for s in range(shard.start, shard.stop, batch_size)]


def resolve_shard_size(length: int, batch_size: int, shard_size: Optional[int], num_shards: Optional[int]) -> int:
    if shard_size is not None and num_shards is not None:
        raise InputError("pass shard_size= or num_shards=, not both")
    if num_shards is not None:
        if num_shards < 1:
            raise InputError(f"num_shards must be >= 1, got {num_shards}")
        return max(1, math.ceil(length / num_shards))
    if shard_size is None:
        # about DEFAULT_SHARD_SAMPLES samples, in whole batches
        return batch_size * max(1, DEFAULT_SHARD_SAMPLES // batch_size)
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    return shard_size
