"""MP-SAE: a sparse autoencoder whose encoder is matching pursuit over its own dictionary (Costa et al.).

Encoding x `[n, d_in]` with a unit-norm dictionary W_dec `[n_atoms, d_in]` and pre-bias b_dec:
    r = x - b_dec
    repeat `k` steps (or, at inference, until ||r|| < residual_threshold):
        j = argmax_i ReLU(<r, W_dec[i]>);  c = <r, W_dec[j]>  (codes stay >= 0; an atom may be chosen again)
        code[j] += c;  r = r - c W_dec[j]              (so ||r||^2 drops by c^2: it never grows)
    x_hat = code W_dec + b_dec
Selection runs without gradient on scores kept up to date with the Gram matrix (scores -= c * G[j]: no
[n, d_in] x [d_in, n_atoms] product per step), over blocks of tokens. Training then takes the
gradient of the MSE through the chosen atoms only, with a hand-written backward over the steps
(`_PursuitResidual`; equal to autograd through the plain loop, tests/test_sae.py). k sets the sparsity; atoms are
renormalized after every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from interp.core.checks import check_ranges
from interp.decompose.base import DecomposerError
from interp.decompose.sae import SAE
from interp.decompose.sae.unit_decoder import normalize_rows_, remove_parallel_gradient_

GROUP = 64
"""Atoms per group in the two-level argmax of the pursuit."""
BACKWARD_ROWS = 256
"""Tokens per block of the backward walk (its `[rows, d_in]` tensors stay in cache: measured best of 64-4096)."""


MPSAE_RANGES = {
    "n_features": ">= 1", "inference_steps": ">= 0", "residual_threshold": ">= 0", "lr": "> 0", "batch_size": ">= 1",
    "n_steps": ">= 1", "warmup_steps": ">= 0", "decay_start": "in [0, 1]", "dead_tokens": ">= 1",
    "checkpoint_every": ">= 1",
}  # fmt: skip


@dataclass(frozen=True)
class MPSAEConfig:
    n_features: int = 4096
    """Dictionary atoms."""
    k: int = 32
    """Pursuit steps while training (and at inference unless inference_steps is set)."""
    inference_steps: int = 0
    """Pursuit steps for encode (0 = k); more steps lower the error without retraining."""
    residual_threshold: float = 0.0
    """encode stops a token's pursuit once ||r|| < this (raw activation units; 0 = never)."""
    lr: float = 1e-3
    """AdamW learning rate (the paper: ~1e-3 for LLM activations)."""
    batch_size: int = 4096
    n_steps: int = 1000
    warmup_steps: int = 50
    decay_start: float = 0.8
    dead_tokens: int = 1_000_000
    normalize: bool = True
    seed: int = 0
    device: str = "auto"
    autocast: bool = False
    """Pursuit accumulates many small updates: float32 by default."""
    checkpoint_every: int = 200

    RESUME_FREE: ClassVar[tuple[str, ...]] = ("inference_steps", "residual_threshold")
    """Used by `encode` only: a checkpointed training resumes whatever they are."""

    def __post_init__(self) -> None:
        check_ranges(self, MPSAE_RANGES, DecomposerError)
        if not 0 < self.k <= self.n_features:
            raise DecomposerError(f"k={self.k} must be between 1 and n_features={self.n_features}")

    @property
    def learning_rate(self) -> float:
        return self.lr


class _PursuitResidual(torch.autograd.Function):
    """The residual r_T `[B, d]` after T pursuit steps (idx, coefs) `[B, T]` chosen without gradient:
        r_0 = x - b_dec;  c_t = ReLU(<r_{t-1}, a_t>);  r_t = r_{t-1} - c_t a_t    (a_t = W[j_t])
    Forward: r_T = r_0 - sum_t c_t a_t (one embedding_bag; the c_t are the selection's values).

    Backward: one loop back over the steps, O(B d) work each (no [n_atoms, n_atoms] matrix, no Gram matrix).
    With g_t = dL/dr_t and m_t = [c_t > 0] (c_t = ReLU(.) depends on r_{t-1} and a_t):
        e_t = m_t <g_t, a_t>;   g_{t-1} = g_t - e_t a_t;   r_{t-1} = r_t + c_t a_t
        dL/dW[j_t] += -c_t g_t - e_t r_{t-1};   dL/dr_0 = g_0
    Only the chosen atoms carry gradient (index_add of one `[B, d]` block a step)."""

    @staticmethod
    def forward(ctx, r0, w_dec, idx, coefs):
        r_final = r0 - nn.functional.embedding_bag(idx, w_dec, mode="sum", per_sample_weights=coefs)
        ctx.save_for_backward(r_final, w_dec, idx, coefs)
        return r_final

    @staticmethod
    def backward(ctx, grad):
        r_final, w_dec, idx, coefs = ctx.saved_tensors
        grad_w, grad_r0 = torch.zeros_like(w_dec), torch.empty_like(grad)
        used = coefs > 0
        for start in range(0, idx.shape[0], BACKWARD_ROWS):  # blocks of tokens, so g and r stay in cache
            rows = slice(start, start + BACKWARD_ROWS)
            g, r = grad[rows].clone(), r_final[rows].clone()  # g_t, r_t `[rows, d]`, walked back from t = T
            for step in range(idx.shape[1] - 1, -1, -1):
                j = idx[rows, step]
                atom = w_dec.index_select(0, j)  # a_t
                c = coefs[rows, step, None]
                e = torch.where(used[rows, step, None], torch.linalg.vecdot(g, atom)[:, None], 0.0)
                r.addcmul_(atom, c)  # r_{t-1}
                grad_w.index_add_(0, j, torch.addcmul(g * c, r, e), alpha=-1)
                g.addcmul_(atom, e, value=-1)  # g_{t-1}
            grad_r0[rows] = g
        return grad_r0, grad_w, None, None


def _update_sparse(scores: torch.Tensor, gram: torch.Tensor, j: torch.Tensor, c: torch.Tensor) -> None:
    """scores `[rows, width]` -= c[b] * gram[j[b]] as one sparse (one entry a row) x dense product: reads each
    Gram row into its score row directly, no gathered copy (CPU: ~25% off the pursuit, benchmarks/profile_sae.py)."""
    rows = torch.arange(j.shape[0], device=j.device)
    one_hot = torch.sparse_coo_tensor(
        torch.stack([rows, j]), c, (j.shape[0], gram.shape[0]), check_invariants=False
    )
    scores.addmm_(one_hot, gram, alpha=-1)


def _update_gathered(scores: torch.Tensor, gram: torch.Tensor, j: torch.Tensor, c: torch.Tensor) -> None:
    """The same update as a gather of Gram rows and one fused multiply-add (accelerators)."""
    scores.addcmul_(gram.index_select(0, j), c[:, None], value=-1)


SCORE_UPDATE = {"cpu": _update_sparse}
"""The pursuit's score update by device type (others: `_update_gathered`)."""


def symmetric_gram(atoms: torch.Tensor, blocks: int = 8) -> torch.Tensor:
    """atoms atoms^T `[n, n]` from the products of blocks of rows on and above the diagonal only, the rest
    mirrored: (blocks + 1) / (2 blocks) of the multiply-adds of one full product."""
    n = atoms.shape[0]
    gram = atoms.new_empty(n, n)
    bounds = [n * i // blocks for i in range(blocks + 1)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        gram[lo:hi, lo:] = atoms[lo:hi] @ atoms[lo:].T
        gram[hi:, lo:hi] = gram[lo:hi, hi:].T
    return gram


class MPSAEModule(nn.Module):
    def __init__(self, config: MPSAEConfig, d_in: int):
        super().__init__()
        self.config, self.d_in = config, d_in
        gen = torch.Generator().manual_seed(config.seed)
        atoms = torch.randn(config.n_features, d_in, generator=gen)
        self.W_dec = nn.Parameter(atoms / atoms.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.tensor(1.0))

    def gram(self) -> torch.Tensor:
        """W_dec W_dec^T `[n_atoms, width]`, zero columns past n_atoms up to a multiple of GROUP (for the
        two-level argmax); reused while W_dec is unchanged (inference over many batches)."""
        atoms = self.W_dec.detach()
        key = (atoms.data_ptr(), atoms._version, atoms.dtype, atoms.device)
        cached = getattr(self, "_gram_cache", None)
        if cached is None or cached[0] != key:
            work = atoms.float() if atoms.dtype in (torch.float16, torch.bfloat16) else atoms
            n_atoms = work.shape[0]
            gram, width = symmetric_gram(work), -(-n_atoms // GROUP) * GROUP
            if width != n_atoms:
                gram = nn.functional.pad(gram, (0, width - n_atoms))
            cached = self._gram_cache = (key, gram)
        return cached[1]

    @torch.no_grad()
    def pursue(
        self, residual: torch.Tensor, steps: int, threshold: float = 0.0, block_rows: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy selection: atom indices `[n, steps]` and coefficients `[n, steps]` (0 once a token is done).

        Tokens go in blocks of `block_rows` (bounds the `[block_rows, n_atoms]` score block; on CPU the time
        hardly moves from 32 to 4096 rows: each step reads `block_rows` Gram rows from memory either way). A step
        is a two-level argmax (max of each group of GROUP atoms, then the best group, then the atom within it: far
        cheaper than a flat max with indices) and one score update scores -= c * G[j] (SCORE_UPDATE).
        """
        gram = self.gram()
        n_atoms, width = gram.shape
        atoms = self.W_dec.detach().to(gram.dtype)
        residual = residual.to(gram.dtype)
        n = residual.shape[0]
        idx = torch.zeros(n, steps, dtype=torch.long, device=residual.device)
        coefs = torch.zeros(n, steps, dtype=gram.dtype, device=residual.device)
        scores, update = None, SCORE_UPDATE.get(residual.device.type, _update_gathered)
        for start in range(0, n, block_rows):  # loops over blocks and steps; tokens and atoms are tensor dims
            r = residual[start : start + block_rows]
            rows = torch.arange(r.shape[0], device=r.device)
            if scores is None or scores.shape[0] != r.shape[0]:
                scores = torch.full((r.shape[0], width), -math.inf, dtype=gram.dtype, device=r.device)
            if width == n_atoms:
                torch.mm(r, atoms.T, out=scores)
            else:
                scores[:, :n_atoms] = r @ atoms.T  # the padding stays -inf: never chosen
            grouped = scores.view(r.shape[0], width // GROUP, GROUP)
            norm2 = r.square().sum(-1) if threshold > 0 else None
            active = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
            for step in range(steps):
                if norm2 is not None:
                    active &= norm2 > threshold**2
                best, group = grouped.amax(dim=2).max(dim=1)
                j = group * GROUP + grouped[rows, group].argmax(dim=1)
                best.clamp_min_(0)  # all scores <= 0: c = 0, nothing changes (codes stay >= 0)
                if norm2 is not None:
                    best *= active
                idx[start : start + block_rows, step] = j
                coefs[start : start + block_rows, step] = best
                update(scores, gram, j, best)  # scores -= c * G[j]
                if norm2 is not None:
                    norm2 -= best.square()
        return idx, coefs

    def codes_from(self, idx: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(idx.shape[0], self.config.n_features, device=coefs.device, dtype=coefs.dtype)
        return out.scatter_add_(1, idx, coefs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.config.inference_steps or self.config.k
        idx, coefs = self.pursue(
            x * self.scale - self.b_dec, steps, self.config.residual_threshold * float(self.scale)
        )
        return self.codes_from(idx, coefs).to(x.dtype) / self.scale

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec / self.scale

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor, l1_coeff: float
    ) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            idx, coefs = self.pursue(x - self.b_dec, self.config.k)
        residual = _PursuitResidual.apply(x - self.b_dec, self.W_dec, idx, coefs.to(x.dtype))
        mse = residual.square().sum(-1).mean()
        fired = torch.zeros(self.config.n_features, device=x.device).index_add_(
            0, idx.reshape(-1), (coefs > 0).float().reshape(-1)
        )
        chosen = torch.where(coefs > 0, idx, -1).sort(dim=1).values  # distinct atoms with a positive code
        distinct = (chosen[:, :1] >= 0).sum() + (
            (chosen[:, 1:] != chosen[:, :-1]) & (chosen[:, 1:] >= 0)
        ).sum()
        variance = float(x.detach().var(0, correction=0).sum())
        value = float(mse.detach())
        return mse, {
            "mse": value,
            "fvu": value / max(variance, 1e-12),
            "l0": float(distinct) / x.shape[0],
            "fired": fired,
        }

    def normalize_decoder(self) -> None:
        normalize_rows_(self.W_dec)

    def remove_parallel_gradient(self) -> None:
        remove_parallel_gradient_(self.W_dec)

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Pursuit on raw activations with unit atoms gives raw coefficients: only b_dec carries the scale."""
        self.b_dec.div_(self.scale)
        self.scale.fill_(1.0)


class MPSAE(SAE):
    """Matching-pursuit SAE decomposer; trained by the shared trainer, tied unit-norm dictionary."""

    config_class = MPSAEConfig
    module_class = MPSAEModule

    @property
    def method(self) -> str:
        return "mpsae"

    def tensors(self) -> dict[str, torch.Tensor]:
        m = self._check()
        if float(m.scale) != 1.0:
            raise DecomposerError("fold the activation scale before saving (training does this at its end)")
        return {"W_dec": m.W_dec.detach().float().cpu(), "b_dec": m.b_dec.detach().float().cpu()}

    def with_steps(self, steps: int, residual_threshold: float = 0.0) -> MPSAE:
        """The same dictionary, encoding with another number of pursuit steps (adaptive sparsity)."""
        from dataclasses import replace

        clone = MPSAE(
            replace(self.config, inference_steps=steps, residual_threshold=residual_threshold), self.d_in
        )
        clone.module.load_state_dict(self.module.state_dict())
        return clone


def pursuit_reference(x: torch.Tensor, atoms: torch.Tensor, b_dec: torch.Tensor, steps: int) -> torch.Tensor:
    """Plain matching pursuit, one token at a time (for tests): codes `[n, n_atoms]`."""
    codes = torch.zeros(x.shape[0], atoms.shape[0])
    for row in range(x.shape[0]):
        r = x[row] - b_dec
        for _ in range(steps):
            scores = (atoms @ r).clamp_min(0)
            j = int(scores.argmax())
            c = float(scores[j])
            if c <= 0:
                break
            codes[row, j] += c
            r = r - c * atoms[j]
    return codes
