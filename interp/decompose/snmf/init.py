"""SNMF initialization of G: random, SVD (Ding et al.) or k-means, streamed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.decompose.snmf.config import SNMFConfig
from interp.decompose.snmf.data import _Data, _GMatrix
from interp.decompose.snmf.ops import matmul_precision

Reduce = Callable[[torch.Tensor], torch.Tensor]


def initialize(
    cfg: SNMFConfig, stream: _Data, g: _GMatrix, k: int, reduce: Reduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill G with the chosen init and return the sums (A G, G^T G) that the first F update needs."""
    device, d = stream.device, stream.d
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "svd":
        # Ding et al.: F = U sqrt(S), G = clamp(V sqrt(S)); U, S^2 the top eigenpairs of A A^T
        top, u = top_eigenpairs(cfg, stream, k, gen, reduce)
        scale = top.clamp_min(1e-12) ** -0.25  # V sqrt(S) = A^T U S^-1/2, and S = sqrt(eigenvalues)
        sums = torch.zeros(k, device=device)  # orient each singular pair so that its V has positive mass
        for _, _, x in stream.chunks():
            sums += (x @ u).sum(0)
        reduce(sums)
        u = u * torch.where(sums < 0, -1.0, 1.0)
    elif cfg.init == "kmeans":
        centroids = kmeans(stream, k, gen)
    for start, end, x in stream.chunks():
        if cfg.init == "random":
            # seeded by the chunk's first global row: a distributed fit draws the same G as a single process
            chunk_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + stream.offset + start)
            chunk = torch.rand(end - start, k, generator=chunk_gen).clamp_min(1e-6)
        elif cfg.init == "svd":
            chunk = ((x @ u) * scale).clamp_min(1e-6).cpu()
        else:
            assign = torch.cdist(x, centroids).argmin(dim=1)
            chunk = torch.nn.functional.one_hot(assign, k).float().clamp_min(1e-6).cpu()
        g[start:end] = chunk.T
    ag, gtg = torch.zeros(d, k, device=device), torch.zeros(k, k, device=device)
    for start, end, x in stream.chunks():
        g_chunk = g[start:end].to(device)  # [k, c]
        ag += x.T @ g_chunk.T
        gtg += g_chunk @ g_chunk.T
    return reduce(ag), reduce(gtg)


def top_eigenpairs(
    cfg: SNMFConfig, stream: _Data, k: int, gen: torch.Generator, reduce: Reduce
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k leading eigenpairs (values `[k]`, vectors `[d, k]`) of A A^T = sum over chunks of x^T x.

    svd_power_iters = 0: the exact Gram matrix and eigh (d^2 n + d^3 work, d^2 memory). Else randomized
    subspace iteration (Halko, Martinsson & Tropp 2011) without forming A A^T: each pass over the tokens
    multiplies a `[d, 2k]` basis by A A^T (4 n d k work), and the error falls as (s_2k / s_k)^(2 x passes)."""
    d, device = stream.d, stream.device
    if cfg.svd_power_iters == 0:
        gram = torch.zeros(d, d, device=device, dtype=torch.float64)
        for _, _, x in stream.chunks():
            gram += (x.T @ x).double()
        eigvals, eigvecs = torch.linalg.eigh(reduce(gram))
        return eigvals.flip(0)[:k].float(), eigvecs.flip(1)[:, :k].float()
    basis = torch.linalg.qr(torch.randn(d, min(d, 2 * k), generator=gen).to(device)).Q
    for step in range(cfg.svd_power_iters + 1):
        product = torch.zeros_like(basis)
        for _, _, x in stream.chunks():
            with matmul_precision(cfg.fast_matmul):
                product += x.T @ (x @ basis)
        product = reduce(product)  # A A^T basis
        if step < cfg.svd_power_iters:
            basis = torch.linalg.qr(product).Q
    small = (basis.T @ product).double()  # basis^T A A^T basis [2k, 2k]
    eigvals, eigvecs = torch.linalg.eigh((small + small.T) / 2)
    return eigvals.flip(0)[:k].float(), basis @ eigvecs.flip(1)[:, :k].float()


def kmeans(stream: _Data, k: int, gen: torch.Generator, iters: int = 20) -> torch.Tensor:
    """k-means centroids `[k, d]` of the tokens (Lloyd, seeded by k random tokens), streamed."""
    picks = sorted(torch.randperm(stream.n, generator=gen)[:k].tolist())
    centroids = torch.zeros(k, stream.d, device=stream.device)
    for start, end, x in stream.chunks():
        inside = [i for i, p in enumerate(picks) if start <= p < end]
        if inside:
            centroids[inside] = x[[picks[i] - start for i in inside]]
    for _ in range(iters):
        sums, counts = torch.zeros_like(centroids), torch.zeros(k, device=stream.device)
        for _, _, x in stream.chunks():
            assign = torch.cdist(x, centroids).argmin(dim=1)
            sums.index_add_(0, assign, x)
            counts += torch.bincount(assign, minlength=k).float()
        keep = counts > 0
        centroids[keep] = sums[keep] / counts[keep, None]
    return centroids
