"""SNMF: semi-nonnegative matrix factorization of MLP activations (Shafran, Geiger, Geva).

The MLP hidden activations A `[d_mlp, n_tokens]` (here passed as x = A^T `[n_tokens, d_mlp]`) are factorized as
A ~ F G^T with F `[d_mlp, k]` of any sign (a feature = a sparse weighting of neurons) and G `[n_tokens, k]` >= 0
(how strongly each feature is present at each token). One iteration, as in the paper's official code:

1. F = A G (G^T G + ridge I)^-1                                   (regularized least squares)
2. winner-take-all: keep the m = ceil(sparsity * d_mlp) entries of largest |F| in each column, zero the rest
3. rescale: divide each column of G by its norm, multiply the matching column of F by it (F G^T unchanged)
4. G <- G * sqrt((P+ + G Q-) / (P- + G Q+ + eps)), P = A^T F, Q = F^T F  (Ding, Li & Jordan 2010; G stays >= 0)
5. loss = ||A - F G^T||^2 = ||A||^2 - 2 <P, G> + <Q, G^T G>   (from products already formed: no residual)

The best iterate (lowest loss) is returned. The fit stops at `max_iter`, or after `patience` iterations without a
relative improvement of the loss larger than `tol` (the official code's absolute tolerance on the squared loss
almost never fires on real activations; `stop_reason` says which rule stopped the fit).

All of it is one streaming pass over the tokens per iteration: a G update needs only its own tokens, and the next
F update only the sums A G and G^T G, accumulated in the same pass. A tensor is streamed in chunks, an
ActivationStore shard by shard (out of core: G is then a memory-mapped file), with the same arithmetic.
G is held feature-major (G^T `[k, n]`): the sparse product F^T A and the G update then run on contiguous rows.
Under torch.distributed each rank holds a block of the store's shards (its rows of G); the sums are all-reduced,
so every rank computes the F of a single-process fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.checks import all_finite, check_activations
from interp.core.device import resolve_device
from interp.core.io import atomic_write_json
from interp.decompose.base import DecomposerError, read_decomposer, save_decomposer
from interp.decompose.snmf.checkpoint import Checkpoints
from interp.store import ActivationStore

INITS = ("random", "svd", "kmeans")


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

    def __post_init__(self) -> None:
        if self.hierarchy:
            object.__setattr__(self, "hierarchy", tuple(int(r) for r in self.hierarchy))
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


# ------------------------------------------------------------------------------------------- data streaming
class _Data:
    """x = A^T `[n, d]` as chunks (row ranges), from a tensor or a store."""

    def __init__(self, data: ActivationStore | torch.Tensor, chunk_tokens: int, device: torch.device,
                 shards: range | None = None):  # fmt: skip
        self.device = device
        self.offset = 0  # global index of this process's first token (set by a distributed fit)
        self.shard_ids: list[int] = []
        if isinstance(data, ActivationStore):
            if data.n_tokens == 0:
                raise DecomposerError(f"the store at {data.path} is empty; capture some tokens first")
            self.store, self.neuron_major = data, []
            self.shard_ids = list(shards if shards is not None else range(data.n_shards))
            sizes = [data.manifest.shards[i].n_tokens for i in self.shard_ids]
            self.d = data.d
        else:
            check_activations(data, error=DecomposerError)
            self.store = None
            sizes = [min(chunk_tokens, data.shape[0] - i) for i in range(0, data.shape[0], chunk_tokens)]
            self.d = data.shape[1]
        offsets = np.cumsum([0, *sizes])
        self.ranges = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))
        self.n = int(offsets[-1])
        if self.store is None:  # neuron-major copies [d, n_chunk], made once: F^T A reads whole neuron rows
            # on the device: a GPU fit does not copy A over the bus every iteration (stores above
            # memory_limit_gb stream instead)
            self.neuron_major = [
                data[start:end].to(device).T.float().contiguous() for start, end in self.ranges
            ]

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, end, x `[end - start, d]`). In memory each is the transposed view of a neuron-major copy (for
        the sparse product F^T A); a store's shards come token-major (a transposing copy costs more than the
        dense product)."""
        for index, (start, end) in enumerate(self.ranges):
            if self.store is not None:
                x = self.store.load_shard(self.shard_ids[index])["acts"].to(self.device, torch.float32)
                if not all_finite(x):
                    raise DecomposerError(f"shard {index} of {self.store.path} holds NaN or inf")
            else:
                x = self.neuron_major[index].T
            yield start, end, x


class _GMatrix:
    """G >= 0 held feature-major, G^T `[k, n]`, in memory on the fit's device or in a memory-mapped .npy file;
    tokens are read and written by range (`g[start:end]` is `[k, end - start]`)."""

    def __init__(self, n: int, k: int, path: Path | None, device: torch.device):
        self.path, self._memmap = path, None
        if path is None:
            self.data = torch.zeros(k, n, device=device)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(k, n))
            self.data = torch.from_numpy(self._memmap)

    def __getitem__(self, tokens: slice) -> torch.Tensor:
        return self.data[:, tokens]

    def __setitem__(self, tokens: slice, value: torch.Tensor) -> None:
        self.data[:, tokens] = value.to(self.data.device, torch.float32)

    @property
    def codes(self) -> torch.Tensor:
        """G `[n, k]` (a view)."""
        return self.data.T

    def snapshot(self, target: Path) -> None:
        """Write G to `target` (.npy) atomically: an on-disk checkpoint that later iterations do not touch."""
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, self.data.cpu().numpy())
        tmp.replace(target)


# ------------------------------------------------------------------------------------------- the algorithm
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


class SNMF:
    """Semi-NMF decomposer: `directions` are F's unit columns, `encode` gives non-negative codes with F fixed."""

    config_class = SNMFConfig

    def __init__(self, config: SNMFConfig = SNMFConfig()):
        if config.init not in INITS:
            raise DecomposerError(f"unknown init {config.init!r}; valid: {', '.join(INITS)}")
        if not 0 < config.sparsity <= 1:
            raise DecomposerError(f"sparsity must be in (0, 1], got {config.sparsity}")
        if any(b >= a for a, b in zip(config.hierarchy, config.hierarchy[1:], strict=False)):
            raise DecomposerError(f"hierarchy ranks must decrease, got {config.hierarchy}")
        self.config = config
        self.n_features = config.n_features
        self.d_in: int | None = None
        self.f: torch.Tensor | None = None  # [d_in, k]
        self.state = FitState()
        self.levels: list[
            dict[str, torch.Tensor]
        ] = []  # hierarchy: per coarser level, F [d, r] and G [r_prev, r]

    # --------------------------------------------------------------------------------- interface
    @property
    def directions(self) -> torch.Tensor:
        """Unit feature vectors in activation space, `[n_features, d_in]`."""
        self._check_fitted()
        return torch.nn.functional.normalize(self.f.T, dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Non-negative codes `[n, k]` of `x [n, d_in]` with F fixed: least squares, clamped, then
        `encode_iters` multiplicative updates (the fit's own G rule)."""
        self._check_fitted()
        x = check_activations(x, self.d_in, error=DecomposerError).float()
        f = self.f.to(x.device)
        q = f.T @ f
        p = transposed(x @ f)  # [k, n]: the updates run feature-major
        eye = torch.eye(q.shape[0], device=x.device)
        g = torch.linalg.solve(q + self.config.ridge * eye, p).clamp_min(1e-6)
        with matmul_precision(self.config.fast_matmul):
            for _ in range(self.config.encode_iters):
                g = multiplicative_update(g, p, q, self.config.eps)
        return g.T

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """x_hat = codes F^T, `[n, d_in]`."""
        self._check_fitted()
        if codes.ndim != 2 or codes.shape[1] != self.n_features:
            raise DecomposerError(f"codes must be [n, {self.n_features}], got {list(codes.shape)}")
        return codes.float() @ self.f.T.to(codes.device)

    def feature_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's activation on new tokens: cosine between each token and each unit feature, `[n, k]`
        (can be negative; `encode` is the non-negative code)."""
        x = check_activations(x, self.d_in, error=DecomposerError).float()
        return torch.nn.functional.normalize(x, dim=1) @ self.directions.to(x.device).T

    def neurons(self, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The neurons that make feature `feature` and their weights (the non-zero entries of its column of F)."""
        column = self.f[:, feature]
        idx = column.nonzero()[:, 0]
        order = column[idx].abs().argsort(descending=True)
        return idx[order], column[idx[order]]

    def _check_fitted(self) -> None:
        if self.f is None:
            raise DecomposerError("this SNMF is not fitted; call fit(data) or SNMF.load(folder)")

    # --------------------------------------------------------------------------------- fitting
    def fit(
        self,
        data: ActivationStore | torch.Tensor,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
    ) -> SNMF:
        """Fit on activations `[n_tokens, d_mlp]` (a tensor, or a store streamed shard by shard)."""
        device = resolve_device(self.config.device)
        self._distributed = distributed.world_size() > 1
        shards = None
        if self._distributed:
            if self.config.init == "kmeans":
                raise DecomposerError(
                    "k-means init is not available in a distributed fit; use --init svd or random"
                )
            if isinstance(data, ActivationStore):  # each rank fits a contiguous block of the store's shards
                shards = range(*distributed.rank_range(data.n_shards))
        elif isinstance(data, ActivationStore) and not self._stream(data):
            data = data.load_all() if data.n_tokens else data
        stream = _Data(data, self.config.chunk_tokens, device, shards)
        sizes = self._reduce(torch.zeros(distributed.world_size(), dtype=torch.float64).index_fill_(0, torch.tensor([distributed.rank()]),
                                                                              float(stream.n)))  # fmt: skip
        stream.offset = int(sizes[: distributed.rank()].sum())  # first global row of this rank's tokens
        n_total = int(sizes.sum())
        k = self.n_features
        if k > min(n_total, stream.d):
            raise DecomposerError(
                f"n_features={k} is larger than min(n_tokens={n_total}, d_in={stream.d}); use a smaller --k "
                "or capture more tokens"
            )
        self.d_in = stream.d
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        on_disk = self.config.g_on_disk
        if on_disk is None:
            on_disk = stream.store is not None or stream.n * k * 4 > 2**30
        if on_disk and ckpt is None:
            import tempfile

            ckpt = Path(tempfile.mkdtemp(prefix="snmf-"))
        if ckpt is not None:  # where each rank writes, and the checkpoint to resume from (any former split)
            ckpt = Checkpoints.open(
                ckpt, {"world_size": distributed.world_size(), "tokens": sizes.long().tolist()}
            )
        self.f = self._fit_level(stream, k, ckpt, on_disk, progress and distributed.rank() == 0, level=1)
        self._distributed = False  # the hierarchy factorizes F, which every rank holds whole
        if self.config.hierarchy:
            self._fit_hierarchy(progress)
        return self

    def _reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks in a distributed fit (the sums the F update and the loss need); else unchanged."""
        return distributed.all_reduce_sum(tensor) if getattr(self, "_distributed", False) else tensor

    def _stream(self, store: ActivationStore) -> bool:
        if self.config.stream is not None:
            return self.config.stream
        return store.n_tokens * store.d * 4 > self.config.memory_limit_gb * 2**30

    def _fit_level(
        self, stream: _Data, k: int, ckpt: Checkpoints | None, on_disk: bool, progress: bool, level: int
    ) -> torch.Tensor:
        cfg, device, d = self.config, stream.device, stream.d
        m = max(1, math.ceil(cfg.sparsity * d))
        # Two buffers for G, no copies: `g` is the latest iterate, `g_best` the best one (the same buffer when the
        # latest is the best). A pass reads `g` and writes into the buffer that does not hold the best iterate.
        buffers = [
            _GMatrix(stream.n, k, ckpt.folder / name if on_disk else None, device)
            for name in ("G.npy", "G.spare.npy")
        ]
        g = g_best = buffers[0]
        state, resumed = FitState(), False
        if ckpt is not None and ckpt.saved is not None:
            saved_state, saved = ckpt.read_state()
            state = FitState(**saved_state)
            best_is_latest = state.best_iteration == state.iteration
            g_best = g if best_is_latest else buffers[1]
            for buffer, name in [(g, "G")] + ([] if best_is_latest else [(g_best, "G_best")]):
                # this rank's columns, from the ranks that saved them
                for start in range(0, stream.n, 1 << 20):
                    end = min(stream.n, start + (1 << 20))
                    buffer[start:end] = ckpt.read_columns(name, stream.offset + start, stream.offset + end, k)
            f_best, ag, gtg = saved["F_best"].to(device), saved["AG"].to(device), saved["GtG"].to(device)
            norm_a2 = float(saved["norm_a2"])
            resumed = True
            if state.stop_reason == "max_iter" and state.iteration < cfg.max_iter:
                state.stop_reason = ""  # asked for more iterations: continue
        if not resumed:
            norm_a2 = float(self._reduce(torch.tensor(sum(float(x.square().sum(dtype=torch.float64)) for _, _, x in stream.chunks()),
                                                      dtype=torch.float64)))  # fmt: skip
            if norm_a2 == 0:
                raise DecomposerError("the activations are all zero; nothing to factorize")
            ag, gtg = self._initialize(stream, g, k)
            f_best = torch.zeros(d, k, device=device)

        bar = tqdm(total=cfg.max_iter, initial=state.iteration, desc=f"SNMF k={k}", disable=not progress)
        started, cpu_started = time.perf_counter() - state.seconds, time.process_time() - state.cpu_seconds
        while state.iteration < cfg.max_iter and not state.stop_reason:
            # 1-3: F from the sums of the previous pass, winner-take-all, rescale G's columns into F.
            f = solve_f(ag, gtg, cfg.ridge)
            g_norms = gtg.diagonal().clamp_min(1e-30).sqrt()  # ||G[:, j]|| before the rescale
            if m < d:
                idx, vals = winner_take_all(f, m)
                vals = vals * g_norms[:, None]
                f_dense = dense_from_sparse(idx, vals, d)
                kept = (idx, vals) if 8 * m <= d else None  # the dense product when F is not sparse
            else:  # sparsity 1: every neuron kept, plain semi-NMF
                f_dense, kept = f * g_norms, None
            q = f_dense.T @ f_dense
            # 4-5: one pass over the tokens: update G, accumulate A G and G^T G for the next F, and <P, G>.
            ag, gtg = torch.zeros(d, k, device=device), torch.zeros(k, k, device=device)
            cross = torch.zeros((), device=device, dtype=torch.float64)
            spare = buffers[1] if g is buffers[0] else buffers[0]
            target = spare if g is g_best else g
            for start, end, x in stream.chunks():
                g_chunk = g[start:end].to(device) / g_norms[:, None]  # G^T [k, c]
                p = project(x, f_dense, kept)  # P^T = F^T A for these tokens
                with matmul_precision(cfg.fast_matmul):
                    g_chunk = multiplicative_update(g_chunk, p, q, cfg.eps)
                    ag.addmm_(x.T, g_chunk.T)
                cross += torch.dot(p.view(-1), g_chunk.view(-1))  # the loss's <P, G>, from P as it was
                gtg.addmm_(g_chunk, g_chunk.T)
                target[start:end] = g_chunk
            g = target
            self._reduce(ag)
            self._reduce(gtg)
            self._reduce(cross)
            loss = (norm_a2 - 2 * float(cross) + float((q.double() * gtg.double()).sum())) / norm_a2
            state.iteration += 1
            state.losses.append(loss)
            if loss < state.best_loss * (1 - cfg.tol):
                state.best_loss, state.best_iteration, state.since_best = loss, state.iteration, 0
                f_best, g_best = f_dense.clone(), g
            else:
                state.since_best += 1
                if state.since_best >= cfg.patience:
                    state.stop_reason = "patience"
            if state.iteration >= cfg.max_iter and not state.stop_reason:
                state.stop_reason = "max_iter"
            bar.update(1)
            bar.set_postfix(rel_error=f"{loss:.4f}", best=f"{state.best_loss:.4f}")
            state.seconds, state.cpu_seconds = (
                time.perf_counter() - started,
                time.process_time() - cpu_started,
            )
            if ckpt is not None and (state.iteration % cfg.checkpoint_every == 0 or state.stop_reason):
                # G_best is saved apart only when it is not the latest (the state says which)
                buffers_by_name = {"G": g} | ({"G_best": g_best} if g_best is not g else {})
                sums = {
                    "F_best": f_best,
                    "AG": ag,
                    "GtG": gtg,
                    "norm_a2": torch.tensor(norm_a2, dtype=torch.float64),
                }
                ckpt.write(sums, buffers_by_name, asdict(state), on_disk)
        bar.close()
        if level == 1:
            self.state = state
            self.g_best = g_best.codes.cpu()  # the codes of the fitted tokens (best iterate), [n_tokens, k]
        return f_best.cpu()

    def _initialize(self, stream: _Data, g: _GMatrix, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill G with the chosen init and return the sums (A G, G^T G) that the first F update needs."""
        cfg, device, d = self.config, stream.device, stream.d
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.init == "svd":
            # Ding et al.: F = U sqrt(S), G = clamp(V sqrt(S)); U, S^2 the top eigenpairs of A A^T
            top, u = self._top_eigenpairs(stream, k, gen)
            scale = top.clamp_min(1e-12) ** -0.25  # V sqrt(S) = A^T U S^-1/2, and S = sqrt(eigenvalues)
            sums = torch.zeros(k, device=device)  # orient each singular pair so that its V has positive mass
            for _, _, x in stream.chunks():
                sums += (x @ u).sum(0)
            self._reduce(sums)
            u = u * torch.where(sums < 0, -1.0, 1.0)
        elif cfg.init == "kmeans":
            centroids = self._kmeans(stream, k, gen)
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
        return self._reduce(ag), self._reduce(gtg)

    def _top_eigenpairs(
        self, stream: _Data, k: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k leading eigenpairs (values `[k]`, vectors `[d, k]`) of A A^T = sum over chunks of x^T x.

        svd_power_iters = 0: the exact Gram matrix and eigh (d^2 n + d^3 work, d^2 memory). Else randomized
        subspace iteration (Halko, Martinsson & Tropp 2011) without forming A A^T: each pass over the tokens
        multiplies a `[d, 2k]` basis by A A^T (4 n d k work), and the error falls as (s_2k / s_k)^(2 x passes)."""
        cfg, d, device = self.config, stream.d, stream.device
        if cfg.svd_power_iters == 0:
            gram = torch.zeros(d, d, device=device, dtype=torch.float64)
            for _, _, x in stream.chunks():
                gram += (x.T @ x).double()
            eigvals, eigvecs = torch.linalg.eigh(self._reduce(gram))
            return eigvals.flip(0)[:k].float(), eigvecs.flip(1)[:, :k].float()
        basis = torch.linalg.qr(torch.randn(d, min(d, 2 * k), generator=gen).to(device)).Q
        for step in range(cfg.svd_power_iters + 1):
            product = torch.zeros_like(basis)
            for _, _, x in stream.chunks():
                with matmul_precision(cfg.fast_matmul):
                    product += x.T @ (x @ basis)
            product = self._reduce(product)  # A A^T basis
            if step < cfg.svd_power_iters:
                basis = torch.linalg.qr(product).Q
        small = (basis.T @ product).double()  # basis^T A A^T basis [2k, 2k]
        eigvals, eigvecs = torch.linalg.eigh((small + small.T) / 2)
        return eigvals.flip(0)[:k].float(), basis @ eigvecs.flip(1)[:, :k].float()

    def _kmeans(self, stream: _Data, k: int, gen: torch.Generator, iters: int = 20) -> torch.Tensor:
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

    def _fit_hierarchy(self, progress: bool) -> None:
        """Each coarser level factorizes the previous level's F `[d, r_prev]` (its columns as the 'tokens')."""
        self.levels = []
        previous = self.f
        for rank in self.config.hierarchy[1:]:
            child = SNMF(SNMFConfig(**{**asdict(self.config), "hierarchy": (), "n_features": rank}))
            child.fit(previous.T.contiguous(), progress=progress)
            self.levels.append({"F": child.f, "G": child.g_best.clone()})  # G [r_prev, rank] >= 0
            previous = child.f

    def hierarchy_tree(self, top_parents: int = 1) -> dict:
        """The hierarchy as a JSON-able tree: levels (finest first) and, per feature of each level but the last,
        its parent(s) in the next level with the mixing weights G (each fine feature ~ sum of weights x parents)."""
        ranks = [self.n_features, *[lvl["F"].shape[1] for lvl in self.levels]]
        nodes = []
        for level, rank in enumerate(ranks, start=1):
            for feature in range(rank):
                node = {
                    "id": f"L{level}:{feature}",
                    "level": level,
                    "feature": feature,
                    "parents": [],
                    "children": [],
                }
                nodes.append(node)
        by_id = {n["id"]: n for n in nodes}
        for level, mix in enumerate(self.levels, start=1):
            weights = mix["G"]  # [rank of this level, rank of the next]
            top = weights.topk(min(top_parents, weights.shape[1]), dim=1)
            for child in range(weights.shape[0]):
                for w, parent in zip(top.values[child].tolist(), top.indices[child].tolist(), strict=True):
                    child_id, parent_id = f"L{level}:{child}", f"L{level + 1}:{parent}"
                    by_id[child_id]["parents"].append({"id": parent_id, "weight": w})
                    by_id[parent_id]["children"].append({"id": child_id, "weight": w})
        return {"levels": ranks, "nodes": nodes}

    # --------------------------------------------------------------------------------- files
    def save(self, folder: str | Path) -> None:
        self._check_fitted()
        tensors = {"F": self.f}
        for i, level in enumerate(self.levels, start=2):
            tensors[f"hierarchy.{i}.F"] = level["F"]
            tensors[f"hierarchy.{i}.G"] = level["G"]
        extra = {"d_in": self.d_in, "fit": {k: v for k, v in asdict(self.state).items() if k != "losses"},
                 "losses": self.state.losses}  # fmt: skip
        save_decomposer(folder, "snmf", self.config, tensors, extra)
        if self.levels:
            atomic_write_json(Path(folder) / "hierarchy.json", self.hierarchy_tree())

    @classmethod
    def load(cls, folder: str | Path) -> SNMF:
        meta, tensors = read_decomposer(folder)
        snmf = cls(SNMFConfig(**{**meta["config"], "hierarchy": tuple(meta["config"]["hierarchy"])}))
        snmf.f, snmf.d_in = tensors["F"], meta["d_in"]
        snmf.state = FitState(**meta["fit"], losses=meta.get("losses", []))
        level = 2
        while f"hierarchy.{level}.F" in tensors:
            snmf.levels.append({"F": tensors[f"hierarchy.{level}.F"], "G": tensors[f"hierarchy.{level}.G"]})
            level += 1
        return snmf
