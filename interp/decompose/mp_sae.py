"""MP-SAE: a sparse autoencoder whose encoder is matching pursuit over its own dictionary (Costa et al.).

Encoding x `[n, d_in]` with a unit-norm dictionary W_dec `[n_atoms, d_in]` and pre-bias b_dec:
    r = x - b_dec
    repeat `k` steps (or, at inference, until ||r|| < residual_threshold):
        j = argmax_i ReLU(<r, W_dec[i]>);  c = <r, W_dec[j]>  (codes stay >= 0; an atom may be chosen again)
        code[j] += c;  r = r - c W_dec[j]              (so ||r||^2 drops by c^2: it never grows)
    x_hat = code W_dec + b_dec
Selection runs without gradient on scores kept up to date with the Gram matrix (scores -= c * G[j]: no
[n, d_in] x [d_in, n_atoms] product per step); the coefficients are then recomputed with gradient through the
chosen atoms only. Training minimizes the MSE (k sets the sparsity); atoms are renormalized after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interp.decompose.base import DecomposerError
from interp.decompose.sae import SAE


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

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.n_features:
            raise DecomposerError(f"k={self.k} must be between 1 and n_features={self.n_features}")

    @property
    def learning_rate(self) -> float:
        return self.lr


class MPSAEModule(nn.Module):
    def __init__(self, config: MPSAEConfig, d_in: int):
        super().__init__()
        self.config, self.d_in = config, d_in
        gen = torch.Generator().manual_seed(config.seed)
        atoms = torch.randn(config.n_features, d_in, generator=gen)
        self.W_dec = nn.Parameter(atoms / atoms.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("scale", torch.tensor(1.0))

    @torch.no_grad()
    def pursue(
        self, residual: torch.Tensor, steps: int, threshold: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy selection: atom indices `[n, steps]` and coefficients `[n, steps]` (0 once a token is done)."""
        atoms = self.W_dec.float()
        scores = residual.float() @ atoms.T  # [n, n_atoms]
        gram = atoms @ atoms.T
        norm2 = residual.float().square().sum(-1)
        active = torch.ones(residual.shape[0], dtype=torch.bool, device=residual.device)
        idx = torch.zeros(residual.shape[0], steps, dtype=torch.long, device=residual.device)
        coefs = torch.zeros(residual.shape[0], steps, device=residual.device)
        for step in range(steps):  # a loop over pursuit steps; every token and atom is handled at once
            if threshold > 0:
                active &= norm2 > threshold**2
            best, j = scores.clamp_min(0).max(dim=1)
            best = best * active
            idx[:, step], coefs[:, step] = j, best
            scores -= best[:, None] * gram[j]
            norm2 = norm2 - best.square()
        return idx, coefs

    def codes_from(self, idx: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(idx.shape[0], self.config.n_features, device=coefs.device, dtype=coefs.dtype)
        return out.scatter_add_(1, idx, coefs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.config.inference_steps or self.config.k
        idx, coefs = self.pursue(
            x * self.scale - self.b_dec, steps, self.config.residual_threshold * float(self.scale)
        )
        return self.codes_from(idx, coefs) / self.scale

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.W_dec + self.b_dec / self.scale

    def training_loss(
        self, x: torch.Tensor, dead: torch.Tensor, l1_coeff: float
    ) -> tuple[torch.Tensor, dict]:
        idx, _ = self.pursue(x - self.b_dec, self.config.k)
        residual = x - self.b_dec
        coefs = []
        for step in range(self.config.k):  # recompute the coefficients with gradient through the chosen atoms
            atom = self.W_dec[idx[:, step]]
            c = (residual * atom).sum(-1).clamp_min(0)
            residual = residual - c[:, None] * atom
            coefs.append(c)
        mse = residual.square().sum(-1).mean()
        coefs = torch.stack(coefs, 1).detach()
        fired = torch.zeros(self.config.n_features, device=x.device).index_add_(
            0, idx.reshape(-1), (coefs > 0).float().reshape(-1)
        )
        l0 = float((self.codes_from(idx, coefs) > 0).sum(1).float().mean())
        variance = float((x - x.mean(0)).square().sum(-1).mean())
        value = float(mse.detach())
        return mse, {"mse": value, "fvu": value / max(variance, 1e-12), "l0": l0, "fired": fired}

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        if self.W_dec.grad is not None:
            self.W_dec.grad.sub_((self.W_dec.grad * self.W_dec).sum(1, keepdim=True) * self.W_dec)

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
