"""Concept mining over a data set: relevance maximization and activation maximization (Achtibat et al. 2023).

:func:`mine_concepts` runs on :func:`lrpfx.explain_dataset`'s machinery — the same shard plan, the same
``manifest.json`` with its run fingerprint, atomic safetensors shards with checksums, resume, and ``torchrun``
sharding (shard *k* on rank ``k % WORLD_SIZE``) — but each shard holds, per sample, every concept's relevance
(summed over its extent) and activation (max over its extent) at the chosen layers instead of an input heatmap.
Top-k samples per concept and the per-class statistics are then reduced from the shards, so a resumed or
multi-process run gives the same result as a single one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..api import Explainer
from ..data.fingerprint import describe_run, describe_target
from ..data.plan import shard_batches
from ..data.run import open_source, resume_shards, sharded_run
from ..data.sources import batch_targets, split_batch
from ..data.stats import RunStats
from ..data.store import read_manifest, read_shard, write_shard
from ..errors import InputError, close_names
from ..progress import model_device
from .conditions import Concept
from .relevance import concept_relevance


@dataclass
class ConceptStats:
    """One layer's mining result. ``top_relevance`` / ``top_activation``: ``[C, k]`` sample indices, most
    relevant (most activating) first, with their scores in ``relevance_values`` / ``activation_values``;
    ``class_relevance`` ``[classes, C]``: mean concept relevance per target class; ``class_counts`` ``[classes]``."""

    top_relevance: torch.Tensor
    relevance_values: torch.Tensor
    top_activation: torch.Tensor
    activation_values: torch.Tensor
    class_relevance: torch.Tensor
    class_counts: torch.Tensor


@dataclass
class ConceptMining:
    layers: Dict[str, ConceptStats]
    folder: Path
    stats: Optional[RunStats] = None

    def __getitem__(self, layer: str) -> ConceptStats:
        if layer not in self.layers:
            raise InputError(f"layer '{layer}' was not mined; {close_names(layer, self.layers)}")
        return self.layers[layer]


def mine_concepts(model, data, rule, layers: Sequence[str], out_dir, *, top_k: int = 8,
                  batch_size: Optional[int] = None, target=None, shard_size: Optional[int] = None,
                  num_shards: Optional[int] = None, resume: bool = True, overwrite: bool = False,
                  progress: bool = True, concepts: Optional[Dict[str, Concept]] = None,
                  num_workers: Optional[int] = None, **explainer_options) -> ConceptMining:
    """Per concept of each of ``layers``: the ``top_k`` samples of ``data`` by relevance and by activation, and
    the mean relevance per class. ``target`` as in :func:`lrpfx.explain_dataset` (None: argmax, an int,
    ``"label"``, per-sample classes, a callable). Shards, resume, ``overwrite`` and torchrun behave as there."""
    layers = list(layers)
    if not layers:
        raise InputError("layers must name at least one node to mine")
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive int, got {top_k!r}")
    out_dir = Path(out_dir)
    source, length, size, shards = open_source(data, batch_size, num_workers, shard_size, num_shards, "mine")
    explainer = Explainer(model, rule, **explainer_options)
    device = model_device(model)
    describe_target(target)
    run = describe_run(model, explainer.composite, target, "float32", length, size, type(source.dataset).__name__)
    run["concepts"] = {"layers": layers, "definitions": {k: repr(v) for k, v in sorted((concepts or {}).items())}}

    def work(mine, run_fp, stats, rank):
        return _mine_shards(explainer, source, mine, target, layers, concepts, out_dir, run_fp, resume, device,
                            stats)

    stats = sharded_run(run, source, size, shards, out_dir, overwrite, device, work)
    result = load_mining(out_dir, top_k)
    result.stats = stats
    return result


def _mine_shards(explainer, source, mine, target, layers, concepts, out_dir: Path, run_fp: str, resume: bool,
                 device, stats) -> List[Dict]:
    start = time.perf_counter()
    entries, pending = resume_shards(mine, out_dir, run_fp, resume, stats)
    batches = [(shard, b) for shard in pending for b in shard_batches(shard, source.batch_size)]
    loader = iter(source.loader([b for _, b in batches])) if batches else iter(())
    parts: Dict[int, List[Dict[str, torch.Tensor]]] = {}
    for shard, indices in batches:
        batch = next(loader)
        t = time.perf_counter()
        x, labels = split_batch(batch)
        x = x.to(device)
        classes = batch_targets(target, batch, x, labels, indices)
        cr = concept_relevance(explainer, x, layers, target=classes, concepts=concepts)
        if classes is None:
            classes = cr.explanation.output.argmax(-1)
        part = {"index": torch.tensor(indices, dtype=torch.long), "target": classes.detach().to("cpu", torch.long)}
        if labels is not None:
            part["label"] = labels.detach().to("cpu", torch.long)
        for name in layers:
            part[f"relevance.{name}"] = cr.relevance[name].detach().to("cpu", torch.float32)
            part[f"activation.{name}"] = cr.activation[name].detach().to("cpu", torch.float32)
        stats.explain_seconds += time.perf_counter() - t
        parts.setdefault(shard.index, []).append(part)
        if sum(p["index"].numel() for p in parts[shard.index]) == shard.stop - shard.start:
            t = time.perf_counter()
            done = parts.pop(shard.index)
            tensors = {k: torch.cat([p[k] for p in done]) for k in done[0]}
            entries[shard.index] = write_shard(out_dir, shard, tensors, run_fp)
            stats.write_seconds += time.perf_counter() - t
            stats.shards_written += 1
            stats.samples += shard.stop - shard.start
    stats.seconds = time.perf_counter() - start
    return [entries[s.index] for s in mine]


def load_mining(folder, top_k: int = 8) -> ConceptMining:
    """Reduce a :func:`mine_concepts` folder (every shard checked against the manifest) to per-layer stats."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or "concepts" not in manifest.get("run", {}):
        raise InputError(f"{folder} holds no concept mining run (no manifest with concept layers)")
    if not manifest.get("complete"):
        raise InputError(f"the mining run in {folder} is incomplete: run mine_concepts again to resume it")
    shards = [read_shard(folder / e["file"], e["sha256"])[0] for e in manifest["shards"]]
    table = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
    index, target = table["index"], table["target"]
    classes = int(target.max()) + 1
    counts = torch.bincount(target, minlength=classes)
    layers = {}
    for name in manifest["run"]["concepts"]["layers"]:
        rel, act = table[f"relevance.{name}"], table[f"activation.{name}"]  # [N, C]
        k = min(top_k, rel.shape[0])
        rv, ri = _top_samples(rel, index, k)
        av, ai = _top_samples(act, index, k)
        per_class = torch.zeros(classes, rel.shape[1], dtype=torch.float64).index_add_(0, target, rel.double())
        layers[name] = ConceptStats(ri, rv, ai, av, (per_class / counts.clamp(min=1).unsqueeze(1)).float(), counts)
    return ConceptMining(layers, folder)


def _top_samples(scores: torch.Tensor, index: torch.Tensor, k: int):
    """Per concept (column), the k largest scores and their sample indices; ties broken by sample index so the
    result does not depend on shard order."""
    order = torch.argsort(index)
    scores, index = scores[order], index[order]
    values, rows = torch.sort(scores.t(), dim=1, descending=True, stable=True)
    return values[:, :k].contiguous(), index[rows[:, :k]].contiguous()
