"""Decomposer-independent references of the store bench, computed once and kept on disk.

The clean and zero-ablated forward passes of the spliced metrics, the model's activations of the probing texts
and the first-letter probes are the same for every decomposer of a site. `cached(folder, kind, key, compute)`
keeps what `compute()` returns (a dict of tensors) in `folder/<kind>-<hash of key>/` beside the key itself
(key.json) and the seconds it took (seconds.json), so a later bench call with another decomposer reuses it, and
any change of the key (model, site, tokens, settings) lands in another folder: recomputed, never served stale.
Writes are atomic (the tensors first, key.json last: a folder without key.json is unfinished and recomputed).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from interp.core.io import atomic_save_safetensors, atomic_write_json

REFERENCE_VERSION = 1
"""Bumped when what a reference holds changes (old folders are then not read)."""


def tensor_bytes_digest(*tensors: torch.Tensor) -> str:
    """An exact hash (unlike core.fingerprint.tensor_digest's sums) of the tensors' dtypes, shapes and bytes (e.g. the token ids a reference was computed on)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def model_key(model) -> dict:
    """The model a reference was computed with: its name, device and dtype (float sums differ in the last digits
    across devices and dtypes)."""
    return {
        "model": model.info.name,
        "device": str(model.device),
        "dtype": str(next(model.hf.parameters()).dtype),
    }


def _full_key(kind: str, key: dict) -> dict:
    """The key as key.json holds it (JSON round trip: tuples become lists, as read back)."""
    return json.loads(json.dumps({"version": REFERENCE_VERSION, "kind": kind, **key}, sort_keys=True))


def reference_folder(folder: Path, kind: str, key: dict) -> Path:
    """Where the reference of `kind` with `key` lives under `folder`."""
    text = json.dumps(_full_key(kind, key), sort_keys=True)
    return Path(folder) / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cached(folder: Path, kind: str, key: dict, compute: Callable[[], dict[str, torch.Tensor]],
           memo: dict | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """`compute()`'s tensors, read from `folder` when a finished reference with this exact key is there, else
    computed and written there. `memo` (a dict kept by the caller) holds the last reference of each kind in
    memory, so the decomposers of one call do not reread it."""
    where = reference_folder(folder, kind, key)
    if memo is not None and memo.get(kind, (None,))[0] == where:
        return memo[kind][1]
    tensors = _load_or_compute(where, kind, key, compute)
    if memo is not None:
        memo[kind] = (where, tensors)
    return tensors


def _load_or_compute(where: Path, kind: str, key: dict, compute: Callable[[], dict[str, torch.Tensor]]
                     ) -> dict[str, torch.Tensor]:  # fmt: skip
    key_path, data_path = where / "key.json", where / "tensors.safetensors"
    wanted = _full_key(kind, key)
    if key_path.exists() and json.loads(key_path.read_text()) == wanted and data_path.exists():
        return load_file(str(data_path))
    start = time.perf_counter()
    tensors = compute()
    where.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(tensors, data_path)
    atomic_write_json(where / "seconds.json", {"compute_seconds": time.perf_counter() - start})
    atomic_write_json(key_path, wanted)
    return tensors
