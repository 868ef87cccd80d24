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
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.core import distributed
from interp.core.checks import check_activations
from interp.core.device import resolve_device
from interp.core.fingerprint import make_fingerprint, settings_of
from interp.core.io import atomic_write_json
from interp.decompose.base import DecomposerError, read_decomposer, save_decomposer
from interp.decompose.snmf.checkpoint import Checkpoints
from interp.decompose.snmf.config import INITS, FitState, SNMFConfig
from interp.decompose.snmf.data import _Data, _GMatrix
from interp.decompose.snmf.init import initialize
from interp.decompose.snmf.ops import (
    dense_from_sparse,
    matmul_precision,
    multiplicative_update,
    project,
    solve_f,
    transposed,
    winner_take_all,
)
from interp.store import ActivationStore, data_fingerprint


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
        data_print = (
            data_fingerprint(data) if not self._distributed or isinstance(data, ActivationStore) else {}
        )
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
        scratch = None  # G memory-mapped without a checkpoint folder: a temporary one, removed after the fit
        if on_disk and ckpt is None:
            import tempfile

            ckpt = scratch = Path(tempfile.mkdtemp(prefix="snmf-"))
        if ckpt is not None:  # where each rank writes, and the checkpoint to resume from (any former split)
            settings = {"method": "snmf", **settings_of(self.config, resume=True)}
            fingerprint = make_fingerprint(settings, {**data_print, "n_tokens": n_total, "d": stream.d})
            layout = {"world_size": distributed.world_size(), "tokens": sizes.long().tolist()}
            ckpt = Checkpoints.open(
                ckpt, {**layout, "fingerprint": fingerprint}, temporary=scratch is not None
            )
        try:
            self.f = self._fit_level(stream, k, ckpt, on_disk, progress and distributed.rank() == 0, level=1)
        finally:
            if scratch is not None:  # POSIX: g_best's memory map stays readable after its file is removed
                import shutil

                shutil.rmtree(scratch, ignore_errors=True)
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
        restored = self._restore_level(stream, ckpt, buffers, k)
        if restored is not None:
            state, g_best, f_best, ag, gtg, norm_a2 = restored
        else:
            state = FitState()
            norm_a2 = float(self._reduce(torch.tensor(sum(float(x.square().sum(dtype=torch.float64)) for _, _, x in stream.chunks()),
                                                      dtype=torch.float64)))  # fmt: skip
            if norm_a2 == 0:
                raise DecomposerError("the activations are all zero; nothing to factorize")
            ag, gtg = initialize(cfg, stream, g, k, self._reduce)
            f_best = torch.zeros(d, k, device=device)

        bar = tqdm(total=cfg.max_iter, initial=state.iteration, desc=f"SNMF k={k}", disable=not progress)
        started, cpu_started = time.perf_counter() - state.seconds, time.process_time() - state.cpu_seconds
        while state.iteration < cfg.max_iter and not state.stop_reason:
            # 1-3: F from the sums of the previous pass, winner-take-all, rescale G's columns into F.
            f_dense, kept, g_norms = _sparse_f(ag, gtg, m, d, cfg.ridge)
            q = f_dense.T @ f_dense
            # 4-5: one pass over the tokens: update G, accumulate A G and G^T G for the next F, and <P, G>.
            spare = buffers[1] if g is buffers[0] else buffers[0]
            target = spare if g is g_best else g
            ag, gtg, cross = self._update_pass(stream, g, target, g_norms, f_dense, kept, q)
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
            if ckpt is not None and not ckpt.temporary and (state.iteration % cfg.checkpoint_every == 0
                                                            or state.stop_reason):  # fmt: skip
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

    def _restore_level(self, stream: _Data, ckpt: Checkpoints | None, buffers: list, k: int):
        """Resume a level from its checkpoint into `buffers` (G, G spare); returns (state, g_best, F_best, A G,
        G^T G, ||A||^2) or None when there is none."""
        if ckpt is None or ckpt.saved is None:
            return None
        saved_state, saved = ckpt.read_state()
        state = FitState(**saved_state)
        g = buffers[0]
        best_is_latest = state.best_iteration == state.iteration
        g_best = g if best_is_latest else buffers[1]
        for buffer, name in [(g, "G")] + ([] if best_is_latest else [(g_best, "G_best")]):
            # this rank's columns, from the ranks that saved them
            for start in range(0, stream.n, 1 << 20):
                end = min(stream.n, start + (1 << 20))
                buffer[start:end] = ckpt.read_columns(name, stream.offset + start, stream.offset + end, k)
        device = stream.device
        f_best, ag, gtg = saved["F_best"].to(device), saved["AG"].to(device), saved["GtG"].to(device)
        if state.stop_reason == "max_iter" and state.iteration < self.config.max_iter:
            state.stop_reason = ""  # asked for more iterations: continue
        return state, g_best, f_best, ag, gtg, float(saved["norm_a2"])

    def _update_pass(self, stream: _Data, g, target, g_norms, f_dense, kept, q):
        """Steps 4-5, one pass over the tokens: update G (read from `g`, written into `target`), accumulate
        A G `[d, k]` and G^T G `[k, k]` for the next F, and the loss's <P, G> (from P as it was)."""
        cfg, device, k = self.config, stream.device, f_dense.shape[1]
        ag, gtg = torch.zeros(stream.d, k, device=device), torch.zeros(k, k, device=device)
        cross = torch.zeros((), device=device, dtype=torch.float64)
        for start, end, x in stream.chunks():
            g_chunk = g[start:end].to(device) / g_norms[:, None]  # G^T [k, c]
            p = project(x, f_dense, kept)  # P^T = F^T A for these tokens
            with matmul_precision(cfg.fast_matmul):
                g_chunk = multiplicative_update(g_chunk, p, q, cfg.eps)
                ag.addmm_(x.T, g_chunk.T)
            cross += torch.dot(p.view(-1), g_chunk.view(-1))
            gtg.addmm_(g_chunk, g_chunk.T)
            target[start:end] = g_chunk
        return ag, gtg, cross

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


def _sparse_f(ag: torch.Tensor, gtg: torch.Tensor, m: int, d: int, ridge: float):
    """Steps 1-3: F from the sums of the previous pass, winner-take-all (m of d neurons per column), G's column
    norms moved into F. Returns (F dense `[d, k]`, the kept (indices, values) or None for a dense product, the
    norms `[k]`)."""
    f = solve_f(ag, gtg, ridge)
    g_norms = gtg.diagonal().clamp_min(1e-30).sqrt()  # ||G[:, j]|| before the rescale
    if m >= d:  # sparsity 1: every neuron kept, plain semi-NMF
        return f * g_norms, None, g_norms
    idx, vals = winner_take_all(f, m)
    vals = vals * g_norms[:, None]
    kept = (idx, vals) if 8 * m <= d else None  # the dense product when F is not sparse
    return dense_from_sparse(idx, vals, d), kept, g_norms
