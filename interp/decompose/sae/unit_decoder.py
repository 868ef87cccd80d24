"""Unit-norm decoder rows, kept so by the trainer: project the gradient, then renormalize after each step."""

from __future__ import annotations

import torch


@torch.no_grad()
def normalize_rows_(w_dec: torch.Tensor) -> None:
    """Scale each row of `w_dec [n_features, d_in]` to unit norm, in place."""
    w_dec.div_(w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def remove_parallel_gradient_(w_dec: torch.Tensor) -> None:
    """Project out of `w_dec.grad` its component along each (unit) row, so a step keeps the rows unit-norm."""
    if w_dec.grad is not None:
        parallel = (w_dec.grad * w_dec).sum(1, keepdim=True)
        w_dec.grad.sub_(parallel * w_dec)
