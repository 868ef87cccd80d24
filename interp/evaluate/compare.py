"""One comparison row per decomposer of a site: reconstruction and sparsity, and spliced-in CE / KL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interp.corpus import Contexts
from interp.decompose import load_decomposer
from interp.decompose.base import CONFIG_FILE, read_source
from interp.evaluate.recon import evaluate
from interp.evaluate.splice import spliced_metrics
from interp.models import load_model
from interp.store import ActivationStore
from interp.store.paired import PairedStore


def _paired(decomposer, store: ActivationStore) -> ActivationStore:
    """A transcoder's rows `[x | y]` of its input store and the target store it was fitted with."""
    target = getattr(decomposer.config, "target", "")
    return PairedStore(store, ActivationStore.open(target)) if target else store


def compare_decomposers(folders: list[Path], store_path: Path | None, max_tokens: int, n_contexts: int,
                        device: str = "auto") -> list[dict[str, Any]]:  # fmt: skip
    """Reconstruction, sparsity and spliced-in metrics of decomposers fitted on one site, one row each."""
    rows, model = [], None
    for folder in folders:
        source = read_source(folder)
        path = store_path or (Path(source["store"]) if source else None)
        if path is None:
            raise ValueError(f"{folder} does not say which store it was fitted on; pass --store")
        store = ActivationStore.open(path)
        decomposer = load_decomposer(folder)
        row = {"decomposer": folder.name, "method": json.loads((folder / CONFIG_FILE).read_text())["method"],
               "site": store.site, "n_features": decomposer.n_features,
               **evaluate(decomposer, _paired(decomposer, store), max_tokens=max_tokens)}  # fmt: skip
        if n_contexts > 0 and store.contexts_path.exists():
            model = model or load_model(store.manifest.model, device=device)
            contexts = Contexts.load(store.contexts_path)
            row.update(spliced_metrics(model, decomposer, store.site, contexts, n_contexts=n_contexts))
        rows.append(row)
    return rows
