"""`interp fit --live`: fit a gradient-based decomposer on activations streamed from a model (no store) into a
folder, resumable like a store-based fit.

The folder's config.json and source.json record `live` (model, corpus, context_len, site, n_tokens, buffer_tokens,
seed); source.json has no `store`, so commands that read rows again (index, evaluate) need --store.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.fingerprint import make_fingerprint, settings_of
from interp.core.io import atomic_write_json
from interp.core.paths import cache_dir
from interp.corpus.contexts import load_contexts
from interp.decompose.base import CONFIG_FILE, SOURCE_FILE, DecomposerError, load_decomposer, method_class
from interp.decompose.fitting import CHECKPOINT, _finished_fit
from interp.decompose.live import LiveBatches
from interp.models.loading import load_model
from interp.models.sites import parse_site


@dataclass(frozen=True)
class LiveSpec:
    """Where live rows come from: `buffer_tokens` rows are shuffled together (rounded to whole contexts)."""

    model: str
    corpus: tuple[str, ...]
    site: str
    n_tokens: int
    buffer_tokens: int = 262_144
    context_len: int = 128
    forward_batch: int = 8


class ProgressBatches(LiveBatches):
    """LiveBatches that advance a tqdm bar over the tokens handed to the trainer."""

    bar: Any = None

    def batch(self, step: int) -> torch.Tensor:
        rows = super().batch(step)
        if self.bar is not None:
            self.bar.n = step * self.batch_size  # a resumed run starts at its checkpoint's step
            self.bar.update(self.batch_size)
        return rows


def check_live_method(method: str) -> None:
    """Refuse methods that need every row at once (SNMF) or a second site (transcoders)."""
    fields = method_class(method).config_class.__dataclass_fields__
    if "n_steps" not in fields:
        raise DecomposerError(
            f"--live trains by gradient steps on streamed rows; {method} needs all rows at once. Capture a store "
            f"first (interp capture --model M --corpus C --sites S --n-tokens N), then interp fit --method "
            f"{method} --store <run folder>/S"
        )
    if "target" in fields:
        raise DecomposerError(
            f"--live streams one site; {method} reads an input and a target site: capture both (interp capture "
            "--sites L.mlp_in,L.mlp_out ...), then interp fit --method transcoder --store .../L.mlp_in --target "
            ".../L.mlp_out"
        )


def default_live_dir(spec: LiveSpec, method: str, n_features: int | None) -> Path:
    """cache/decomposers/MODEL/live-CORPUS/SITE/METHOD-kK."""
    corpus = "+".join(Path(c).stem for c in spec.corpus)
    model = Path(spec.model).name
    return (
        cache_dir()
        / "decomposers"
        / model
        / f"live-{corpus}"
        / spec.site
        / f"{method}-k{n_features or 'default'}"
    )


def live_batches(spec: LiveSpec, config: Any, device: str | None) -> ProgressBatches:
    """Load the model and corpus of `spec`; the live source for `config` (its batch_size and seed)."""
    for flag, value, least in (("--n-tokens", spec.n_tokens, 1), ("--buffer-tokens", spec.buffer_tokens, 1)):
        if value < least:
            raise DecomposerError(f"{flag} must be >= {least}, got {value}")
    model = load_model(spec.model, device=device or "auto")
    parse_site(spec.site, model.info.n_layers)  # an unknown kind or a layer the model lacks: a clear error
    contexts = load_contexts(model.tokenizer, list(spec.corpus), spec.context_len, spec.n_tokens)
    buffer_contexts = max(1, spec.buffer_tokens // max(1, spec.context_len - 1))
    return ProgressBatches(model, contexts, spec.site, spec.n_tokens, config.batch_size, config.seed,
                           buffer_contexts=buffer_contexts, forward_batch=spec.forward_batch)  # fmt: skip


def live_record(spec: LiveSpec, config: Any) -> dict:
    """What config.json and source.json say about the live source."""
    return {"model": spec.model, "corpus": list(spec.corpus), "context_len": spec.context_len, "site": spec.site,
            "n_tokens": spec.n_tokens, "buffer_tokens": spec.buffer_tokens, "seed": config.seed}  # fmt: skip


def fit_live(spec: LiveSpec, method: str, config: Any, out: Path | None, steps_given: bool, progress: bool = True,
             log=print, overwrite: bool = False, keep_checkpoint: bool = False) -> Any:  # fmt: skip
    """Fit `method` on live rows of `spec` into `out`; return it. Without `steps_given`, n_steps is one pass over
    the live tokens (n_tokens // batch_size)."""
    check_live_method(method)
    source = live_batches(spec, config, getattr(config, "device", None))
    available = source.steps_available()
    if not steps_given:
        config = replace(config, n_steps=available)
    elif config.n_steps > available:
        raise DecomposerError(
            f"--n-steps {config.n_steps} x --batch-size {config.batch_size} needs more than the {source.n} live "
            f"tokens; raise --n-tokens to {config.n_steps * config.batch_size} or lower --n-steps to {available}"
        )
    out = out or default_live_dir(spec, method, getattr(config, "n_features", None))
    fingerprint = make_fingerprint({"method": method, **settings_of(config)}, source.fingerprint())
    if _finished_fit(out, config, fingerprint, overwrite):
        log(
            f"{out} already holds this fit (same settings, same live source); pass --overwrite to fit it again"
        )
        return load_decomposer(out)
    log(
        f"fitting {method} live on {spec.model} {spec.site} ({source.n:,} tokens, {config.n_steps} steps) -> {out}"
    )
    source.bar = tqdm(total=config.n_steps * config.batch_size, unit="tok", unit_scale=True,
                      desc=f"live {method}", disable=not progress or distributed.rank() != 0)  # fmt: skip
    try:
        decomposer = method_class(method)(config).fit(source, checkpoint_dir=out / CHECKPOINT, progress=False)
    finally:
        source.bar.close()
    if distributed.rank() == 0:
        decomposer.save(out)
        record = live_record(spec, config)
        meta = json.loads((out / CONFIG_FILE).read_text())
        atomic_write_json(out / CONFIG_FILE, {**meta, "live": record})
        atomic_write_json(out / SOURCE_FILE, {"model": spec.model, "site": source.site.name, "live": record,
                                              "fingerprint": fingerprint})  # fmt: skip
        if not keep_checkpoint:
            shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    distributed.barrier()
    return decomposer
