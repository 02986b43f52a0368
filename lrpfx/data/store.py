"""The output folder on disk: shards and ``manifest.json``, written atomically and read back verified.

Layout of an output folder::

    out_dir/manifest.json             run description and, once complete, every shard with its sha256
    out_dir/shard-00000.safetensors   samples [0, shard_size)
    out_dir/shard-00001.safetensors   samples [shard_size, 2 * shard_size)
    ...

A shard holds ``relevance`` (in the ``store`` dtype), ``index`` (dataset indices, int64), ``target`` (the class
explained, int64), ``output`` (the model's output, float32, float64 for ``store="float64"``) and ``label`` when
the data set yields ``(input, label)`` pairs. Its safetensors metadata carries the run fingerprint and a sha256
of its tensor contents, so a shard verifies itself: resuming keeps shards that verify and redoes the others.
Shards are written under a temporary name and renamed into place, so a crash never leaves a file at a shard's
name that is not a complete shard; ``manifest.json`` is written the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import LrpfxError
from .fingerprint import run_differences, tensors_sha256
from .plan import Shard

FORMAT = "lrpfx-explanations/1"
SHARD_FORMAT = "lrpfx-shard/1"
MANIFEST = "manifest.json"
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


class DatasetError(LrpfxError, ValueError):
    """An output folder cannot be used for this run (it holds another run), or its contents are unreadable."""


class ShardError(DatasetError):
    """A shard is missing or does not match its checksum: it was corrupted or truncated after it was written."""


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


def our_files(out_dir: Path) -> List[Path]:
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
        if any(p.name.startswith("shard-") for p in our_files(out_dir)):
            raise DatasetError(f"{out_dir} holds shard files but no {MANIFEST}: they cannot be matched to this "
                               "run; pass overwrite=True to replace them, or choose another out_dir")
        return None
    diffs = run_differences(manifest.get("run", {}), run)
    if diffs:
        raise DatasetError(f"{out_dir} holds explanations of another run: {'; '.join(diffs)}. Pass overwrite=True "
                           "to replace them, or choose another out_dir")
    return manifest
