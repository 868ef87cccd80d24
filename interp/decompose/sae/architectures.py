"""One spec per SAE architecture: `SAEModule` looks up every architecture-specific step in `ARCHITECTURES`.

| architecture | training codes | inference codes | sparsity term |
|---|---|---|---|
| relu | ReLU(pre) | same | l1_coeff * sum_i f_i ||W_dec[i]|| (warmed up) |
| topk | k largest of ReLU(pre) | same | none (k sets L0); AuxK on dead latents |
| batchtopk | k * batch largest of ReLU(pre) over the batch | pre > threshold (running estimate) | AuxK |
| jumprelu | pre * H(pre - theta), straight-through in theta | same | l0_coeff * L0 (straight-through) |
| gated | (pre > 0) * ReLU((pre - b_enc) exp(r_mag) + b_mag) (SAELens') | same | not trained by interp |
| matryoshka | as batchtopk | as batchtopk | AuxK; the MSE is the mean over nested prefixes (below) |

Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): one BatchTopK selection over the whole dictionary;
each prefix `[:w]` of the latents, for w in `matryoshka_widths` (cumulative, as SAELens' `matryoshka_widths`;
dictionary_learning's `group_sizes` are their differences), reconstructs x on its own, and the reconstruction
term is the mean of the prefixes' MSEs (dictionary_learning's equal group weights). Early latents must explain x
without the later ones, so general (parent) features settle there instead of being absorbed into specific ones.

`module` below is an `SAEModule`; `pre` its pre-activations `[B, d_sae]` (on scaled activations while training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from interp.core import distributed
from interp.decompose.sae.sparse import (
    JumpReLU,
    Selection,
    Step,
    make_selection,
    mask_selection,
    sparse_decode,
    topk_selection,
)


@dataclass(frozen=True)
class Architecture:
    """What differs between SAE architectures.

    With `select`, training takes the sparse TopK-style path: `select(module, pre)` picks the kept (token, latent)
    pairs without autograd and the codes are ReLU(pre) there. Without it, `train_codes(module, pre)` gives dense
    codes `[B, d_sae]` under autograd. `penalty(module, pre, codes, l1_coeff)` is added to the MSE.
    """

    encode: Callable[[Any, torch.Tensor], torch.Tensor]
    """(module, pre [n, d_sae]) -> inference codes [n, d_sae], >= 0."""
    select: Callable[[Any, torch.Tensor], Selection] | None = None
    train_codes: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    penalty: Callable[[Any, torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    threshold: Callable[[Any], torch.Tensor] | None = None
    """module -> per-latent inference threshold [d_sae]; None: no threshold (saved only when set)."""
    uses_k: bool = False
    aux_loss: bool = False
    """AuxK: dead latents reconstruct the residual."""
    resamples_dead: bool = False
    """The trainer resamples dead latents from badly reconstructed inputs."""
    reconstruction: (
        Callable[[Any, torch.Tensor, Selection, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    ) = None
    """Sparse path: (module, x, selection, kept values) -> (x_hat [B, d_in], the reconstruction term of the loss);
    None: x_hat from one sparse decode, and its MSE."""


def _relu(module, pre: torch.Tensor) -> torch.Tensor:
    return pre.clamp_min(0)


def _topk_codes(module, pre: torch.Tensor) -> torch.Tensor:
    vals, idx = pre.topk(module.config.k, dim=1)
    return torch.zeros_like(pre).scatter_(1, idx, vals.clamp_min(0))


def _thresholded(module, pre: torch.Tensor) -> torch.Tensor:
    return pre * (pre > module.threshold) * (pre > 0)


def _topk_select(module, pre: torch.Tensor) -> Selection:
    return topk_selection(pre, module.config.k)


@torch.no_grad()
def _batch_topk_select(module, pre: torch.Tensor) -> Selection:
    """Keep the k * B largest ReLU(pre) over the whole batch (under DDP: over every rank's part of it); update the
    running inference threshold with the smallest kept activation."""
    cfg = module.config
    relu = pre.clamp_min(0)
    cut = distributed.kth_largest(relu.reshape(-1), cfg.k * pre.shape[0] * distributed.world_size())
    smallest = cut  # smallest kept (fewer than k * B positive: the smallest positive)
    if float(cut) <= 0:  # the same on every rank
        positive = relu.masked_fill(relu <= 0, math.inf).min()
        smallest = distributed.all_reduce(positive, "min").nan_to_num(posinf=0.0)
    m = cfg.threshold_momentum
    first = module.batch_threshold == 0
    module.batch_threshold.copy_(
        torch.where(first, smallest, m * module.batch_threshold + (1 - m) * smallest)
    )
    return mask_selection((pre >= cut) & (pre > 0))


def _jumprelu_codes(module, pre: torch.Tensor) -> torch.Tensor:
    if module.config.target_l0 > 0 and not bool(module.threshold_ready):
        _start_threshold_at_target(module, pre)
    return JumpReLU.apply(pre, module.log_threshold.exp(), module.config.bandwidth)


@torch.no_grad()
def _start_threshold_at_target(module, pre: torch.Tensor) -> None:
    """Start each latent's threshold where it fires on target_l0 / n_features of this first batch's tokens (under
    DDP: the mean over ranks), so training starts at the target L0 with every latent alive, instead of crawling
    there from a small initial threshold."""
    cfg = module.config
    per_latent = max(1, round(cfg.target_l0 / cfg.n_features * pre.shape[0]))
    cut = pre.detach().float().topk(per_latent, dim=0).values[-1]  # [d_sae]
    cut = distributed.all_reduce_sum(cut) / distributed.world_size()
    module.log_threshold.copy_(cut.clamp_min(1e-6).log())
    module.threshold_ready.fill_(True)


def _l1_penalty(module, pre: torch.Tensor, codes: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """Decoder-norm-weighted L1."""
    return l1_coeff * (codes * module.W_dec.norm(dim=1)).sum(-1).mean()


def _l0_penalty(module, pre: torch.Tensor, codes: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    """l0_coeff * L0, or with a target (as Gemma Scope 2 trains JumpReLU) l0_coeff * d_in * (L0 / target_l0 - 1)^2
    (d_in: the MSE of activations scaled to norm sqrt(d_in) grows with it); L0 is the batch mean, with the
    straight-through gradient to theta. With l0_per_token the miss is each token's, averaged (SAELens' quadratic
    mode: it also pulls every token's L0 toward the target, not only the mean)."""
    cfg = module.config
    per_token = Step.apply(pre, module.log_threshold.exp(), cfg.bandwidth).sum(-1)  # [B]
    if cfg.target_l0 > 0 and cfg.l0_per_token:
        return cfg.l0_coeff * module.d_in * (per_token / cfg.target_l0 - 1).square().mean()
    l0 = per_token.mean()
    if cfg.target_l0 > 0:
        return cfg.l0_coeff * module.d_in * (l0 / cfg.target_l0 - 1).square()
    return cfg.l0_coeff * l0


def _nested_mse(
    module, x: torch.Tensor, sel: Selection, vals: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the prefixes `[:w]` (w in the module's widths) of the MSE of x reconstructed from that prefix's
    kept latents alone. One sparse decode gives every level: a token's kept latents are in ascending order, so its
    pairs of each group are contiguous and one bag per (token, group) sums them; prefixes are cumulative sums."""
    widths = module.config.widths
    n_levels, n_rows = len(widths), x.shape[0]
    boundaries = torch.tensor(widths[:-1], device=sel.cols.device, dtype=sel.cols.dtype)
    bags = sel.rows * n_levels + torch.bucketize(sel.cols, boundaries, right=True)  # non-decreasing
    offsets = torch.zeros(n_rows * n_levels + 1, dtype=torch.long, device=bags.device)
    offsets[1:] = torch.bincount(bags, minlength=n_rows * n_levels).cumsum(0)
    parts = sparse_decode(make_selection(bags, sel.cols, offsets), vals, module.W_dec)  # [B * levels, d_in]
    prefixes = parts.view(n_rows, n_levels, -1).cumsum(1) + module.b_dec
    return prefixes[:, -1], (x[:, None] - prefixes).square().sum(-1).mean(0).mean()


def _gated_codes(module, pre: torch.Tensor) -> torch.Tensor:
    """SAELens' gated encode from the gate pre-activation (pre - b_enc is the shared (x - b_dec) W_enc)."""
    magnitude = ((pre - module.b_enc) * module.r_mag.exp() + module.b_mag).clamp_min(0)
    return (pre > 0) * magnitude


def _theta(module) -> torch.Tensor:
    return module.log_threshold.exp()


def _batch_threshold(module) -> torch.Tensor:
    return module.batch_threshold.expand(module.config.n_features)


ARCHITECTURES: dict[str, Architecture] = {
    "relu": Architecture(encode=_relu, train_codes=_relu, penalty=_l1_penalty, resamples_dead=True),
    "topk": Architecture(encode=_topk_codes, select=_topk_select, uses_k=True, aux_loss=True),
    "batchtopk": Architecture(
        encode=_thresholded, select=_batch_topk_select, threshold=_batch_threshold, uses_k=True, aux_loss=True
    ),
    "jumprelu": Architecture(
        encode=_thresholded, train_codes=_jumprelu_codes, penalty=_l0_penalty, threshold=_theta
    ),
    "matryoshka": Architecture(
        encode=_thresholded, select=_batch_topk_select, threshold=_batch_threshold, uses_k=True, aux_loss=True,
        reconstruction=_nested_mse,
    ),
    "gated": Architecture(encode=_gated_codes),  # read / exported, not trained (interp.decompose.sae.gated)
}  # fmt: skip
