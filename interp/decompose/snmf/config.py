"""SNMF configuration and fit state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from interp.core.checks import check_ranges
from interp.decompose.base import DecomposerError

INITS = ("random", "svd", "kmeans")


SNMF_RANGES = {
    "n_features": ">= 1", "sparsity": "in (0, 1]", "svd_power_iters": ">= 0", "max_iter": ">= 1", "patience": ">= 1",
    "tol": ">= 0", "ridge": ">= 0", "eps": "> 0", "hierarchy": ">= 1", "chunk_tokens": ">= 1",
    "memory_limit_gb": "> 0", "checkpoint_every": ">= 1", "encode_iters": ">= 0",
}  # fmt: skip


@dataclass(frozen=True)
class SNMFConfig:
    n_features: int = 100
    """k, the number of features (with `hierarchy`, its first rank)."""
    sparsity: float = 0.01
    """Fraction of neurons each feature keeps (winner-take-all on |F| per column); the paper's default 1%."""
    init: str = "svd"
    """svd (Ding et al.; the default: on planted data random starts stall in local minima) | random (seeded:
    G uniform in [0, 1), as the official code) | kmeans."""
    svd_power_iters: int = 4
    """SVD init: power iterations of the randomized subspace iteration that finds the top-k singular vectors of A
    (one pass over the tokens each, plus one); 0: the exact Gram matrix A A^T and its full eigendecomposition
    (d^3 work: minutes for a 14k-wide MLP)."""
    max_iter: int = 500
    """Iteration limit (official code default 500)."""
    patience: int = 100
    """Stop after this many iterations without improvement (official code default 100)."""
    tol: float = 1e-6
    """An iterate improves when loss < best_loss * (1 - tol) (relative; see module docstring)."""
    ridge: float = 1e-6
    """lambda of the F least-squares update."""
    eps: float = 1e-6
    """Added to the denominator of the multiplicative G update."""
    seed: int = 0
    device: str = "auto"
    hierarchy: tuple[int, ...] = ()
    """Ranks of a hierarchy, finest first (e.g. 400,200,100,50): level 1 is fitted on A at the first rank, each next
    level on the previous level's feature matrix; the decomposer's features are level 1."""
    chunk_tokens: int = 32768
    """Tokens per streamed chunk of an in-memory tensor (stores stream shard by shard)."""
    stream: bool | None = None
    """Stream a store shard by shard every iteration (out of core); None: only when its activations take more
    than `memory_limit_gb` (smaller stores are loaded once)."""
    memory_limit_gb: float = 4.0
    g_on_disk: bool | None = None
    """Keep G in a memory-mapped file (None: when G is larger than 1 GiB or the data is a store)."""
    checkpoint_every: int = 25
    """Iterations between checkpoints when a checkpoint_dir is given."""
    encode_iters: int = 50
    """Multiplicative updates for the non-negative codes of new tokens (F fixed)."""
    fast_matmul: bool = True
    """Run the products A G `[d, k]` (the F update) and Q+- G^T (the G update, also in `encode`) at torch's
    float32 matmul precision "medium": oneDNN's kernels on CPUs with bf16 instructions (1.5-2.5x faster than MKL
    for these shapes; on AVX512-BF16 CPUs at float32 accuracy, 9e-8 relative to float64 against MKL's 2e-7; AMX
    CPUs may round the inputs to bf16) and TF32 on GPUs. P = A^T F and G^T G, from which the loss is computed,
    always run in strict float32, so the reported error is exact either way. False: strict float32 everywhere."""

    RESULT_FREE: ClassVar[tuple[str, ...]] = ("stream", "memory_limit_gb", "g_on_disk", "chunk_tokens")
    """How the data is held and streamed: the same factorization either way."""
    RESUME_FREE: ClassVar[tuple[str, ...]] = ("max_iter", "encode_iters")
    """A checkpointed fit goes on with a higher max_iter; encode_iters is used after the fit only."""

    def __post_init__(self) -> None:
        check_ranges(self, SNMF_RANGES, DecomposerError)
        if self.init not in INITS:
            raise DecomposerError(f"unknown init {self.init!r}; valid: {', '.join(INITS)}")
        if self.hierarchy:
            object.__setattr__(self, "hierarchy", tuple(int(r) for r in self.hierarchy))
            default = SNMFConfig.__dataclass_fields__["n_features"].default
            if self.n_features not in (default, self.hierarchy[0]):
                ranks = ",".join(map(str, self.hierarchy))
                raise DecomposerError(
                    f"n_features={self.n_features} (--k) disagrees with hierarchy={ranks}: the features are the "
                    f"hierarchy's first (finest) rank; pass --k {self.hierarchy[0]}, or leave --k out"
                )
            object.__setattr__(self, "n_features", self.hierarchy[0])


@dataclass
class FitState:
    iteration: int = 0
    best_loss: float = math.inf
    best_iteration: int = 0
    since_best: int = 0
    losses: list[float] = field(default_factory=list)  # relative loss ||A - F G^T||^2 / ||A||^2 per iteration
    stop_reason: str = ""
    seconds: float = 0.0  # wall time of the iterations (the initialization not included)
    cpu_seconds: float = 0.0  # CPU time of this process in the iterations (all threads)
