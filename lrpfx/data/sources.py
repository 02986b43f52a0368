"""Data sources: a Dataset, DataLoader, tensor or tuple of tensors as a map-style data set with its batching,
and the input, labels and explained classes of a collated batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import torch

from ..errors import InputError, TargetError


class _TensorItems(torch.utils.data.Dataset):
    """A tensor ``[N, ...]`` as a data set of its rows."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i]


@dataclass
class DataSource:
    """A map-style data set plus how to batch it (taken from a DataLoader when one is given)."""

    dataset: Any
    batch_size: int
    collate_fn: Optional[Callable] = None
    num_workers: int = 0
    pin_memory: bool = False

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, batches: Sequence[Sequence[int]]):
        """Batches with exactly the given index lists, in order."""
        from torch.utils.data import DataLoader

        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate_fn,
                          num_workers=self.num_workers, pin_memory=self.pin_memory)


def as_source(data, batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> DataSource:
    """A map-style data set from a Dataset (or a list of samples), a DataLoader (its dataset, collate_fn and
    workers; its sampler is ignored: shards are defined over dataset indices), a tensor ``[N, ...]`` or a tuple
    of tensors ``(x, y, ...)``."""
    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    collate, workers, pin = None, 0, False
    if isinstance(data, DataLoader):
        collate, workers, pin = data.collate_fn, data.num_workers, data.pin_memory
        batch_size = batch_size or data.batch_size
        data = data.dataset
    if isinstance(data, torch.Tensor):
        data = _TensorItems(data)
    elif isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)  # (x, y) columns; a list is a data set of samples
    if isinstance(data, IterableDataset) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise InputError(f"explain_dataset needs a map-style data set (len() and indexing), got "
                         f"{type(data).__name__}: shards are defined over sample indices so runs can resume and "
                         "split across processes")
    batch_size = batch_size or 32
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    return DataSource(data, batch_size, collate, workers if num_workers is None else num_workers, pin)


def split_batch(batch) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The model input and the labels (or None) of a collated batch: a tensor, or ``(input, label, ...)``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        if label is not None and (label.dim() != 1 or label.is_floating_point()):
            label = None  # not class labels
        return batch[0], label
    raise InputError(f"a batch must be a tensor or a tuple (input, label, ...) with a tensor input, got "
                     f"{type(batch).__name__}")


def batch_targets(target, batch, x: torch.Tensor, labels: Optional[torch.Tensor], indices: Sequence[int]):
    """The explained classes of one batch as a LongTensor, or None for the argmax (resolved after the call)."""
    if target is None:
        return None
    if isinstance(target, str):
        if target != "label":
            raise TargetError(f"target must be None, an int, 'label', a per-sample sequence or a callable, got "
                              f"{target!r}")
        if labels is None:
            raise TargetError("target='label' needs a data set of (input, label) pairs with integer labels")
        return labels.to(x.device).long()
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    if callable(target):
        return torch.as_tensor(target(batch), device=x.device).long()
    return torch.as_tensor(target)[torch.as_tensor(list(indices))].to(x.device).long()


def iter_batches(data, batch_size: int = 64,
                 limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``(input, labels or None)`` batches, at most ``limit`` samples. A tensor, a tuple of tensors ``(x, y)`` or
    a map-style data set is cut into ``batch_size`` batches; a DataLoader, a list or any other iterable is taken
    as batches already."""
    from torch.utils.data import DataLoader

    map_style = isinstance(data, (torch.Tensor, tuple)) or (
        hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (list, DataLoader)))
    if map_style:
        source = as_source(data, batch_size)
        n = len(source) if limit is None else min(limit, len(source))
        batches = (split_batch(b) for b in source.loader(
            [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]))
    else:
        batches = (split_batch(b) for b in data)
    seen = 0
    for x, labels in batches:
        if limit is not None and seen + x.shape[0] > limit:
            keep = limit - seen
            x, labels = x[:keep], None if labels is None else labels[:keep]
        if x.shape[0] == 0:
            return
        seen += x.shape[0]
        yield x, labels
        if limit is not None and seen >= limit:
            return
