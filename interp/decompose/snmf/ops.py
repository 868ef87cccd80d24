"""The SNMF algorithm's tensor operations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def winner_take_all(f: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the m entries of largest |f| in each column of `f [d, k]`: returns (indices [k, m], values [k, m]).

    Ties at the threshold are not all kept: exactly m entries survive per column (torch.topk chooses among equal
    magnitudes), so every feature has the same neuron budget and (indices, values) keep a fixed shape."""
    idx = f.abs().topk(m, dim=0).indices.T  # [k, m]
    return idx, f.T.gather(1, idx)


def dense_from_sparse(idx: torch.Tensor, vals: torch.Tensor, d: int) -> torch.Tensor:
    """F `[d, k]` from per-column (indices, values) `[k, m]`."""
    f = torch.zeros(idx.shape[0], d, device=vals.device, dtype=vals.dtype)
    return f.scatter_(1, idx, vals).T


def project(
    x: torch.Tensor, f_dense: torch.Tensor, kept: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """P^T = F^T A `[k, n]` for tokens x `[n, d]`. When x is a view of a neuron-major tensor and F's columns are
    given as `kept` = (indices, values) `[k, m]`, row j of P^T is the weighted sum of the m neuron rows feature j
    keeps: an embedding-bag sum, n k m work instead of n k d (m: 1% of d). Else a dense product."""
    if kept is not None and x.T.is_contiguous():
        idx, vals = kept
        return torch.nn.functional.embedding_bag(idx, x.T, per_sample_weights=vals, mode="sum")
    return transposed(x @ f_dense)  # BLAS runs A^T F faster than F^T A, and a blocked transpose costs little


def transposed(y: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """y^T as a contiguous `[k, n]` for y `[n, k]`, copied in blocks of rows (a single strided copy of a tall
    matrix runs several times slower)."""
    out = torch.empty(y.shape[1], y.shape[0], device=y.device, dtype=y.dtype)
    for start in range(0, y.shape[0], block):  # a loop over blocks of tokens
        out[:, start : start + block] = y[start : start + block].T
    return out


def multiplicative_update(g: torch.Tensor, p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """One Ding-Li-Jordan semi-NMF update of G, feature-major: G^T `[k, n]` given P^T = F^T A `[k, n]` and
    Q = F^T F `[k, k]` (symmetric, so (G Q+)^T = Q+ G^T). P is left as it was."""
    denominator = (eps - p).clamp_min_(eps).addmm_(q.clamp_min(0), g)  # P- + eps + G Q+
    numerator = p.clamp_min(0).addmm_((-q).clamp_min(0), g)  # P+ + G Q-
    return numerator.div_(denominator).sqrt_().mul_(g)  # in place on the temporaries: few passes over [k, n]


@contextmanager
def matmul_precision(fast: bool) -> Iterator[None]:
    """float32 products inside run at torch's precision "medium" when `fast` (see SNMFConfig.fast_matmul)."""
    if not fast:
        yield
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def solve_f(ag: torch.Tensor, gtg: torch.Tensor, ridge: float) -> torch.Tensor:
    """F = A G (G^T G + ridge I)^-1 `[d, k]`."""
    eye = torch.eye(gtg.shape[0], device=gtg.device, dtype=gtg.dtype)
    chol = torch.linalg.cholesky(gtg + ridge * eye)
    return ag @ torch.cholesky_inverse(chol)  # a [k, k] inverse, then one product: faster than a [d, k] solve
