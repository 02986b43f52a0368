"""``lrpfx explain-dataset``: explain a whole data set into resumable relevance shards (lrpfx.explain_dataset)."""
from __future__ import annotations

import sys

from ..data import explain_dataset
from .arguments import check_rule, device_option, target_option
from .datasets import load_dataset
from .models import load_model


def run_explain_dataset(args) -> int:
    check_rule(args.rule)
    target = target_option(args.target)
    args.device = device_option(args.device)
    loaded = load_model(args.model, args.weights, args.device)
    data = load_dataset(args, loaded)
    result = explain_dataset(loaded.model, data, args.rule, args.out, batch_size=args.batch_size, target=target,
                             compile=args.compile, shard_size=args.shard_size, num_shards=args.num_shards,
                             resume=not args.no_resume, overwrite=args.overwrite,
                             progress=not args.no_progress and sys.stderr.isatty(), store=args.store,
                             num_workers=args.num_workers)
    s = result.stats
    if s.rank != 0:
        return 0
    world = f" (this process, rank 0 of {s.world_size})" if s.world_size > 1 else ""
    print(f"model      {loaded.description}")
    print(f"rule       {args.rule}")
    print(f"explained  {s.samples} samples{world}: {s.shards_written} shards written, {s.shards_skipped} kept "
          f"(verified), {s.shards_redone} redone")
    if s.samples:
        print(f"speed      {s.samples_per_second:.1f} samples/s{world}; writing shards took "
              f"{100 * s.write_overhead:.1f}% of the explain time")
    print(f"wrote      {args.out} ({len(result)} samples in {result.num_shards} shards, {args.store}, "
          f"manifest.json)")
    return 0
