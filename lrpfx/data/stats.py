"""What one process did in a data-set run: counts and wall-clock seconds (``ExplanationSet.stats``)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunStats:
    """What one process did in :func:`explain_dataset` (seconds are wall-clock)."""

    rank: int = 0
    world_size: int = 1
    samples: int = 0            # explained in this call
    shards_written: int = 0
    shards_skipped: int = 0     # complete and verified: kept
    shards_redone: int = 0      # present but corrupt, partial or from another run
    seconds: float = 0.0
    load_seconds: float = 0.0   # waiting for the data loader
    explain_seconds: float = 0.0  # explaining, including the copy of the results to the CPU
    write_seconds: float = 0.0  # serialising, hashing, writing and renaming shards
    verify_seconds: float = 0.0  # checking existing shards before resuming

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def write_overhead(self) -> float:
        """Time spent writing shards relative to the time spent explaining."""
        return self.write_seconds / self.explain_seconds if self.explain_seconds else 0.0
