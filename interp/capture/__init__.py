"""Capture activations at sites of a model into ActivationStores, one per site, resumably.

    stores = capture(model, contexts, ["9.mlp_hidden", "9.resid_post"], out="cache/activations/run")

Output folder: `contexts.safetensors` (the packed token contexts) and one store folder per site. Batches run on the
model's device; the forward pass stops after the deepest requested block; padding and (by default) the BOS position
are dropped. Shards are committed atomically; running the same capture again resumes after the last shard that every
site has committed.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp import distributed
from interp.corpus import Contexts
from interp.decompose.base import all_finite
from interp.models import LoadedModel
from interp.sites import Site, parse_sites
from interp.store import DTYPES, ActivationStore, StoreManifest, merge_rank_stores

BACKENDS = {
    "nnsight": "interp.capture.nnsight",
    "transformer_lens": "interp.capture.transformer_lens",
    "torch": "interp.capture.torch_hooks",
}
CONTEXTS_FILE = "contexts.safetensors"


class CaptureError(ValueError):
    """Bad capture settings or bad activations; the message says what to change."""


def backend_runner(name: str) -> Callable[[LoadedModel, torch.Tensor, list[Site]], dict[Site, torch.Tensor]]:
    """The `run(model, tokens, sites)` function of a backend."""
    if name not in BACKENDS:
        raise CaptureError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name]).run


@dataclass(frozen=True)
class CaptureStats:
    n_tokens: int  # tokens written by this call
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)


def keep_mask(contexts: Contexts, start: int, end: int, drop_bos: bool) -> torch.Tensor:
    """`[end - start, context_len]` True where a token is stored: not padding, and not BOS when drop_bos."""
    positions = torch.arange(contexts.context_len)
    mask = positions[None, :] < contexts.lengths[start:end, None]
    if drop_bos and contexts.has_bos:
        mask[:, 0] = False
    return mask


def first_changed_context(old: Contexts, new: Contexts) -> int:
    """Index of the first context that differs between two packings of the same corpus.

    A longer capture of the same corpus fills up what was the last, partial context: that context (and its shard)
    must be captured again.
    """
    n = min(old.n_contexts, new.n_contexts)
    differs = (old.token_ids[:n] != new.token_ids[:n]).any(dim=1) | (old.lengths[:n] != new.lengths[:n])
    changed = differs.nonzero()
    return int(changed[0, 0]) if changed.numel() else old.n_contexts


def capture(
    model: LoadedModel,
    contexts: Contexts,
    sites: list[str] | str,
    out: str | Path,
    backend: str = "nnsight",
    batch_size: int = 8,
    dtype: str = "float32",
    drop_bos: bool = True,
    shard_tokens: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, ActivationStore], CaptureStats]:
    """Run `model` over `contexts` and store activations at `sites` under `out/<site>/`.

    `shard_tokens` rows per shard (default: about 64 MB per shard of the widest site).
    Returns the stores by site name and what this call wrote.
    """
    run = backend_runner(backend)
    info = model.info
    site_list = parse_sites(sites, info.n_layers)
    if dtype not in DTYPES:
        raise CaptureError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if contexts.context_len > info.n_ctx:
        raise CaptureError(
            f"context length {contexts.context_len} is longer than {info.name} accepts ({info.n_ctx}); "
            f"pass --context-len {info.n_ctx} or less"
        )
    if batch_size < 1:
        raise CaptureError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed.rank(), distributed.world_size()
    begin, stop = distributed.rank_range(
        contexts.n_contexts
    )  # this rank's contexts (all of them in one process)

    def folder(site: Site) -> Path:
        return out / site.name if world == 1 else out / site.name / f"rank_{rank:03d}"

    stores = {
        site.name: ActivationStore.create(
            folder(site),
            StoreManifest(
                model=info.name, site=site.name, d=site.width(info), dtype=dtype,
                corpus_fingerprint=contexts.fingerprint, context_len=contexts.context_len, drop_bos=drop_bos,
            ),
        )
        for site in site_list
    }  # fmt: skip
    # Resume: every site restarts after the last context that all of them committed.
    done = max(begin, min(store.manifest.n_contexts for store in stores.values()))
    old = Contexts.load(out / CONTEXTS_FILE) if (out / CONTEXTS_FILE).exists() else None
    distributed.barrier()  # every rank has read the old contexts before rank 0 replaces them
    if done > stop:  # the stores already hold more than this call asks for
        return _finish(stores, site_list, out, world), CaptureStats(0, 0.0)
    if done > begin and old is not None:
        done = min(done, first_changed_context(old, contexts))
    for store in stores.values():
        store.truncate(done)  # drops whole shards, so the stores may now end before `done`
    done = max(begin, min(store.manifest.n_contexts for store in stores.values()))
    if rank == 0:
        contexts.save(out / CONTEXTS_FILE)
    if shard_tokens is None:
        widest = max(site.width(info) for site in site_list)
        shard_tokens = max(1024, (64 << 20) // (widest * DTYPES[dtype].itemsize))

    start_time, written = time.perf_counter(), 0
    remaining = int(keep_mask(contexts, done, stop, drop_bos).sum())
    bar = tqdm(
        total=remaining, unit="tok", unit_scale=True, desc=f"capture {info.name}", disable=not progress
    )
    buffers: dict[Site, list[torch.Tensor]] = {site: [] for site in site_list}
    meta: list[torch.Tensor] = []  # per buffered batch: [n, 3] token id, context id, position
    buffered = 0
    shard_start = done
    for start in range(done, stop, batch_size):
        end = min(start + batch_size, stop)
        length = int(contexts.lengths[start:end].max())
        tokens = contexts.token_ids[start:end, :length].to(model.device)
        acts = run(model, tokens, site_list)
        mask = keep_mask(contexts, start, end, drop_bos)[:, :length]
        for site in site_list:
            kept = acts[site][mask.to(acts[site].device)]
            if not all_finite(kept):
                raise CaptureError(
                    f"NaN or inf in activations at site {site.name}, batch of contexts {start}..{end - 1}; "
                    "the stores keep everything before this batch. Load the model in float32, or check its weights."
                )
            buffers[site].append(kept.to("cpu", DTYPES[dtype]))
        ctx = torch.arange(start, end)[:, None].expand(-1, length)
        pos = torch.arange(length)[None, :].expand(end - start, -1)
        meta.append(torch.stack([contexts.token_ids[start:end, :length][mask], ctx[mask], pos[mask]], dim=1))
        n = int(mask.sum())
        buffered += n
        bar.update(n)
        if buffered >= shard_tokens or end == stop:
            ids = torch.cat(meta)
            for site in site_list:
                store = stores[site.name]
                store.append(torch.cat(buffers[site]), ids[:, 0], ids[:, 1], ids[:, 2], end, shard_start)
                buffers[site] = []
            meta, written, buffered, shard_start = [], written + buffered, 0, end
    bar.close()
    return _finish(stores, site_list, out, world), CaptureStats(written, time.perf_counter() - start_time)


def _finish(
    stores: dict[str, ActivationStore], sites: list[Site], out: Path, world: int
) -> dict[str, ActivationStore]:
    """In a distributed capture, wait for every rank, then merge the rank stores of each site (rank 0)."""
    if world == 1:
        return stores
    distributed.barrier()
    if distributed.rank() == 0:
        for site in sites:
            merge_rank_stores(out / site.name, world)
    distributed.barrier()
    return {site.name: ActivationStore.open(out / site.name) for site in sites}
