"""Basic statistics of a store, from its first rows."""

from __future__ import annotations

from typing import Any

import torch

from interp.store.activations import ActivationStore


def store_summary(store: ActivationStore, max_rows: int = 20_000) -> dict[str, Any]:
    """site, n_tokens, d, shards, mean norm, mean, fraction positive, max |x|, dtype, size, finiteness of the first
    `max_rows` rows."""
    acts = next(store.iter_shards())[:max_rows]
    norms = acts.norm(dim=1)
    return {
        "site": store.site, "n_tokens": store.n_tokens, "d": store.d, "shards": store.n_shards,
        "mean_norm": float(norms.mean()), "mean": float(acts.mean()),
        "frac_positive": float((acts > 0).float().mean()),
        "max_abs": float(acts.abs().max()), "dtype": store.manifest.dtype,
        "size_mb": sum(s.n_bytes for s in store.manifest.shards) / 2**20,
        "finite": bool(torch.isfinite(acts).all()),
    }  # fmt: skip
