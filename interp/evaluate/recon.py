"""Reconstruction and sparsity metrics, for any decomposer (through encode / decode), streamed over data.

- mse: mean over tokens of the squared error summed over d_in (`mse_per_dim` = that / d_in)
- fvu: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (variance about the mean, not about zero);
  explained_variance = 1 - fvu
- l0: mean number of non-zero codes per token
- dead_fraction: features that never fire on the data; dense_fraction: features firing on more than 10% of tokens
- shrinkage: mean over tokens of ||x_hat|| / ||x|| (below 1: reconstructions shrunk, as L1 penalties do)
"""

from __future__ import annotations

import torch

from interp.core.checks import check_activations
from interp.decompose.base import DecomposerError
from interp.store import ActivationStore


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained, `x`, `x_hat` `[n, d]`: variance measured about the mean of x."""
    return float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum().clamp_min(1e-12))


def _predict(decomposer, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(what is reconstructed, its reconstruction, codes): x, decode(encode(x)) for a decomposer; for a transcoder
    on paired rows `[x | y]` (interp.store.paired), y and its prediction y_hat(x)."""
    if not hasattr(decomposer, "reconstruct_target"):
        codes = decomposer.encode(rows)
        return rows, decomposer.decode(codes).to(rows.device), codes
    x, y = rows[:, : decomposer.d_in], rows[:, decomposer.d_in :]
    return y, decomposer.reconstruct_target(x).to(rows.device), decomposer.encode(x)


@torch.no_grad()
def evaluate(
    decomposer, data: ActivationStore | torch.Tensor, batch_size: int = 4096, max_tokens: int | None = None,
    dense_threshold: float = 0.1,
) -> dict[str, float]:  # fmt: skip
    """Streaming reconstruction / sparsity metrics of `decomposer` on `data` (a store, or `[n, d_in]`; for a
    transcoder a PairedStore or `[n, d_in + d_out]`, and the metrics are of the target)."""
    if isinstance(data, ActivationStore):
        chunks = data.batches(batch_size, shuffle=False)
    else:
        check_activations(data, error=DecomposerError)
        chunks = (data[i : i + batch_size] for i in range(0, data.shape[0], batch_size))
    n = 0
    sum_x2 = sq_error = shrink = 0.0
    sum_vec = None
    firing = torch.zeros(decomposer.n_features)
    nonzero = 0.0
    for x in chunks:
        if max_tokens is not None and n >= max_tokens:
            break
        x = x.float()
        x, x_hat, codes = _predict(decomposer, x)
        active = codes > 0
        firing += active.sum(0).float().cpu()
        nonzero += float(active.sum())
        sq_error += float((x - x_hat).square().sum())
        shrink += float((x_hat.norm(dim=1) / x.norm(dim=1).clamp_min(1e-6)).sum())
        sum_vec = x.sum(0) if sum_vec is None else sum_vec + x.sum(0)
        sum_x2 += float(x.square().sum())
        n += x.shape[0]
    d = sum_vec.shape[0]
    variance_about_mean = sum_x2 - float(sum_vec.square().sum()) / n  # sum ||x - mean||^2
    result = {
        "n_tokens": n,
        "mse": sq_error / n,
        "mse_per_dim": sq_error / (n * d),
        "fvu": sq_error / max(variance_about_mean, 1e-12),
        "l0": nonzero / n,
        "dead_fraction": float((firing == 0).float().mean()),
        "dense_fraction": float((firing / n > dense_threshold).float().mean()),
        "shrinkage": shrink / n,
    }
    result["explained_variance"] = 1 - result["fvu"]
    return result
