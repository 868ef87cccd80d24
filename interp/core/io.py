"""Atomic writes: a reader sees the old file or the new one, never half of one (temporary name, fsync, rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text)
    _commit(tmp, path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_bytes(data)
    _commit(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None
) -> int:
    """Save tensors to `path` atomically; returns the file size in bytes."""
    path = Path(path)
    tmp = _temporary(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    _commit(tmp, path)
    return path.stat().st_size


def atomic_torch_save(state: Any, path: str | Path) -> None:
    """`torch.save` atomically (for optimizer state, read back with `torch.load(weights_only=True)`)."""
    path = Path(path)
    tmp = _temporary(path)
    torch.save(state, tmp)
    _commit(tmp, path)
