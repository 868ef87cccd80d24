"""The feature index: what the browser shows about every feature of a decomposer, computed once, read from disk.

    index = build_index("cache/decomposers/gemma-3-270m/bbc/9.mlp_hidden/topk-k4096")   # -> that folder's index/
    feature = FeatureIndex.open(index_dir).feature(17)

Two streaming passes over the store the decomposer was fitted on (`interp.features_stream`) give, per feature:
the top-k activating tokens with per-token activations over a window of tokens around each; samples from
activation quantile bands; firing density, mean and max; a histogram of firing activations. Then, from the
directions: the logit lens (`interp.logit_lens`), the nearest features by cosine, and for `mlp_hidden` sites the
neurons that make up each feature (for SNMF exactly its non-zero neuron weights); for SNMF the hierarchy.

Under torch.distributed (`interp index --distributed` under torchrun) each rank streams a block of the store's
shards; counts and histograms are summed and the examples merged on rank 0, which writes the index of one process.

A feature fires on a token when its code is above `fire_threshold` times its max (0 by default: any positive code;
1% for SNMF, whose non-negative codes are dense).

Layout of an index folder (written under a temporary name and swapped in, so readers never see half an index):

    index/manifest.json         # IndexManifest: format version, source run, settings, sizes, norm handling
    index/features.parquet      # one row per feature: density, max, mean, top tokens and text (for search)
    index/index.safetensors     # per-feature tensors, first dimension n_features (see TENSORS)
    index/tokens.parquet        # id -> display text of every token id the index mentions
    index/hierarchy.json        # optional: SNMF hierarchy {"levels": [...], "nodes": [...]}
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.checks import check_activations, check_ranges
from interp.core.device import resolve_device
from interp.core.io import atomic_save_safetensors, atomic_write_json
from interp.decompose.base import SOURCE_FILE, read_source
from interp.features.checkpoint import IndexCheckpoint, fingerprint
from interp.features.layout import (
    HIERARCHY,
    INDEX_DIR,
    MANIFEST,
    TABLE,
    TENSORS,
    TOKENS,
    FeatureIndexError,
    IndexManifest,
)
from interp.features.passes import BandPass, TopPass, prefixed, unprefixed
from interp.features.reader import FeatureIndex
from interp.features.similarity import nearest_features, top_neurons
from interp.features.table import feature_table, token_table
from interp.store import ActivationStore
from interp.store.batches import context_batches

FIRE_THRESHOLD = {"snmf": 0.01}  # default fire_threshold by method (others: 0)


INDEX_RANGES = {
    "top_k": ">= 1", "window": ">= 0", "band_samples": ">= 1", "n_bins": ">= 1", "n_logit": ">= 0", "n_similar": ">= 0",
    "n_neurons": ">= 0", "fire_threshold": ">= 0", "batch_tokens": ">= 1", "max_batch_codes": ">= 1",
    "max_tokens": ">= 1", "checkpoint_every": ">= 0",
}  # fmt: skip


@dataclass(frozen=True)
class IndexConfig:
    top_k: int = 20
    """Top activating tokens kept per feature."""
    window: int = 15
    """Tokens shown on each side of an example (within its context)."""
    band_quantiles: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99)
    """Lower edges of the quantile bands of firing activations sampled for examples (the last band ends at max)."""
    band_samples: int = 4
    """Random examples per band."""
    n_bins: int = 40
    """Bins of the histogram of firing activations, from the firing threshold to the max."""
    n_logit: int = 10
    """Promoted and suppressed tokens kept per feature."""
    n_similar: int = 10
    """Nearest features (by direction cosine) kept per feature."""
    n_neurons: int = 16
    """Largest neuron weights kept per feature (mlp_hidden sites)."""
    fire_threshold: float | None = None
    """Firing = code above this fraction of the feature's max; None: the method's default (see FIRE_THRESHOLD)."""
    batch_tokens: int = 4096
    """Tokens per batch (whole contexts), reduced so a batch holds at most max_batch_codes codes."""
    max_batch_codes: int = 1 << 23
    max_tokens: int | None = None
    """Index only the first tokens of the store (whole contexts); None: all."""
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    """Batches between checkpoints of a single-process build, which an interrupted build resumes from (0: none)."""

    def __post_init__(self) -> None:
        q = self.band_quantiles
        if not q or q[0] != 0.0 or any(b <= a for a, b in zip(q, q[1:], strict=False)) or q[-1] >= 1:
            raise FeatureIndexError(f"band_quantiles must start at 0.0, increase, and stay below 1; got {q}")
        check_ranges(self, INDEX_RANGES, FeatureIndexError)


# ----------------------------------------------------------------------------------------------- building
def _method_of(decomposer: Any, folder: Path | None) -> str:
    if folder is not None and (folder / "config.json").exists():
        return json.loads((folder / "config.json").read_text()).get("method", "")
    return str(getattr(decomposer, "method", type(decomposer).__name__.lower()))


def _hierarchy_of(decomposer: Any, folder: Path | None, given: dict | str | Path | None) -> dict | None:
    """The SNMF hierarchy tree: given (dict or JSON file), the folder's hierarchy.json, or the decomposer's."""
    if given is not None:
        tree = given if isinstance(given, dict) else json.loads(Path(given).read_text())
    elif folder is not None and (folder / HIERARCHY).exists():
        tree = json.loads((folder / HIERARCHY).read_text())
    elif getattr(decomposer, "levels", None) and hasattr(decomposer, "hierarchy_tree"):
        tree = decomposer.hierarchy_tree()
    else:
        return None
    if not isinstance(tree, dict) or "nodes" not in tree or "levels" not in tree:
        raise FeatureIndexError('a hierarchy must be JSON {"levels": [...], "nodes": [{"id", "level", ...}]}')
    return tree


def _source_of(folder: Path | None, store: str | Path | None) -> Path:
    if store is not None:
        return Path(store)
    source = read_source(folder) if folder is not None else None
    if source is None:
        raise FeatureIndexError(
            f"the decomposer at {folder} has no {SOURCE_FILE} naming its store; pass the store (--store)"
        )
    if "store" not in source:  # fitted by `interp fit --live`: no store holds its rows
        raise FeatureIndexError(
            f"the decomposer at {folder} was trained live on {source.get('model')} {source.get('site')} (no store); "
            f"capture that site (interp capture --model {source.get('model')} --sites {source.get('site')}) and "
            "pass the store (--store)"
        )
    return Path(source["store"])


def build_index(
    decomposer: Any,
    store: str | Path | ActivationStore | None = None,
    out: str | Path | None = None,
    config: IndexConfig = IndexConfig(),
    model: Any = None,
    hierarchy: dict | str | Path | None = None,
    progress: bool = True,
) -> FeatureIndex:
    """Index the features of `decomposer` (a folder or a decomposer object) over `store` into `out`.

    `store` defaults to the one in the decomposer's source.json; `out` to `<decomposer folder>/index`; `model` (a
    LoadedModel or a name, default the store's model) gives the tokenizer and the logit lens.
    """
    from interp.models import LoadedModel, load_model

    started = time.perf_counter()
    decomposer, folder, store, out = _open_inputs(decomposer, store, out)
    rank = distributed.rank()
    if not isinstance(model, LoadedModel) and rank == 0:  # only rank 0 writes, so only it needs the model
        model = load_model(model or store.manifest.model, device=config.device)
    method = _method_of(decomposer, folder)
    directions = decomposer.directions.detach().float()
    rel = config.fire_threshold if config.fire_threshold is not None else FIRE_THRESHOLD.get(method, 0.0)
    checkpoint = None  # single process only: a distributed build's passes end in collectives
    if config.checkpoint_every > 0 and distributed.world_size() == 1:
        settings = dataclasses.asdict(config)
        checkpoint = IndexCheckpoint(out, fingerprint(directions, store, settings), config.checkpoint_every)
    first, second, threshold, max_value, edges = _run_passes(decomposer, store, checkpoint, config, directions,
                                                             rel, progress)  # fmt: skip
    if rank != 0:  # rank 0 writes the index; the others open it once it is there
        distributed.barrier()
        return FeatureIndex.open(out)

    tensors = _example_tensors(first, second, threshold)
    tensors |= {
        "max": max_value, "threshold": threshold, "density": second.counts.double() / first.n_tokens,
        "count": second.counts, "mean": (second.sums / second.counts.clamp_min(1)).float(),
        "hist": second.hist.view(directions.shape[0], config.n_bins), "band_edges": edges,
    }  # fmt: skip
    lens_tensors, lens_note = _direction_tensors(directions, model, store.site, config)
    tensors = {name: t.detach().cpu().contiguous() for name, t in (tensors | lens_tensors).items()}

    tree = _hierarchy_of(decomposer, folder, hierarchy)
    manifest = IndexManifest(
        method=method, n_features=directions.shape[0], d_in=store.d, model=store.manifest.model, site=store.site,
        decomposer=str(folder.resolve()) if folder is not None else "", store=str(store.path.resolve()),
        contexts=str(store.contexts_path.resolve()) if store.contexts_path.exists() else "",
        n_tokens=first.n_tokens, fire_threshold=rel, mean_input_norm=first.norm_sum / max(first.n_tokens, 1),
        logit_lens=lens_note, has_neurons=store.site.endswith("mlp_hidden"),
        has_hierarchy=tree is not None, config=dataclasses.asdict(config),
        seconds=time.perf_counter() - started, created=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )  # fmt: skip
    _write(out, manifest, tensors, model.tokenizer, tree)
    if checkpoint is not None:
        checkpoint.remove()
    distributed.barrier()
    return FeatureIndex.open(out)


def _open_inputs(decomposer: Any, store, out) -> tuple[Any, Path | None, ActivationStore, Path]:
    """The decomposer (loaded when a folder), its folder or None, the store (checked against it) and `out`."""
    from interp.decompose import load_decomposer

    folder = Path(decomposer) if isinstance(decomposer, str | Path) else None
    if folder is not None:
        decomposer = load_decomposer(folder)
    if not isinstance(store, ActivationStore):
        store = ActivationStore.open(_source_of(folder, store))
    if out is None:
        if folder is None:
            raise FeatureIndexError(
                "pass `out` when indexing a decomposer object (no folder to put index/ in)"
            )
        out = folder / INDEX_DIR
    if store.n_tokens == 0:
        raise FeatureIndexError(
            f"the store at {store.path} is empty (0 tokens); capture a corpus with text first"
        )
    if decomposer.d_in != store.d:
        raise FeatureIndexError(
            f"the decomposer has d_in={decomposer.d_in} but the store {store.path} (site {store.site}) has "
            f"d={store.d}; index it on the store it was fitted on"
        )
    _check_fitted_on(read_source(folder) if folder is not None else None, store)
    return decomposer, folder, store, Path(out)


def _check_fitted_on(source: dict | None, store: ActivationStore) -> None:
    """Refuse a store of another site or model than the decomposer's source.json names (same width or not)."""
    for what, fitted, given in (("site", (source or {}).get("site"), store.site),
                                ("model", (source or {}).get("model"), store.manifest.model)):  # fmt: skip
        if fitted and fitted != given:
            raise FeatureIndexError(
                f"the decomposer was fitted on {what} {fitted} (store {source.get('store', 'none: trained live')}) but the store "
                f"{store.path} holds {what} {given}; index it over a store of {fitted} (omit --store to use the "
                "one it was fitted on)"
            )


def _run_passes(decomposer, store: ActivationStore, checkpoint: IndexCheckpoint | None, config: IndexConfig,
                directions: torch.Tensor, rel: float, progress: bool):  # fmt: skip
    """The two passes over the store (top examples, then bands and histograms), checkpointed so a killed build
    resumes. Returns (first pass, second pass, threshold [k], max [k], band edges)."""
    k = directions.shape[0]
    device = resolve_device(config.device)
    shards = range(*distributed.rank_range(store.n_shards))  # under torch.distributed: this rank's block
    batch_tokens = max(store.manifest.context_len, min(config.batch_tokens, config.max_batch_codes // k))
    total = sum(s.n_tokens for s in store.manifest.shards[shards.start : shards.stop])
    total = min(total, config.max_tokens or total)
    show = progress and distributed.rank() == 0

    def batches(desc: str, done: int):
        """(batch, x, codes) of the store's batches after the first `done` rows (those a resumed pass has)."""
        bar = tqdm(total=total, desc=desc, unit="tok", disable=not show, leave=False)
        for batch in context_batches(store, batch_tokens, config.max_tokens, shards):
            if batch.start < done:
                bar.update(batch.acts.shape[0])
                continue
            x = batch.acts.to(device, torch.float32)
            check_activations(
                x, None, f"activations of {store.path}", FeatureIndexError, first_row=batch.start
            )
            codes = decomposer.encode(x).detach().float().to(device)
            yield batch, x, codes
            bar.update(x.shape[0])
        bar.close()

    saved = checkpoint.load() if checkpoint is not None else None
    phase, done = (saved.phase, saved.rows) if saved is not None else (1, 0)
    with torch.no_grad():
        first = TopPass(k, config.top_k, config.window, device)
        if saved is not None:
            first.load_state(unprefixed("first.", saved.tensors))
        if phase == 1:
            for batch, x, codes in batches("index: top examples", done):
                first.update(batch, x, codes)
                if checkpoint is not None:
                    checkpoint.step(1, batch.start + x.shape[0], lambda: prefixed("first.", first.state()))
            if checkpoint is not None:
                checkpoint.save(2, 0, prefixed("first.", first.state()))
            done = 0  # pass 2 starts from the beginning
        max_value = distributed.all_reduce(first.top.values.max(dim=1).values.clamp_min(0), "max")
        first.reduce()  # under torch.distributed: sums over ranks; top examples merged on rank 0
        threshold = rel * max_value
        edges = first.quantile_edges(threshold, max_value, config.band_quantiles)
        second = BandPass(threshold, max_value, edges, config.n_bins, config.band_samples, config.window,
                          config.seed)  # fmt: skip
        if done > 0:
            second.load_state(unprefixed("second.", saved.tensors))
        for batch, _, codes in batches("index: bands, histogram", done):
            second.update(batch, codes)
            if checkpoint is not None:
                both = lambda: prefixed("first.", first.state()) | prefixed("second.", second.state())  # noqa: E731
                checkpoint.step(2, batch.start + codes.shape[0], both)
        second.reduce()
    return first, second, threshold, max_value, edges


def _direction_tensors(directions: torch.Tensor, model, site: str, config: IndexConfig):
    """What the feature directions `[k, d]` alone give: nearest features, the logit lens (with a model) and, at
    an MLP-hidden site, the top neurons. Returns (tensors, the logit lens note)."""
    device = resolve_device(config.device)
    ids, cos = nearest_features(directions.to(device), config.n_similar)
    tensors = {"similar_ids": ids, "similar_cos": cos}
    lens_note = ""
    if model is not None:
        from interp.features.logit_lens import NORM_NOTE, logit_lens

        lens = logit_lens(model, site, directions, top=config.n_logit)
        tensors |= {f"logit_{name}": value for name, value in dataclasses.asdict(lens).items()}
        lens_note = NORM_NOTE
    if site.endswith("mlp_hidden"):
        tensors |= top_neurons(directions, config.n_neurons)
    return tensors, lens_note


def _example_tensors(first: TopPass, second: BandPass, threshold: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top and band examples as flat tensors, highest value first; top examples at or below the firing threshold
    are dropped."""
    top = first.top
    keep = (top.rows >= 0) & (top.values > threshold[:, None])
    out = {
        "top_values": top.values.masked_fill(~keep, 0.0),
        "top_rows": top.rows.masked_fill(~keep, -1),
        "top_context": top.context_ids.masked_fill(~keep, -1),
        "top_position": top.positions.masked_fill(~keep, -1),
        "top_tokens": top.tokens.masked_fill(~keep[..., None], -1).int(),
        "top_acts": top.acts.masked_fill(~keep[..., None], float("nan")),
    }
    bands = second.band_tensors()
    names = {"values": "band_values", "rows": "band_rows", "context_ids": "band_context",
             "positions": "band_position", "tokens": "band_tokens", "acts": "band_acts"}  # fmt: skip
    out |= {names[key]: value for key, value in bands.items()}
    out["band_tokens"] = out["band_tokens"].int()
    for prefix in ("top", "band"):  # slots by value, highest first (empty slots, value 0, last), then by row
        rows, values = out[f"{prefix}_rows"], out[f"{prefix}_values"]
        order = (rows + 1).argsort(
            dim=-1, stable=True
        )  # ties of value broken by row, whichever rank found them
        order = order.gather(-1, values.gather(-1, order).argsort(dim=-1, descending=True, stable=True))
        for name in [n for n in out if n.startswith(prefix + "_")]:
            index = order.view(*order.shape, *[1] * (out[name].ndim - order.ndim)).expand_as(out[name])
            out[name] = out[name].gather(order.ndim - 1, index)
    return out


def _write(out: Path, manifest: IndexManifest, tensors: dict[str, torch.Tensor], tokenizer: Any,
           tree: dict | None) -> None:  # fmt: skip
    """Write the index into a temporary folder, then swap it in for `out`."""
    tokens = token_table(tokenizer, tensors)
    vocab = dict(zip(tokens["id"].tolist(), tokens["text"].tolist(), strict=True))
    table = feature_table(tensors, vocab)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    atomic_save_safetensors(tensors, tmp / TENSORS)
    table.to_parquet(tmp / TABLE, index=False)
    tokens.to_parquet(tmp / TOKENS, index=False)
    if tree is not None:
        atomic_write_json(tmp / HIERARCHY, tree)
    atomic_write_json(tmp / MANIFEST, dataclasses.asdict(manifest))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
