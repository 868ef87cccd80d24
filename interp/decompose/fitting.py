"""Fit a decomposer on a store into a folder: checkpoints in FOLDER/checkpoint (a rerun resumes; removed once the
fit is saved unless kept), the fitted decomposer and its source.json (the store and the fit's fingerprint)
written by rank 0.

A folder that already holds a fitted decomposer is kept: the same settings on the same store return it as it is,
other settings are refused (naming the fields that differ) unless `overwrite`, which starts afresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from interp.core import distributed
from interp.core.fingerprint import check_same, free_fields, make_fingerprint, settings_of
from interp.core.paths import cache_dir
from interp.decompose.base import (
    CONFIG_FILE,
    DecomposerError,
    load_decomposer,
    method_class,
    read_source,
    write_source,
)
from interp.decompose.formats.saelens import record_saelens_source
from interp.models.sites import parse_site
from interp.store import ActivationStore
from interp.store.paired import PairedStore

CHECKPOINT = "checkpoint"
DERIVED = (CHECKPOINT, "index", ".index.partial")  # what --overwrite removes besides the files a fit rewrites


def default_fit_dir(store_path: Path, method: str, n_features: int | None) -> Path:
    """cache/decomposers/MODEL/RUN/SITE/METHOD-kK (MODEL: the store's model, so two models' fits never meet)."""
    run, site = store_path.resolve().parent.name, store_path.resolve().name
    model = Path(ActivationStore.open(store_path).manifest.model).name
    return cache_dir() / "decomposers" / model / run / site / f"{method}-k{n_features or 'default'}"


def fit_fingerprint(method: str, config: Any, store: ActivationStore) -> dict:
    """The settings that change a fit's result, and the store it reads."""
    return make_fingerprint({"method": method, **settings_of(config)}, store.fingerprint())


def _finished_fit(out: Path, config: Any, fingerprint: dict, overwrite: bool) -> bool:
    """True when `out` holds a fit with these settings (to be returned as it is); refuses one with other settings
    unless `overwrite`, which removes what the old fit left (checkpoint, index)."""
    if overwrite:
        if distributed.rank() == 0:
            for name in DERIVED:
                shutil.rmtree(out / name, ignore_errors=True)
        distributed.barrier()
        return False
    if not (out / CONFIG_FILE).exists():
        return False
    saved = (read_source(out) or {}).get("fingerprint")
    if saved is None:  # fitted before fingerprints: compare the settings in its config.json
        meta = json.loads((out / CONFIG_FILE).read_text())
        settings = settings_of(meta.get("config", {}), ignore=free_fields(config))
        saved = {"settings": {"method": meta.get("method"), **settings}, "data": fingerprint["data"]}
    check_same(saved, fingerprint, f"the decomposer in {out}",
               "pass --overwrite to replace it, or fit into another --out folder", DecomposerError)  # fmt: skip
    return True


def fit_store(store_path: Path, method: str, config: Any, out: Path, progress: bool = True, log=print,
              overwrite: bool = False, keep_checkpoint: bool = False) -> Any:  # fmt: skip
    """Fit `method` with `config` on the store at `store_path`; save it into `out`; return it. The checkpoint
    folder is removed once the fit is saved (optimizer state, SNMF's copies of G) unless `keep_checkpoint`."""
    store = ActivationStore.open(store_path)
    if getattr(config, "target", ""):  # a transcoder: rows [x | y] of the input and target stores
        target = ActivationStore.open(config.target)
        store, config = (
            PairedStore(store, target),
            replace(config, d_target=target.d, target_site=target.site),
        )
    fingerprint = fit_fingerprint(method, config, store)
    if _finished_fit(out, config, fingerprint, overwrite):
        log(f"{out} already holds this fit (same settings, same store); pass --overwrite to fit it again")
        return load_decomposer(out)
    world = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    log(f"fitting {method} on {store}{world} -> {out}")
    decomposer = method_class(method)(config).fit(store, checkpoint_dir=out / CHECKPOINT, progress=progress)
    if distributed.rank() == 0:  # every rank holds the same fitted decomposer
        decomposer.save(out)
        record_saelens_source(out, store.manifest.model, parse_site(store.site).tl_hook)
        write_source(out, store, fingerprint)
        if not keep_checkpoint:
            shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    distributed.barrier()
    return decomposer
