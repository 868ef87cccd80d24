"""Capture activations at sites of a model into ActivationStores, one per site, resumably.

    stores = capture(model, contexts, ["9.mlp_hidden", "9.resid_post"], out="cache/activations/run")

Output folder: `contexts.safetensors` (the packed token contexts) and one store folder per site. Batches run on the
model's device; the forward pass stops after the deepest requested block; padding and (by default) the BOS position
are dropped. Shards are committed atomically; running the same capture again resumes after the last shard that every
site has committed. A run folder is bound to one packing (corpus, tokenizer, context length, BOS): a capture
packed otherwise is refused before anything is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.checks import all_finite
from interp.core.fingerprint import check_same, make_fingerprint
from interp.core.paths import cache_dir
from interp.corpus import Contexts, load_contexts
from interp.models import LoadedModel, load_model
from interp.models.hooks import BACKENDS, backend_runner
from interp.models.sites import Site, parse_sites
from interp.store import CONTEXTS_FILE, DTYPES, MANIFEST, ActivationStore, StoreManifest, merge_rank_stores


class CaptureError(ValueError):
    """Bad capture settings or bad activations; the message says what to change."""


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
    _check_settings(model, contexts, backend, dtype, batch_size)
    run = backend_runner(backend)
    info = model.info
    site_list = parse_sites(sites, info.n_layers)
    out = Path(out)
    old = Contexts.load(out / CONTEXTS_FILE) if (out / CONTEXTS_FILE).exists() else None
    check_packing(old, contexts, out)  # before anything is written
    rank, world = distributed.rank(), distributed.world_size()
    for site in site_list:
        check_split(out / site.name, world)
    distributed.barrier()  # every rank has checked before any rank creates its folders
    out.mkdir(parents=True, exist_ok=True)
    begin, stop = distributed.rank_range(
        contexts.n_contexts
    )  # this rank's contexts (all of them in one process)
    stores = _open_stores(model, contexts, site_list, out, dtype, drop_bos)
    # Resume: every site restarts after the last context that all of them committed.
    done = max(begin, min(store.manifest.n_contexts for store in stores.values()))
    distributed.barrier()  # every rank has read the old contexts before rank 0 replaces them
    if done > stop:  # the stores already hold more than this call asks for
        return _finish(stores, site_list, out, world), CaptureStats(0, 0.0)
    if done > begin and old is not None:
        done = min(done, first_changed_context(old, contexts))
    for store in stores.values():
        store.truncate(done)  # drops whole shards, so the stores may now end before `done`
    done = max(begin, min(store.manifest.n_contexts for store in stores.values()))
    if rank == 0 and (old is None or contexts.n_contexts >= old.n_contexts):
        contexts.save(
            out / CONTEXTS_FILE
        )  # a shorter capture keeps the longer packing (its prefix is the same)
    if shard_tokens is None:
        widest = max(site.width(info) for site in site_list)
        shard_tokens = max(1024, (64 << 20) // (widest * DTYPES[dtype].itemsize))

    start_time = time.perf_counter()
    batches = range(done, stop, batch_size)
    written = _write_shards(model, run, contexts, site_list, stores, batches, stop, drop_bos, dtype,
                            shard_tokens, progress)  # fmt: skip
    return _finish(stores, site_list, out, world), CaptureStats(written, time.perf_counter() - start_time)


def check_packing(old: Contexts | None, contexts: Contexts, out: Path) -> None:
    """A run folder is bound to one packing of one corpus (every site's rows point into its contexts file):
    refuse contexts packed otherwise, naming what differs."""
    if old is None:
        return
    check_same(make_fingerprint(old.description, {}), make_fingerprint(contexts.description, {}),
               f"the run folder {out} (its {CONTEXTS_FILE})",
               "a run folder holds one packing of one corpus: capture into another --out folder", CaptureError)  # fmt: skip


def captured_by(site_dir: Path) -> int | None:
    """How many processes captured the store at `site_dir` (its rank_NNN folders; 1 for a plain store), or None
    when nothing is there yet."""
    ranks = sorted(site_dir.glob("rank_[0-9][0-9][0-9]")) if site_dir.is_dir() else []
    if ranks:
        return len(ranks)
    return 1 if (site_dir / MANIFEST).exists() else None


def check_split(site_dir: Path, world: int) -> None:
    """A store is resumed by as many processes as started it (each rank owns a block of contexts): refuse
    another number, before anything is written."""
    before = captured_by(site_dir)
    if before is not None and before != world:
        how = "one process" if before == 1 else f"{before} processes (torchrun --nproc-per-node {before})"
        raise CaptureError(
            f"the store at {site_dir} was captured by {before} process(es), this capture runs {world}: each rank "
            f"owns a block of contexts, so resume it with {how}, or capture into another --out folder"
        )


def _check_settings(
    model: LoadedModel, contexts: Contexts, backend: str, dtype: str, batch_size: int
) -> None:
    """Refuse settings that cannot work, naming the fix."""
    info = model.info
    if backend not in BACKENDS:
        raise CaptureError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise CaptureError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if contexts.context_len > info.n_ctx:
        raise CaptureError(
            f"context length {contexts.context_len} is longer than {info.name} accepts ({info.n_ctx}); "
            f"pass --context-len {info.n_ctx} or less"
        )
    if batch_size < 1:
        raise CaptureError(f"batch_size must be >= 1, got {batch_size}")


def _open_stores(model: LoadedModel, contexts: Contexts, sites: list[Site], out: Path, dtype: str,
                 drop_bos: bool) -> dict[str, ActivationStore]:  # fmt: skip
    """The store of each site under `out` (this rank's part under torch.distributed), opened to append."""
    info, rank, world = model.info, distributed.rank(), distributed.world_size()

    def folder(site: Site) -> Path:
        return out / site.name if world == 1 else out / site.name / f"rank_{rank:03d}"

    return {
        site.name: ActivationStore.create(
            folder(site),
            StoreManifest(
                model=info.name, site=site.name, d=site.width(info), dtype=dtype,
                corpus_fingerprint=contexts.fingerprint, context_len=contexts.context_len, drop_bos=drop_bos,
            ),
        )
        for site in sites
    }  # fmt: skip


def _write_shards(model: LoadedModel, run: Callable, contexts: Contexts, site_list: list[Site],
                  stores: dict[str, ActivationStore], batches: range, stop: int, drop_bos: bool, dtype: str,
                  shard_tokens: int, progress: bool) -> int:  # fmt: skip
    """Run the model over the contexts of `batches` (starts of batches of contexts) and commit a shard of every
    site each time `shard_tokens` rows are buffered; returns the rows written per site."""
    written = 0
    remaining = int(keep_mask(contexts, batches.start, stop, drop_bos).sum())
    bar = tqdm(
        total=remaining, unit="tok", unit_scale=True, desc=f"capture {model.info.name}", disable=not progress
    )
    buffers: dict[Site, list[torch.Tensor]] = {site: [] for site in site_list}
    meta: list[torch.Tensor] = []  # per buffered batch: [n, 3] token id, context id, position
    buffered = 0
    shard_start = batches.start
    with ShardWriter() as writer:
        for start in batches:
            batch = _capture_batch(model, run, contexts, site_list, start, min(start + batches.step, stop),
                                   drop_bos, dtype)  # fmt: skip
            for site in site_list:
                buffers[site].append(batch[site])
            meta.append(batch["meta"])
            n = batch["meta"].shape[0]
            buffered += n
            bar.update(n)
            end = min(start + batches.step, stop)
            if buffered >= shard_tokens or end == stop:
                ids = torch.cat(meta)
                rows = {site.name: torch.cat(buffers[site]) for site in site_list}
                writer.submit(_commit, stores, rows, ids, end, shard_start)  # overlaps the next batches
                buffers = {site: [] for site in site_list}
                meta, written, buffered, shard_start = [], written + buffered, 0, end
    bar.close()
    return written


class ShardWriter:
    """Commits shards on one background thread, one shard in flight: the disk write of shard i overlaps the
    forward passes of shard i + 1, memory holds at most two shards, and shards commit in order. An error in a
    write is raised in the capture at the next submit or on exit; on exit (also on Ctrl-C) the shard in flight
    is finished first, so what was captured before it is kept."""

    def __enter__(self) -> ShardWriter:
        from concurrent.futures import ThreadPoolExecutor

        self.pool, self.pending = ThreadPoolExecutor(1, thread_name_prefix="interp-shards"), None
        return self

    def submit(self, fn: Callable, *args) -> None:
        if self.pending is not None:
            self.pending.result()
        self.pending = self.pool.submit(fn, *args)

    def __exit__(self, *exc) -> None:
        try:
            if self.pending is not None:
                self.pending.result()
        finally:
            self.pool.shutdown(wait=True)


def _commit(stores: dict[str, ActivationStore], rows: dict[str, torch.Tensor], ids: torch.Tensor, end: int,
            shard_start: int) -> None:  # fmt: skip
    """Append one shard to every site's store: the same contexts [shard_start, end) for all of them."""
    for name, acts in rows.items():
        stores[name].append(acts, ids[:, 0], ids[:, 1], ids[:, 2], end, shard_start)


def _capture_batch(model: LoadedModel, run: Callable, contexts: Contexts, site_list: list[Site], start: int,
                   end: int, drop_bos: bool, dtype: str) -> dict:  # fmt: skip
    """One batch of contexts [start, end): each site's kept rows on the CPU `[n, width]`, and "meta" `[n, 3]`
    (token id, context id, position)."""
    length = int(contexts.lengths[start:end].max())
    tokens = contexts.token_ids[start:end, :length].to(model.device)
    acts = run(model, tokens, site_list)
    mask = keep_mask(contexts, start, end, drop_bos)[:, :length]
    out: dict = {}
    for site in site_list:
        kept = acts[site][mask.to(acts[site].device)]
        if not all_finite(kept):
            raise CaptureError(
                f"NaN or inf in activations at site {site.name}, batch of contexts {start}..{end - 1}; "
                "the stores keep everything before this batch. Load the model in float32, or check its weights."
            )
        out[site] = kept.to("cpu", DTYPES[dtype])
    ctx = torch.arange(start, end)[:, None].expand(-1, length)
    pos = torch.arange(length)[None, :].expand(end - start, -1)
    out["meta"] = torch.stack([contexts.token_ids[start:end, :length][mask], ctx[mask], pos[mask]], dim=1)
    return out


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


def middle_sites(n_layers: int) -> str:
    """The MLP neurons and the residual stream of the middle layer: `L.mlp_hidden,L.resid_post`."""
    layer = n_layers // 2
    return f"{layer}.mlp_hidden,{layer}.resid_post"


def default_run_dir(model: str, corpus: str | Sequence[str]) -> Path:
    """cache/activations/MODEL/CORPUS (several sources: their names joined by '+')."""
    sources = [corpus] if isinstance(corpus, str) else list(corpus)
    return cache_dir() / "activations" / Path(model).name / "+".join(Path(s).stem for s in sources)


def capture_corpus(
    model_name: str,
    sites: str | None,
    corpus: str | Sequence[str],
    n_tokens: int,
    context_len: int = 128,
    batch_size: int = 8,
    backend: str = "nnsight",
    device: str = "auto",
    dtype: str = "float32",
    out: Path | None = None,
    text_column: str = "text",
    keep_bos: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, ActivationStore], CaptureStats, Path]:
    """Load the model, pack the corpus, capture `sites` (default: the middle layer's); returns (stores by site,
    stats, run folder)."""
    for flag, value, least in (("--n-tokens", n_tokens, 1), ("--context-len", context_len, 2),
                               ("--batch-size", batch_size, 1)):  # fmt: skip
        if value < least:
            raise CaptureError(f"{flag} must be >= {least}, got {value}")
    model = load_model(model_name, device=device)
    sites = sites or middle_sites(model.info.n_layers)
    contexts = load_contexts(model.tokenizer, corpus, context_len, n_tokens, text_column)
    out = Path(out) if out is not None else default_run_dir(model_name, corpus)
    log(f"capturing {sites} of {model.info.name} on {device} ({model.device}) into {out}")
    stores, stats = capture(model, contexts, sites, out, backend=backend, batch_size=batch_size, dtype=dtype,
                            drop_bos=not keep_bos, progress=progress)  # fmt: skip
    return stores, stats, out
