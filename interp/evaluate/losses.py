"""The two next-token comparisons every evaluation shares: KL(clean || other) and CE loss recovered."""

from __future__ import annotations

import torch


def kl_rows(clean_logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(clean || other) per row `[n]`, from log-probabilities `[n, vocab]`."""
    return (clean_logprobs.exp() * (clean_logprobs - other_logprobs)).sum(-1)


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 = as good as the clean model, 0 = as bad as zero-ablation;
    NaN when zero-ablation costs nothing (no gap to recover)."""
    gap = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / gap if abs(gap) > 1e-9 else float("nan")
