"""Reading an explain_dataset folder back: a lazy, indexable view over its shards, verified as they are read."""
from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .stats import RunStats
from .store import MANIFEST, DatasetError, read_manifest, read_shard

PARAMETERS_PREFIX = "parameters/"  # shard tensors that are sums over the shard (parameters=True), not per sample


class Sample(NamedTuple):
    """One explained sample (or, from a slice or index list, a batch of them stacked)."""

    index: Any
    relevance: torch.Tensor
    output: torch.Tensor
    target: Any
    label: Any = None


class ExplanationSet:
    """A lazy, indexable view over the shards of an explain_dataset folder.

    ``view[i]`` is sample ``i`` of the data set (a :class:`Sample`); a slice, a list or a LongTensor of indices
    gives a stacked :class:`Sample`. Shards are read on first use, checked against the manifest's sha256
    (:class:`ShardError` when they do not match) and a few are kept in memory. ``len(view)`` is the number of
    samples; ``view.shard(k)`` is shard k's tensors; iterating yields samples in index order.
    """

    def __init__(self, out_dir: Union[str, os.PathLike], manifest: Dict, verify: bool = True, cache: int = 2):
        self.out_dir, self.manifest, self.verify = Path(out_dir), manifest, verify
        self.entries = sorted(manifest["shards"], key=lambda e: e["start"])
        self._starts = [e["start"] for e in self.entries]
        self._cache: "OrderedDict[int, Dict[str, torch.Tensor]]" = OrderedDict()
        self._cache_size = max(1, cache)
        self.stats: Optional[RunStats] = None

    def __len__(self) -> int:
        return sum(e["count"] for e in self.entries)

    def __repr__(self) -> str:
        run = self.manifest.get("run", {})
        return (f"ExplanationSet({str(self.out_dir)!r}: {len(self)} samples in {len(self.entries)} shards, rule "
                f"{run.get('rule', {}).get('label')!r}, store {run.get('store')})")

    @property
    def num_shards(self) -> int:
        return len(self.entries)

    def shard(self, k: int) -> Dict[str, torch.Tensor]:
        """The tensors of the k-th shard (in index order), verified on first read."""
        entry = self.entries[k]
        if entry["index"] in self._cache:
            self._cache.move_to_end(entry["index"])
            return self._cache[entry["index"]]
        tensors, _, _ = read_shard(self.out_dir / entry["file"], entry["sha256"] if self.verify else None)
        self._cache[entry["index"]] = tensors
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tensors

    def _locate(self, i: int) -> Tuple[int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        i = i % n
        k = bisect.bisect_right(self._starts, i) - 1
        if k < 0 or i >= self.entries[k]["stop"]:
            raise IndexError(f"sample {i} is in no shard")
        return k, i - self.entries[k]["start"]

    def __getitem__(self, item) -> Sample:
        if isinstance(item, int) and not isinstance(item, bool) or (
                isinstance(item, torch.Tensor) and item.dim() == 0):
            k, j = self._locate(int(item))
            t = self.shard(k)
            label = t["label"][j] if "label" in t else None
            return Sample(int(t["index"][j]), t["relevance"][j], t["output"][j], int(t["target"][j]),
                          None if label is None else int(label))
        if isinstance(item, slice):
            indices = list(range(*item.indices(len(self))))
        elif isinstance(item, (list, tuple, torch.Tensor)):
            indices = [int(i) for i in item]
        else:
            raise TypeError(f"index with an int, a slice, a list or a LongTensor, not {type(item).__name__}")
        return self._stack(indices)

    def _stack(self, indices: Sequence[int]) -> Sample:
        """Rows ``indices`` stacked; each shard involved is read once, whatever the order of the indices."""
        located = [self._locate(i) for i in indices]
        shard_of = torch.tensor([k for k, _ in located], dtype=torch.long)
        within = torch.tensor([j for _, j in located], dtype=torch.long)
        out: Dict[str, torch.Tensor] = {}
        for k in (shard_of.unique().tolist() if located else [0]):
            rows = (shard_of == k).nonzero().squeeze(1)
            for name, value in self.shard(k).items():
                if name.startswith(PARAMETERS_PREFIX):
                    continue
                if name not in out:
                    out[name] = value.new_empty((len(located),) + tuple(value.shape[1:]))
                out[name][rows] = value[within[rows]]
        return Sample(out["index"], out["relevance"], out["output"], out["target"], out.get("label"))

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def batches(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Each shard's tensors in turn (the cheap way through the whole set)."""
        for k in range(len(self.entries)):
            yield self.shard(k)

    def parameters(self) -> Dict[str, torch.Tensor]:
        """``{parameter name: relevance}`` summed over the whole data set (a run with ``parameters=True``), in
        float64: the shards' sums added up."""
        total: Dict[str, torch.Tensor] = {}
        for k in range(len(self.entries)):
            for name, value in self.shard(k).items():
                if name.startswith(PARAMETERS_PREFIX):
                    key = name[len(PARAMETERS_PREFIX):]
                    total[key] = total[key] + value.double() if key in total else value.double()
        if not total:
            raise DatasetError(f"{self.out_dir} holds no parameter relevance: run explain_dataset with "
                               "parameters=True")
        return total

    def verify_all(self) -> None:
        """Read every shard and check it against the manifest (raises :class:`ShardError`)."""
        for entry in self.entries:
            read_shard(self.out_dir / entry["file"], entry["sha256"])


def load_explanations(out_dir: Union[str, os.PathLike], verify: bool = True, cache: int = 2) -> ExplanationSet:
    """The explanations written by :func:`explain_dataset` in ``out_dir`` as a lazy, indexable
    :class:`ExplanationSet`; shards are checked against the manifest's sha256 as they are read (``verify``)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise DatasetError(f"{out_dir} holds no {MANIFEST}: not an explain_dataset output folder")
    if not manifest.get("complete"):
        raise DatasetError(f"the run in {out_dir} is incomplete ({len(manifest.get('shards', []))} of "
                           f"{manifest.get('num_shards')} shards listed): run explain_dataset again with the same "
                           "arguments to finish it")
    return ExplanationSet(out_dir, manifest, verify=verify, cache=cache)
