"""Synthetic activations with known features, in the spirit of SAELens' SynthSAEBench (Chanin & Garriga-Alonso).

A `SyntheticModel` holds `n_features` unit feature vectors `[n_features, d]` (many features in a smaller space) and
a bias `[d]`; a sample is `x = codes @ features + bias` with sparse non-negative codes `[n, n_features]`:

1. firing probabilities: Zipf-like, p_i ~ 1 / i^exponent rescaled to [p_min, p_max] (feature 0 the most frequent);
2. correlation: a Gaussian copula with low-rank covariance F F^T + diag(1 - ||F_i||^2), F `[n_features, rank]`
   ~ N(0, scale^2); feature i fires where z_i > Phi^-1(1 - p_i) (so its marginal rate stays p_i);
3. magnitudes: mean falling linearly from `magnitude_start` (frequent) to `magnitude_end` (rare), per-feature
   std drawn from a folded normal |N(std_mean, std_std)|; values are clipped at 0;
4. hierarchy: `n_roots` trees with `branching` children per node down to `depth` levels, laid out breadth first
   (roots are features 0..n_roots-1, the most frequent). A child fires only where its parent fires, scaled by
   parent / mean(parent); siblings are mutually exclusive (where several fire, one chosen at random is kept).
   Children's probabilities are compensated (divided by the parent's, times 1 + the siblings' share) so the
   rates after the hierarchy stay close to the Zipf ones, as SynthSAEBench's `compensate_probabilities`.

The neuron-sparse variant (`support > 0`) gives every feature a vector supported on a fraction `support` of the
dimensions (about 1%, at least 4: the structure SNMF assumes of MLP neurons) instead of a dense random direction.
Everything is tensor code; the only loop is over the hierarchy's levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SyntheticConfig:
    n_features: int = 16384
    """Ground-truth features."""
    d: int = 768
    """Dimensions of the activation space."""
    zipf_exponent: float = 0.5
    p_max: float = 0.4
    """Firing probability of the most frequent feature."""
    p_min: float = 5e-4
    """Firing probability of the rarest feature."""
    n_roots: int = 128
    """Hierarchy: trees (0 = no hierarchy)."""
    branching: int = 4
    depth: int = 3
    """Hierarchy: levels below the roots."""
    mutually_exclusive: bool = True
    """Siblings never fire together."""
    correlation_rank: int = 25
    correlation_scale: float = 0.1
    magnitude_start: float = 5.0
    magnitude_end: float = 4.0
    magnitude_std_mean: float = 0.5
    magnitude_std_std: float = 0.5
    bias_norm: float = 0.5
    support: float = 0.0
    """Neuron-sparse variant: fraction of the d dimensions each feature vector is supported on (0 = dense)."""
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 < self.p_min < self.p_max <= 1:
            raise ValueError(f"need 0 < p_min < p_max <= 1, got p_min={self.p_min}, p_max={self.p_max}")
        if self.n_hierarchy > self.n_features:
            raise ValueError(
                f"the hierarchy ({self.n_roots} roots, branching {self.branching}, depth {self.depth}) needs "
                f"{self.n_hierarchy} features but n_features={self.n_features}; lower n_roots or depth"
            )
        if not 0 <= self.support <= 1:
            raise ValueError(f"support must be in [0, 1], got {self.support}")

    @property
    def level_sizes(self) -> list[int]:
        """Features per hierarchy level, roots first."""
        return (
            [self.n_roots * self.branching**level for level in range(self.depth + 1)] if self.n_roots else []
        )

    @property
    def n_hierarchy(self) -> int:
        return sum(self.level_sizes)


MIN_SUPPORT = 4
"""Neuron-sparse variant: the fewest dimensions a feature vector is supported on."""


def zipf_probabilities(n: int, exponent: float, p_max: float, p_min: float) -> torch.Tensor:
    """1 / rank^exponent rescaled linearly to [p_min, p_max], descending, `[n]`."""
    raw = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
    if n == 1:
        return torch.tensor([p_max], dtype=torch.float32)
    return (p_min + (p_max - p_min) * (raw - raw.min()) / (raw.max() - raw.min())).float()


def feature_vectors(n: int, d: int, support: float, gen: torch.Generator) -> torch.Tensor:
    """Unit rows `[n, d]`: dense Gaussian directions, or supported on ceil(support * d) random dimensions (at
    least MIN_SUPPORT: on one or two dimensions many features would share a direction)."""
    values = torch.randn(n, d, generator=gen)
    if support > 0:
        m = min(d, max(MIN_SUPPORT, math.ceil(support * d)))
        keep = torch.rand(n, d, generator=gen).topk(m, dim=1).indices
        values = torch.zeros(n, d).scatter_(1, keep, values.gather(1, keep))
    return values / values.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SyntheticModel:
    """Known features and a sampler of (activations, true codes); see the module docstring."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), device: str | torch.device = "cpu"):
        cfg = self.config = config
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(cfg.seed)
        n = cfg.n_features
        self.features = feature_vectors(n, cfg.d, cfg.support, gen)  # [n, d]
        bias = torch.randn(cfg.d, generator=gen)
        self.bias = bias / bias.norm() * cfg.bias_norm  # [d]
        self.base_prob = zipf_probabilities(n, cfg.zipf_exponent, cfg.p_max, cfg.p_min)  # [n]
        self.parent = self._parents()  # [n], -1: none
        self.fire_prob = self._compensated(self.base_prob)  # [n]
        self.mean_magnitude = torch.linspace(cfg.magnitude_start, cfg.magnitude_end, n)
        self.std_magnitude = (
            cfg.magnitude_std_mean + cfg.magnitude_std_std * torch.randn(n, generator=gen)
        ).abs()
        factor = torch.randn(n, max(cfg.correlation_rank, 1), generator=gen) * cfg.correlation_scale
        if cfg.correlation_rank == 0:
            factor.zero_()
        norms = factor.square().sum(1)
        if norms.max() >= 1:  # keep the copula a valid correlation matrix
            factor = factor * math.sqrt(0.99 / float(norms.max()))
        self.corr_factor = factor  # [n, rank]
        self.corr_diag = 1 - factor.square().sum(1)  # [n]
        self.threshold = torch.special.ndtri(1 - self.fire_prob.double()).float()  # [n]
        for name in ("features", "bias", "parent", "fire_prob", "mean_magnitude", "std_magnitude",
                     "corr_factor", "corr_diag", "threshold"):  # fmt: skip
            setattr(self, name, getattr(self, name).to(self.device))

    # ------------------------------------------------------------------------------------ structure
    def _parents(self) -> torch.Tensor:
        """Parent index of every feature (breadth-first layout), -1 for roots and features outside the trees."""
        parent = torch.full((self.config.n_features,), -1, dtype=torch.long)
        start, sizes = 0, self.config.level_sizes
        for upper, lower in zip(sizes, sizes[1:], strict=False):
            child_start = start + upper
            parent[child_start : child_start + lower] = start + torch.arange(lower) // self.config.branching
            start = child_start
        return parent

    def level_slices(self) -> list[tuple[slice, slice]]:
        """(parents, children) index ranges per hierarchy level below the roots; children of parent j of a level
        are `branching` consecutive features."""
        out, start, sizes = [], 0, self.config.level_sizes
        for upper, lower in zip(sizes, sizes[1:], strict=False):
            out.append((slice(start, start + upper), slice(start + upper, start + upper + lower)))
            start += upper
        return out

    @property
    def is_parent(self) -> torch.Tensor:
        """Features with children `[n]` (bool)."""
        mask = torch.zeros(self.config.n_features, dtype=torch.bool, device=self.parent.device)
        mask[self.parent[self.parent >= 0].unique()] = True
        return mask

    @property
    def is_child(self) -> torch.Tensor:
        """Features with a parent `[n]` (bool)."""
        return self.parent >= 0

    def _compensated(self, base: torch.Tensor) -> torch.Tensor:
        """Sampling probabilities that give children about their base rate after gating and exclusion."""
        prob = base.clone()
        b = self.config.branching
        for parents, children in self.level_slices():
            p_parent = base[parents].repeat_interleave(b)  # [n_children]
            p_child = base[children]
            factor = 1 / p_parent
            if self.config.mutually_exclusive:
                siblings = p_child.view(-1, b).sum(1).repeat_interleave(b)
                factor = factor * (1 + (siblings - p_child).clamp_min(0) / p_parent)
            prob[children] = (p_child * factor).clamp(max=1.0)
        return prob

    # ------------------------------------------------------------------------------------ sampling
    def sample_codes(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """True codes `[n, n_features]` (>= 0) drawn with generator `gen` (on this model's device).

        Which features fire is decided first (copula, then the hierarchy level by level on the booleans); the
        magnitudes are drawn only for the features that fire, and children are then scaled by their parents."""
        cfg = self.config
        rank = self.corr_factor.shape[1]
        z = torch.randn(n, cfg.n_features, generator=gen, device=self.device) * self.corr_diag.sqrt()
        z += torch.randn(n, rank, generator=gen, device=self.device) @ self.corr_factor.T
        fires = z > self.threshold  # [n, n_features]
        b = cfg.branching
        for parents, children in self.level_slices():
            child = fires[:, children] & fires[:, parents].repeat_interleave(b, dim=1)
            if cfg.mutually_exclusive:  # keep one firing sibling, chosen at random
                groups = child.view(n, -1, b)
                score = torch.rand(groups.shape, generator=gen, device=self.device) * groups
                pick = torch.zeros_like(groups).scatter_(2, score.argmax(2, keepdim=True), True)
                child = (groups & pick).view(n, -1)
            fires[:, children] = child
        rows, cols = fires.nonzero(as_tuple=True)
        noise = torch.randn(rows.numel(), generator=gen, device=self.device) * self.std_magnitude[cols]
        codes = torch.zeros(n, cfg.n_features, device=self.device)
        codes[rows, cols] = (self.mean_magnitude[cols] + noise).clamp_min(0)
        # parents first: their values are final when their children read them
        for _, children in self.level_slices():
            sel = (cols >= children.start) & (cols < children.stop)
            r, c = rows[sel], cols[sel]
            p = self.parent[c]
            codes[r, c] *= codes[r, p] / self.mean_magnitude[p]
        return codes

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations `[n, d]`, true codes `[n, n_features]`)."""
        codes = self.sample_codes(n, gen)
        return codes @ self.features + self.bias, codes

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def dataset(self, n: int, seed: int, batch_size: int = 8192) -> torch.Tensor:
        """`n` activations `[n, d]` (float32, on this model's device), sampled in batches from `seed`."""
        gen = self.generator(seed)
        parts = [self.sample(min(batch_size, n - start), gen)[0] for start in range(0, n, batch_size)]
        return torch.cat(parts)
