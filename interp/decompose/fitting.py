"""Fit a decomposer on a store into a folder: checkpoints in FOLDER/checkpoint (a rerun resumes), the fitted
decomposer and its source.json written by rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.core import distributed
from interp.core.paths import cache_dir
from interp.decompose.base import method_class, write_source
from interp.store import ActivationStore


def default_fit_dir(store_path: Path, method: str, n_features: int | None) -> Path:
    """cache/decomposers/RUN/SITE/METHOD-kK."""
    run, site = store_path.resolve().parent.name, store_path.resolve().name
    return cache_dir() / "decomposers" / run / site / f"{method}-k{n_features or 'default'}"


def fit_store(store_path: Path, method: str, config: Any, out: Path, progress: bool = True,
              log=print) -> Any:  # fmt: skip
    """Fit `method` with `config` on the store at `store_path`; save it into `out`; return it."""
    store = ActivationStore.open(store_path)
    world = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    log(f"fitting {method} on {store}{world} -> {out}")
    decomposer = method_class(method)(config).fit(store, checkpoint_dir=out / "checkpoint", progress=progress)
    if distributed.rank() == 0:  # every rank holds the same fitted decomposer
        decomposer.save(out)
        write_source(out, store)
    distributed.barrier()
    return decomposer
