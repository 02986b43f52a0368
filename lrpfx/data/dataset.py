"""Explaining whole data sets: relevance shards on disk, resumable and distributed, read back lazily.

Layout of an output folder::

    out_dir/manifest.json             run description and, once complete, every shard with its sha256
    out_dir/shard-00000.safetensors   samples [0, shard_size)
    out_dir/shard-00001.safetensors   samples [shard_size, 2 * shard_size)
    ...

Shards are defined over the *global* sample index space in fixed chunks of ``shard_size`` samples, and a shard
is always explained in the same batches (``batch_size`` chunks of that shard, the last possibly shorter). Shard
``k`` therefore holds the same numbers whether one process wrote it or rank ``k % world_size`` of a ``torchrun``
job did: ranks take shards round-robin (DistributedSampler's interleaving at shard granularity, without its
padding duplicates), so the slices are disjoint, deterministic and cover the data set exactly once.

A shard holds ``relevance`` (in the ``store`` dtype), ``index`` (dataset indices, int64), ``target`` (the class
explained, int64), ``output`` (the model's output, float32, float64 for ``store="float64"``) and ``label`` when
the data set yields ``(input, label)`` pairs. Its safetensors metadata carries the run fingerprint and a sha256
of its tensor contents, so a shard verifies itself: resuming keeps shards that verify and redoes the others.
Shards are written under a temporary name and renamed into place, so a crash never leaves a file at a shard's
name that is not a complete shard; ``manifest.json`` is written the same way.
"""
from __future__ import annotations

import bisect
import datetime
import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import InputError, LrpfxError, TargetError
from ..progress import Progress, model_device
from ..version import __version__

FORMAT = "lrpfx-explanations/1"
SHARD_FORMAT = "lrpfx-shard/1"
MANIFEST = "manifest.json"
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
DEFAULT_SHARD_SAMPLES = 512
# the run-description keys that must agree before an existing folder is resumed
RUN_KEYS = ("model", "rule", "target", "store", "dataset", "shard_size")


class DatasetError(LrpfxError, ValueError):
    """An output folder cannot be used for this run (it holds another run), or its contents are unreadable."""


class ShardError(DatasetError):
    """A shard is missing or does not match its checksum: it was corrupted or truncated after it was written."""


# ---- the shard plan ----------------------------------------------------------------------------------------
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


# ---- hashing and describing the run ------------------------------------------------------------------------
def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def tensors_sha256(tensors: Dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in name order (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _update_tensor(h, name, tensors[name])
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the model's state dict (parameters and buffers): the same structure with other weights is
    another model."""
    return tensors_sha256({k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)})


def _value_text(value: Any) -> str:
    """A deterministic description of a rule or composite field (no memory addresses, tensors by hash)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{tensors_sha256({'t': value})[:12]}"
    if hasattr(value, "describe") and callable(value.describe):
        text = value.describe()
        patterns = getattr(value, "patterns", None)
        inner = getattr(patterns, "patterns", None)
        if isinstance(inner, dict):  # fitted patterns: their values decide the explanation
            text += f"[patterns {tensors_sha256(inner)[:12]}]"
        return text
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_value_text(v) for v in value) + ")"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def describe_composite(composite) -> str:
    """The composite as text: every field, rules with their parameters (stable across processes)."""
    fields_ = getattr(composite, "__dataclass_fields__", None)
    if fields_ is None:
        return _value_text(composite)
    return ", ".join(f"{name}={_value_text(getattr(composite, name))}" for name in fields_)


def describe_target(target) -> str:
    if target is None:
        return "argmax"
    if isinstance(target, str):
        if target != "label":
            raise TargetError(f"target must be None, an int, 'label', a sequence per sample or a callable, got "
                              f"{target!r}")
        return target
    if isinstance(target, bool):
        raise TargetError("target must be None, an int, 'label', a sequence per sample or a callable, not a bool")
    if isinstance(target, int):
        return f"class {target}"
    if callable(target):
        return f"callable {_value_text(target)}"
    t = torch.as_tensor(target)
    return f"per-sample {tensors_sha256({'target': t})[:16]}"


def describe_run(model: nn.Module, composite, target, store: str, length: int, shard_size: int,
                 dataset_class: str) -> Dict[str, Any]:
    from ..patterns import structure_hash

    return {
        "model": {"class": type(model).__name__, "structure": structure_hash(model),
                  "weights_sha256": weights_sha256(model)},
        "rule": {"label": getattr(composite, "label", str(composite)), "description": describe_composite(composite)},
        "target": describe_target(target),
        "store": store,
        "dataset": {"class": dataset_class, "length": length},
        "shard_size": shard_size,
    }


def fingerprint(run: Dict[str, Any]) -> str:
    """A short hash of the parts of a run that must agree for shards to be reused."""
    core = {k: run[k] for k in RUN_KEYS}
    core["dataset"] = {"length": run["dataset"]["length"]}  # a renamed dataset class is the same data
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def run_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable differences between two run descriptions (empty when shards can be reused)."""
    out = []
    om, nm = old.get("model", {}), new["model"]
    if om.get("structure") != nm["structure"]:
        out.append(f"a different model ({om.get('class')} {om.get('structure')}, this is {nm['class']} "
                   f"{nm['structure']})")
    elif om.get("weights_sha256") != nm["weights_sha256"]:
        out.append("the same model structure with different weights")
    orule, nrule = old.get("rule", {}), new["rule"]
    if orule.get("description") != nrule["description"]:
        out.append(f"a different rule ({orule.get('label')!r}, this is {nrule['label']!r})")
    for key, what in (("target", "target"), ("store", "store dtype"), ("shard_size", "shard size")):
        if old.get(key) != new[key]:
            out.append(f"a different {what} ({old.get(key)!r}, this is {new[key]!r})")
    if old.get("dataset", {}).get("length") != new["dataset"]["length"]:
        out.append(f"a data set of another length ({old.get('dataset', {}).get('length')}, this has "
                   f"{new['dataset']['length']})")
    return out


# ---- file I/O ----------------------------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and a rename: ``path`` is the old or the new file,
    never half of one. (No fsync: a shard that lost its data in a power cut fails verification and is redone.)"""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _file_metadata(raw: bytes) -> Dict[str, Any]:
    """lrpfx's metadata in a safetensors file (8-byte little-endian header length, then the JSON header)."""
    if len(raw) < 8:
        raise ShardError("file too short for a safetensors header")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ShardError("truncated safetensors header")
    try:
        header = json.loads(raw[8:8 + n])
        return json.loads((header.get("__metadata__") or {}).get("lrpfx", "{}"))
    except (ValueError, AttributeError) as exc:
        raise ShardError(f"unreadable safetensors header ({exc})") from None


def write_shard(out_dir: Path, shard: Shard, tensors: Dict[str, torch.Tensor], run_fingerprint: str) -> Dict:
    """Write one shard atomically; returns its manifest entry (file, range, count, sha256 of the file)."""
    from safetensors.torch import save

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"format": SHARD_FORMAT, "run": run_fingerprint, "shard": shard.index, "start": shard.start,
            "stop": shard.stop, "content_sha256": tensors_sha256(tensors)}
    # one metadata key holding sorted JSON: safetensors writes several keys in a per-process random order, and
    # shards must be byte-identical whichever process wrote them
    data = save(tensors, metadata={"lrpfx": json.dumps(meta, sort_keys=True)})
    _atomic_write(out_dir / shard.name, data)
    return _entry(shard, data)


def _entry(shard: Shard, raw: bytes) -> Dict:
    return {"index": shard.index, "file": shard.name, "start": shard.start, "stop": shard.stop,
            "count": shard.stop - shard.start, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def read_shard(path: Path, expected_sha256: Optional[str] = None
               ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], bytes]:
    """Read and check a shard: against ``expected_sha256`` (the manifest's) when given, and always against the
    content hash in its own metadata. Raises :class:`ShardError` when it does not verify."""
    from safetensors.torch import load

    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ShardError(f"shard {path} is missing") from None
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ShardError(f"shard {path} does not match the checksum in the manifest (corrupted or replaced)")
    meta = _file_metadata(raw)
    if meta.get("format") != SHARD_FORMAT:
        raise ShardError(f"{path} is not an lrpfx shard")
    try:
        tensors = load(raw)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise ShardError(f"shard {path} is unreadable ({' '.join(str(exc).split())})") from None
    if tensors_sha256(tensors) != meta.get("content_sha256"):
        raise ShardError(f"shard {path} does not match its content checksum (corrupted)")
    return tensors, meta, raw


def verified_entry(out_dir: Path, shard: Shard, run_fingerprint: str) -> Optional[Dict]:
    """The manifest entry of an existing shard that verifies and belongs to this run and range; else None."""
    path = out_dir / shard.name
    if not path.exists():
        return None
    try:
        tensors, meta, raw = read_shard(path)
    except ShardError:
        return None
    same = (meta.get("run") == run_fingerprint and meta.get("shard") == shard.index
            and meta.get("start") == shard.start and meta.get("stop") == shard.stop
            and tensors.get("index") is not None and tensors["index"].numel() == shard.stop - shard.start)
    return _entry(shard, raw) if same else None


def read_manifest(out_dir: Path) -> Optional[Dict]:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); pass overwrite=True to replace it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path} is not an lrpfx explanations manifest; choose another out_dir or pass "
                           "overwrite=True to replace it")
    return manifest


def write_manifest(out_dir: Path, manifest: Dict) -> None:
    _atomic_write(Path(out_dir) / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def _our_files(out_dir: Path) -> List[Path]:
    """Files explain_dataset writes (and overwrite=True deletes): shards, temporaries, the manifest."""
    return sorted(p for p in out_dir.iterdir() if p.is_file() and (
        p.name.startswith("shard-") and ".safetensors" in p.name or p.name.startswith(MANIFEST)))


def check_out_dir(out_dir: Path, run: Dict, overwrite: bool) -> Optional[Dict]:
    """Refuse a folder holding another run (unless ``overwrite``); returns the existing manifest of this run."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise DatasetError(f"out_dir {out_dir} exists and is not a folder")
    if overwrite:
        return None
    manifest = read_manifest(out_dir)
    if manifest is None:
        if any(p.name.startswith("shard-") for p in _our_files(out_dir)):
            raise DatasetError(f"{out_dir} holds shard files but no {MANIFEST}: they cannot be matched to this "
                               "run; pass overwrite=True to replace them, or choose another out_dir")
        return None
    diffs = run_differences(manifest.get("run", {}), run)
    if diffs:
        raise DatasetError(f"{out_dir} holds explanations of another run: {'; '.join(diffs)}. Pass overwrite=True "
                           "to replace them, or choose another out_dir")
    return manifest


# ---- data ----------------------------------------------------------------------------------------------------
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


# ---- distributed -------------------------------------------------------------------------------------------
def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per torchrun process), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


class Dist:
    """Rank, world size and the three collectives explain_dataset needs; a no-op for one process."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device, self.owned = dist, device, False
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # launched by torchrun (env:// rendezvous) but nobody initialised the group: do it, undo it after
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
            self.owned = True
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1

    def barrier(self) -> None:
        if self.active:
            if self.dist.get_backend() == "nccl":
                self.dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                self.dist.barrier()

    def gather(self, obj) -> List[Any]:
        """Every rank's ``obj`` (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def all_ok(self, error: Optional[BaseException]) -> Optional[str]:
        """Agree on failure: every rank learns the first rank's error message, so none waits at a barrier."""
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        return next((m for m in messages if m is not None), None)

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


# ---- the run -------------------------------------------------------------------------------------------------
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


def explain_dataset(model: nn.Module, data, rule, out_dir: Union[str, os.PathLike], *,
                    batch_size: Optional[int] = None, target=None, compile: bool = False,
                    shard_size: Optional[int] = None, num_shards: Optional[int] = None, resume: bool = True,
                    overwrite: bool = False, progress: bool = True, store: str = "float16",
                    num_workers: Optional[int] = None, **explainer_options) -> "ExplanationSet":
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
    """
    from ..api import Explainer

    if store not in STORE_DTYPES:
        raise InputError(f"store must be one of {', '.join(STORE_DTYPES)}, got {store!r}")
    out_dir = Path(out_dir)
    source = as_source(data, batch_size, num_workers)
    length = len(source)
    if length == 0:
        raise InputError("the data set is empty: nothing to explain")
    size = resolve_shard_size(length, source.batch_size, shard_size, num_shards)
    shards = plan_shards(length, size)
    explainer = Explainer(model, rule, compile=compile, **explainer_options)
    device = model_device(model)
    describe_target(target)  # validates the kind of target before any work
    if not (target is None or isinstance(target, (str, int)) or callable(target)) and \
            torch.as_tensor(target).shape != (length,):
        raise TargetError(f"a per-sample target needs one class per sample ({length}), got shape "
                          f"{tuple(torch.as_tensor(target).shape)}")
    run = describe_run(model, explainer.composite, target, store, length, size, type(source.dataset).__name__)
    run_fp = fingerprint(run)
    dist = Dist(device)
    stats = RunStats(rank=dist.rank, world_size=dist.world_size)
    try:
        _prepare_out_dir(out_dir, run, overwrite, dist,
                         _manifest(run, run_fp, source, size, shards, dist.world_size, None))
        entries = _explain_shards(explainer, source, assign_shards(shards, dist.rank, dist.world_size), target,
                                  STORE_DTYPES[store], out_dir, run_fp, resume, device, stats,
                                  progress and dist.rank == 0)
        gathered = dist.gather(entries)
        if dist.rank == 0:
            listed = sorted((e for part in gathered for e in part), key=lambda e: e["index"])
            write_manifest(out_dir, _manifest(run, run_fp, source, size, shards, dist.world_size, listed))
        dist.barrier()
    finally:
        dist.close()
    result = load_explanations(out_dir, verify=True)
    result.stats = stats
    return result


def _prepare_out_dir(out_dir: Path, run: Dict, overwrite: bool, dist: Dist, first_manifest: Dict) -> None:
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
        for p in _our_files(out_dir):
            if overwrite or ".tmp-" in p.name:  # temporaries are leftovers of a crashed run
                p.unlink()
        # written before any shard: a crashed run's folder still says which run it belongs to
        write_manifest(out_dir, first_manifest)
    dist.barrier()


def _manifest(run, run_fp, source: DataSource, size, shards, world_size, entries) -> Dict:

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
                    run_fp: str, resume: bool, device, stats: RunStats, show: bool) -> List[Dict]:
    """Explain this rank's shards (keeping verified ones when resuming); returns their manifest entries."""
    start_time = time.perf_counter()
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
            parts.append(_explain_batch(explainer, batch, target, store_dtype, device, shard, parts))
            stats.explain_seconds += time.perf_counter() - t
            n = parts[-1]["index"].shape[0]
            done = sum(p["index"].shape[0] for p in parts)
            if done == shard.stop - shard.start:
                t = time.perf_counter()
                tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
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


def _explain_batch(explainer, batch, target, store_dtype, device, shard: Shard, parts) -> Dict[str, torch.Tensor]:
    offset = shard.start + sum(p["index"].shape[0] for p in parts)
    x, labels = split_batch(batch)
    indices = list(range(offset, offset + x.shape[0]))
    x = x.to(device)
    classes = batch_targets(target, batch, x, labels, indices)
    result = explainer(x, target=classes)
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
    return part


# ---- reading -------------------------------------------------------------------------------------------------
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


__all__ = ["explain_dataset", "load_explanations", "ExplanationSet", "Sample", "RunStats", "DatasetError",
           "ShardError", "plan_shards", "assign_shards", "shard_batches", "local_device", "iter_batches"]
