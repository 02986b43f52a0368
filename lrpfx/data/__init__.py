"""Explaining whole data sets: relevance shards on disk, resumable and distributed, read back lazily.

:mod:`.run` holds :func:`explain_dataset`, :mod:`.reader` :func:`load_explanations`; the shard plan, the run's
fingerprint, the folder's files, data sources and torchrun support each have a module of their own.
"""
from .distributed import local_device
from .plan import assign_shards, plan_shards, shard_batches
from .reader import ExplanationSet, Sample, load_explanations
from .run import explain_dataset
from .sources import as_source, iter_batches
from .stats import RunStats
from .store import DatasetError, ShardError

__all__ = ["explain_dataset", "load_explanations", "ExplanationSet", "Sample", "RunStats", "DatasetError",
           "ShardError", "plan_shards", "assign_shards", "shard_batches", "local_device", "iter_batches", "as_source"]
