"""The interface every decomposer meets, and the file format they share.

A decomposer maps activations `x [n, d_in]` to non-negative codes `[n, n_features]` and back:

    fit(data: ActivationStore | Tensor[n, d_in]) -> self
    encode(x: Tensor[n, d_in]) -> Tensor[n, n_features]      # dense, >= 0
    decode(codes: Tensor[n, n_features]) -> Tensor[n, d_in]
    directions -> Tensor[n_features, d_in]                    # unit feature vectors in activation space
    save(folder) / load(folder)                               # model.safetensors + config.json, no pickle

Each method has a frozen config dataclass; `config.json` holds {"method": name, "config": {...}, **extra}.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from interp.core.io import atomic_save_safetensors, atomic_write_json
from interp.store import ActivationStore

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SOURCE_FILE = "source.json"  # the store a decomposer was fitted on: {"store", "model", "site", "fingerprint"}

# method name -> "module:Class"; imported lazily so a method's dependencies load only when used.
METHODS: dict[str, str] = {
    "snmf": "interp.decompose.snmf.model:SNMF",
    "relu": "interp.decompose.sae.model:SAE",
    "topk": "interp.decompose.sae.model:SAE",
    "batchtopk": "interp.decompose.sae.model:SAE",
    "jumprelu": "interp.decompose.sae.model:SAE",
    "matryoshka": "interp.decompose.sae.model:SAE",
    "mpsae": "interp.decompose.mp_sae:MPSAE",
    "gated": "interp.decompose.sae.gated:GatedSAE",
    "transcoder": "interp.decompose.sae.transcoder:Transcoder",
    "skip_transcoder": "interp.decompose.sae.transcoder:Transcoder",
}

# folder -> decomposer | None for other libraries' folders (SAELens, sparsify, ...); imported lazily, as METHODS.
FOREIGN_READER = "interp.decompose.formats:load_foreign"


class DecomposerError(ValueError):
    """Bad input to a decomposer: wrong shape, NaN, impossible settings."""


@runtime_checkable
class Decomposer(Protocol):
    d_in: int
    n_features: int

    def fit(self, data: ActivationStore | torch.Tensor) -> Decomposer: ...

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor: ...

    @property
    def directions(self) -> torch.Tensor: ...

    def save(self, folder: str | Path) -> None: ...


def method_class(method: str) -> type:
    """The decomposer class registered under `method`."""
    if method not in METHODS:
        raise DecomposerError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    module, name = METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def load_decomposer(folder: str | Path) -> Decomposer:
    """Load any saved decomposer; its config.json says which method it is. A folder of another library (SAELens,
    sparsify, dictionary_learning, Gemma Scope's params.npz) is read directly, as `interp import` would convert it."""
    folder = Path(folder)
    meta = _read_config(folder) if (folder / CONFIG_FILE).is_file() else {}
    if "method" in meta:
        return method_class(meta["method"]).load(folder)
    module, name = FOREIGN_READER.split(":")
    foreign = getattr(importlib.import_module(module), name)(folder)
    if foreign is not None:
        return foreign
    raise DecomposerError(
        f"no decomposer at {folder} (no interp {CONFIG_FILE}, nor a SAELens, sparsify, dictionary_learning or "
        "Gemma Scope dictionary); fit one with `interp fit` or convert one with `interp import`"
    )


def _damaged(path: Path, reason: str) -> DecomposerError:
    return DecomposerError(
        f"the decomposer file {path} is damaged ({reason}); fit the decomposer again into {path.parent} "
        "(interp fit ... --out <that folder>), or copy an intact folder over it"
    )


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"not JSON: {e}") from None
    if not isinstance(meta, dict):
        raise _damaged(path, "not a JSON object")
    return meta


def save_decomposer(
    folder: str | Path, method: str, config: Any, tensors: dict[str, torch.Tensor], extra: dict | None = None
) -> None:
    """Write `model.safetensors` and `config.json` atomically into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / WEIGHTS_FILE
    )
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    atomic_write_json(folder / CONFIG_FILE, {"method": method, "config": cfg, **(extra or {})})


def read_decomposer(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, tensors) of a saved decomposer."""
    folder = Path(folder)
    meta, weights = _read_config(folder), folder / WEIGHTS_FILE
    if not weights.exists():
        raise _damaged(weights, "missing")
    try:
        return meta, load_file(str(weights))
    except (
        SafetensorError,
        ValueError,
        RuntimeError,
        OverflowError,
    ) as e:  # what a torn or overwritten file raises
        raise _damaged(weights, f"not a readable safetensors file: {str(e).splitlines()[0][:200]}") from None


def write_source(folder: str | Path, store: ActivationStore, fingerprint: dict | None = None) -> None:
    """Record in `folder` the store a decomposer was fitted on (path, model, site) and the fit's fingerprint."""
    source = {"store": str(Path(store.path).resolve()), "model": store.manifest.model, "site": store.site}
    if fingerprint is not None:
        source["fingerprint"] = fingerprint
    atomic_write_json(Path(folder) / SOURCE_FILE, source)


def read_source(folder: str | Path) -> dict | None:
    """The `source.json` of a decomposer folder ({"store", "model", "site"}), or None when it has none."""
    path = Path(folder) / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else None
