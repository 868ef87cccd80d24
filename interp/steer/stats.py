"""Bootstrap confidence intervals over prompts and samples, and paired differences between methods.

Scores of a method are `[n_concepts, n_prompts, n_samples]` (one per generated text, at each concept's selected
strength). A bootstrap draw resamples prompts with replacement, then samples within each drawn prompt; every method
is resampled with the same draws, so a difference of two methods is paired by prompt and sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


@dataclass(frozen=True)
class Draws:
    """Bootstrap indices: `prompts [n_boot, n_prompts]`, `samples [n_boot, n_prompts, n_samples]`."""

    prompts: torch.Tensor
    samples: torch.Tensor

    @classmethod
    def make(cls, n_prompts: int, n_samples: int, n_boot: int = 1000, seed: int = 0) -> Draws:
        gen = torch.Generator().manual_seed(seed)
        prompts = torch.randint(0, n_prompts, (n_boot, n_prompts), generator=gen)
        samples = torch.randint(0, n_samples, (n_boot, n_prompts, n_samples), generator=gen)
        return cls(prompts, samples)


def bootstrap(scores: torch.Tensor, draws: Draws, level: float = 0.95) -> Interval:
    """Mean of `scores [n_concepts, n_prompts, n_samples]` with a percentile interval over the draws.

    Concepts with no score (all nan: no strength reached its target) are left out of the mean."""
    kept = scores[~scores.isnan().all(dim=(1, 2))].float()
    if kept.numel() == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    resampled = kept[:, draws.prompts[..., None], draws.samples]  # [n_concepts, n_boot, n_prompts, n_samples]
    means = resampled.mean(dim=(0, 2, 3))
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail])).tolist()
    return Interval(float(kept.mean()), lo, hi)


def paired_difference(a: torch.Tensor, b: torch.Tensor, draws: Draws, level: float = 0.95) -> Interval:
    """Mean of a - b (both `[n_concepts, n_prompts, n_samples]`, on the same prompts and samples) with its
    interval; concepts where either has no score are left out."""
    both = ~(a.isnan().all(dim=(1, 2)) | b.isnan().all(dim=(1, 2)))
    return bootstrap((a - b)[both], draws, level)
