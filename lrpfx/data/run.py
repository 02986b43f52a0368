"""Explaining whole data sets: relevance shards on disk, resumable and distributed.

:func:`explain_dataset` cuts the data set into shards (:mod:`.plan`), describes the run and its fingerprint
(:mod:`.fingerprint`), explains this rank's shards and writes them with ``manifest.json`` (:mod:`.store`), and
returns the folder as a lazy :class:`~.reader.ExplanationSet`. :func:`lrpfx.concepts.mine_concepts` runs on the
same machinery (:func:`prepare_out_dir`, :func:`run_manifest`).
"""
from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..api import Explainer
from ..errors import InputError, LrpfxError, TargetError
from ..progress import Progress, model_device
from ..version import __version__
from .distributed import Dist
from .fingerprint import describe_run, describe_target, fingerprint
from .plan import Shard, assign_shards, plan_shards, resolve_shard_size, shard_batches
from .reader import PARAMETERS_PREFIX, ExplanationSet, load_explanations
from .sources import DataSource, as_source, batch_targets, split_batch
from .stats import RunStats
from .store import (FORMAT, STORE_DTYPES, DatasetError, check_out_dir, our_files, verified_entry, write_manifest,
                    write_shard)


def explain_dataset(model: nn.Module, data, rule, out_dir: Union[str, os.PathLike], *,
                    batch_size: Optional[int] = None, target=None, compile: bool = False,
                    shard_size: Optional[int] = None, num_shards: Optional[int] = None, resume: bool = True,
                    overwrite: bool = False, progress: bool = True, store: str = "float16",
                    num_workers: Optional[int] = None, parameters: bool = False,
                    **explainer_options) -> ExplanationSet:
    """Explain every sample of ``data`` with ``rule`` and write relevance shards plus ``manifest.json``.

    ``data`` is a map-style Dataset, a DataLoader (its dataset, collate_fn and workers are used; its sampler is
    not), a tensor ``[N, ...]`` or a tuple of tensors; items are an input or ``(input, label, ...)``.
    ``target`` is None (the argmax), an int, ``"label"`` (the data set's label), a sequence of N class indices,
    or a callable ``f(batch) -> classes``. Shards hold ``shard_size`` samples (default about 512 in whole
    batches; or ``num_shards`` of equal size) and ``store`` is the relevance dtype (float16, bfloat16, float32,
    float64). ``compile`` and other keyword arguments (``patterns=``, ``start=``, ``leaf_modules=``, ...) go to
    :class:`lrpfx.Explainer`. The model is used on its own device; inputs are moved there.

    ``resume=True`` keeps shards that exist, verify and belong to this run, and redoes the others; an out_dir
    holding another run (other model structure or weights, rule, target, store, shard size or data length) is
    refused unless ``overwrite=True``, which deletes its shards first. Under ``torchrun`` (or an initialised
    process group) each rank explains shards ``rank, rank + world_size, ...``; rank 0 writes the manifest after
    a barrier. Returns the lazy :class:`ExplanationSet` of the folder; its ``stats`` say what this process did.

    ``parameters=True`` also sums the relevance of every affine weight and bias (:mod:`lrpfx.parameters`) over
    each shard's samples and stores the sums in the shard; ``ExplanationSet.parameters()`` adds the shards up.
    """
    if store not in STORE_DTYPES:
        raise InputError(f"store must be one of {', '.join(STORE_DTYPES)}, got {store!r}")
    out_dir = Path(out_dir)
    source, length, size, shards = open_source(data, batch_size, num_workers, shard_size, num_shards, "explain")
    explainer = Explainer(model, rule, compile=compile, **explainer_options)
    device = model_device(model)
    describe_target(target)  # validates the kind of target before any work
    if not (target is None or isinstance(target, (str, int)) or callable(target)) and \
            torch.as_tensor(target).shape != (length,):
        raise TargetError(f"a per-sample target needs one class per sample ({length}), got shape "
                          f"{tuple(torch.as_tensor(target).shape)}")
    run = describe_run(model, explainer.composite, target, store, length, size, type(source.dataset).__name__)
    if parameters:  # shards without parameter sums are not this run's
        run["parameters"] = True

    def work(mine, run_fp, stats, rank):
        return _explain_shards(explainer, source, mine, target, STORE_DTYPES[store], out_dir, run_fp, resume,
                               device, stats, progress and rank == 0, parameters)

    stats = sharded_run(run, source, size, shards, out_dir, overwrite, device, work)
    result = load_explanations(out_dir, verify=True)
    result.stats = stats
    return result


def resume_shards(mine: List[Shard], out_dir: Path, run_fp: str, resume: bool,
                  stats: RunStats) -> Tuple[Dict[int, Dict], List[Shard]]:
    """This rank's shards split into those already written and verified for this run (their manifest entries,
    kept when resuming) and those still to do."""
    entries: Dict[int, Dict] = {}
    pending: List[Shard] = []
    t = time.perf_counter()
    for shard in mine:
        entry = verified_entry(out_dir, shard, run_fp) if resume else None
        if entry is not None:
            entries[shard.index] = entry
            stats.shards_skipped += 1
        else:
            stats.shards_redone += (out_dir / shard.name).exists()
            pending.append(shard)
    stats.verify_seconds = time.perf_counter() - t
    return entries, pending


def open_source(data, batch_size, num_workers, shard_size, num_shards, verb: str):
    """The data source of a sharded job, its length, the shard size and the shards (an empty one is an error)."""
    source = as_source(data, batch_size, num_workers)
    length = len(source)
    if length == 0:
        raise InputError(f"the data set is empty: nothing to {verb}")
    size = resolve_shard_size(length, source.batch_size, shard_size, num_shards)
    return source, length, size, plan_shards(length, size)


def sharded_run(run: Dict, source: DataSource, size: int, shards: List[Shard], out_dir: Path, overwrite: bool,
                device, work) -> RunStats:
    """What every sharded job shares: the ranks agree on the folder, the incomplete manifest is written, each
    rank does its shards (``work(mine, run_fp, stats, rank)`` returns their manifest entries), and rank 0 writes
    the complete manifest once all are done. Returns this process's statistics."""
    run_fp = fingerprint(run)
    dist = Dist(device)
    stats = RunStats(rank=dist.rank, world_size=dist.world_size)
    try:
        prepare_out_dir(out_dir, run, overwrite, dist,
                        run_manifest(run, run_fp, source, size, shards, dist.world_size, None))
        entries = work(assign_shards(shards, dist.rank, dist.world_size), run_fp, stats, dist.rank)
        gathered = dist.gather(entries)
        if dist.rank == 0:
            listed = sorted((e for part in gathered for e in part), key=lambda e: e["index"])
            write_manifest(out_dir, run_manifest(run, run_fp, source, size, shards, dist.world_size, listed))
        dist.barrier()
    finally:
        dist.close()
    return stats


def prepare_out_dir(out_dir: Path, run: Dict, overwrite: bool, dist: Dist, first_manifest: Dict) -> None:
    """Check the folder on every rank, then (rank 0) clear it as asked and write the run's incomplete manifest.

    Every rank checks for itself and the ranks agree before anyone writes, so a refusal is raised on every rank
    instead of leaving the others waiting at a barrier."""
    error = None
    try:
        check_out_dir(out_dir, run, overwrite)
    except LrpfxError as exc:
        error = exc
    message = dist.all_ok(error)
    if message is not None:
        raise error if error is not None else DatasetError(message)
    if dist.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in our_files(out_dir):
            if overwrite or ".tmp-" in p.name:  # temporaries are leftovers of a crashed run
                p.unlink()
        # written before any shard: a crashed run's folder still says which run it belongs to
        write_manifest(out_dir, first_manifest)
    dist.barrier()


def run_manifest(run, run_fp, source: DataSource, size, shards, world_size, entries) -> Dict:
    """``manifest.json`` of a run: complete once ``entries`` lists every shard (None: the run has just begun)."""
    return {
        "format": FORMAT,
        "complete": entries is not None and len(entries) == len(shards),
        "run": run,
        "fingerprint": run_fp,
        "lrpfx_version": __version__,
        "torch_version": torch.__version__,
        "batch_size": source.batch_size,
        "shard_size": size,
        "num_shards": len(shards),
        "num_samples": run["dataset"]["length"],
        "world_size": world_size,
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "shards": entries or [],
    }


def _explain_shards(explainer, source: DataSource, mine: List[Shard], target, store_dtype, out_dir: Path,
                    run_fp: str, resume: bool, device, stats: RunStats, show: bool, parameters: bool) -> List[Dict]:
    """Explain this rank's shards (keeping verified ones when resuming); returns their manifest entries."""
    start_time = time.perf_counter()
    entries, pending = resume_shards(mine, out_dir, run_fp, resume, stats)
    bar = Progress(sum(s.stop - s.start for s in pending), f"explaining ({explainer.composite.label})", unit="sample",
                   enabled=show)
    try:
        batches = [b for shard in pending for b in shard_batches(shard, source.batch_size)]
        parts: List[Dict[str, torch.Tensor]] = []
        queue = list(pending)
        loader = iter(source.loader(batches)) if batches else iter(())
        while queue:
            shard = queue[0]
            t = time.perf_counter()
            batch = next(loader)
            stats.load_seconds += time.perf_counter() - t
            t = time.perf_counter()
            parts.append(_explain_batch(explainer, batch, target, store_dtype, device, shard, parts, parameters))
            stats.explain_seconds += time.perf_counter() - t
            n = parts[-1]["index"].shape[0]
            done = sum(p["index"].shape[0] for p in parts)
            if done == shard.stop - shard.start:
                t = time.perf_counter()
                tensors = _shard_tensors(parts)
                entries[shard.index] = write_shard(out_dir, shard, tensors, run_fp)
                stats.write_seconds += time.perf_counter() - t
                stats.shards_written += 1
                stats.samples += done
                parts, queue = [], queue[1:]
            bar.update(n, f"shards {len(entries)}/{len(mine)}")
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - start_time
    return [entries[s.index] for s in mine]


def _shard_tensors(parts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """A shard from its batches: per-sample tensors concatenated, parameter relevance summed."""
    return {k: torch.stack([p[k] for p in parts]).sum(0) if k.startswith(PARAMETERS_PREFIX)
            else torch.cat([p[k] for p in parts]) for k in parts[0]}


def _explain_batch(explainer, batch, target, store_dtype, device, shard: Shard, parts,
                   parameters: bool = False) -> Dict[str, torch.Tensor]:
    offset = shard.start + sum(p["index"].shape[0] for p in parts)
    x, labels = split_batch(batch)
    indices = list(range(offset, offset + x.shape[0]))
    x = x.to(device)
    classes = batch_targets(target, batch, x, labels, indices)
    result = explainer(x, target=classes, parameters=parameters)
    relevance, output = result.relevance, result.output
    if not isinstance(relevance, torch.Tensor):
        raise InputError("explain_dataset explains single-input models: the batch's first item is the input")
    if classes is None:
        classes = output.argmax(-1)
    out_dtype = torch.float64 if store_dtype == torch.float64 else torch.float32
    part = {"index": torch.tensor(indices, dtype=torch.long),
            "relevance": relevance.detach().to("cpu", store_dtype),
            "output": output.detach().to("cpu", out_dtype),
            "target": classes.detach().to("cpu", torch.long)}
    if labels is not None:
        part["label"] = labels.detach().to("cpu", torch.long)
    for name, value in (result.parameters or {}).items():  # sums over the batch, in the outputs' precision
        part[PARAMETERS_PREFIX + name] = value.detach().to("cpu", out_dtype)
    return part
