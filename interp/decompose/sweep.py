"""An L0 sweep: several SAEs of one method trained together from one read of the store.

Every member sees the same global batches (one `GlobalBatches` stream: each batch is read from the store once
and handed to every member in turn), so a sweep gives the same SAEs as fitting them one at a time with the same
seed, at one read of the store per step instead of one per SAE. The members may differ in any setting that does
not change the batches (k, n_features, lr, l1_coeff, ...); batch_size, seed and n_steps must agree. Each member
keeps its own checkpoint folder, so an interrupted sweep resumes each where it stopped.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from interp.core import distributed
from interp.decompose.base import DecomposerError, method_class, write_source
from interp.decompose.batches import GlobalBatches
from interp.decompose.fitting import CHECKPOINT, _finished_fit, fit_fingerprint
from interp.decompose.formats.saelens import record_saelens_source
from interp.decompose.train import _check_data, advance, finish_run, start_run
from interp.models.sites import parse_site
from interp.store import ActivationStore

SHARED = ("batch_size", "seed", "n_steps")


def sweep_configs(config: Any, field: str, values: list[Any]) -> list[Any]:
    """`config` with `field` set to each of `values`; refuses a field the batches depend on."""
    if field not in {f.name for f in dataclasses.fields(config)}:
        raise ValueError(f"--sweep {field}: no such setting of {type(config).__name__}")
    if field in SHARED:
        raise ValueError(f"--sweep {field}: the members of a sweep share the batches, so {', '.join(SHARED)} "
                         "cannot vary; fit those one at a time")  # fmt: skip
    return [dataclasses.replace(config, **{field: v}) for v in values]


def train_together(decomposers: list, data, checkpoint_dirs: list, progress: bool = True) -> None:
    """Train every decomposer in place on one stream of batches (module docstring)."""
    cfgs = [d.config for d in decomposers]
    for name in SHARED:
        if len({getattr(c, name) for c in cfgs}) > 1:
            raise DecomposerError(f"the members of a sweep must share {name}")
    cfg = cfgs[0]
    d_in = _check_data(data, cfg.batch_size)
    batches = GlobalBatches(data, cfg.batch_size, cfg.seed)
    runs = [
        start_run(d, data, batches, d_in, ckpt, progress)
        for d, ckpt in zip(decomposers, checkpoint_dirs, strict=True)
    ]
    for step in range(min(r.step for r in runs), cfg.n_steps):
        batch = batches.batch(step)  # read once, used by every member still at this step
        for run in runs:
            if run.step == step:
                advance(run, batch)
    for run in runs:
        finish_run(run)


def fit_sweep(store_path: Path, method: str, configs: list, outs: list[Path], progress: bool = True, log=print,
              overwrite: bool = False, keep_checkpoint: bool = False) -> list:  # fmt: skip
    """Fit one decomposer per config into its folder of `outs` (finished ones are kept); returns the new ones."""
    store = ActivationStore.open(store_path)
    todo = [(c, Path(o)) for c, o in zip(configs, outs, strict=True)
            if not _finished_fit(Path(o), c, fit_fingerprint(method, c, store), overwrite)]  # fmt: skip
    if not todo:
        log("every fit of this sweep is already done")
        return []
    log(
        f"fitting {len(todo)} {method} decomposers together on {store} -> {', '.join(str(o) for _, o in todo)}"
    )
    decomposers = [method_class(method)(c) for c, _ in todo]
    train_together(decomposers, store, [o / CHECKPOINT for _, o in todo], progress)
    if distributed.rank() == 0:
        for decomposer, (config, out) in zip(decomposers, todo, strict=True):
            decomposer.save(out)
            record_saelens_source(out, store.manifest.model, parse_site(store.site).tl_hook)
            write_source(out, store, fit_fingerprint(method, config, store))
            if not keep_checkpoint:
                shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    distributed.barrier()
    return decomposers
