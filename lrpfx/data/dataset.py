"""The old single-module path of :mod:`lrpfx.data`: the same names, re-exported from the modules that hold them
now (kept while lrpfx.cli imports from here; new code imports from :mod:`lrpfx.data` or its modules)."""
from .distributed import Dist, local_device
from .fingerprint import (RUN_KEYS, describe_composite, describe_run, describe_target, fingerprint, run_differences,
                          tensors_sha256, weights_sha256)
from .plan import (DEFAULT_SHARD_SAMPLES, Shard, assign_shards, plan_shards, resolve_shard_size, shard_batches,
                   shard_name)
from .reader import ExplanationSet, Sample, load_explanations
from .run import explain_dataset
from .sources import DataSource, as_source, batch_targets, iter_batches, split_batch
from .stats import RunStats
from .store import (FORMAT, MANIFEST, SHARD_FORMAT, STORE_DTYPES, DatasetError, ShardError, check_out_dir,
                    read_manifest, read_shard, verified_entry, write_manifest, write_shard)

__all__ = ["explain_dataset", "load_explanations", "ExplanationSet", "Sample", "RunStats", "DatasetError",
           "ShardError", "plan_shards", "assign_shards", "shard_batches", "local_device", "iter_batches", "as_source",
           "Dist", "RUN_KEYS", "describe_composite", "describe_run", "describe_target", "fingerprint",
           "run_differences", "tensors_sha256", "weights_sha256", "DEFAULT_SHARD_SAMPLES", "Shard",
           "resolve_shard_size", "shard_name", "DataSource", "batch_targets", "split_batch", "FORMAT", "MANIFEST",
           "SHARD_FORMAT", "STORE_DTYPES", "check_out_dir", "read_manifest", "read_shard", "verified_entry",
           "write_manifest", "write_shard"]
