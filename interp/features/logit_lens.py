"""Logit lens of feature directions: which tokens a direction promotes and suppresses when read out.

A direction at an `mlp_hidden` site `[d_mlp]` goes through the MLP's out (down) projection (bias dropped), then, where
the family has one (Gemma 2 / 3), the post-MLP norm's gain; a direction at a residual site (`resid_pre`,
`resid_post`, `mlp_out`) is already in the residual stream. Either way it is then scaled by the final norm's gain
and multiplied by the unembedding:

    logits = W_U (g_final * [g_post *] W_out v)        # [vocab] per direction

Norm handling (`NORM_NOTE`): each norm's elementwise gain is folded in, measured as (N(s) - N(-s)) / 2s with s a
+-1 vector (that is the weight of LayerNorm / RMSNorm, 1 + weight for Gemma's); no mean subtraction, no
variance scaling, no norm bias, no logit soft-capping (monotone). Only the ranking of tokens is meaningful; the
values are logit contributions of a unit direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.models import LoadedModel
from interp.models.sites import FAMILIES, Site, get_module, parse_site

NORM_NOTE = (
    "norm gains folded in (final norm, and Gemma's post-MLP norm for mlp_hidden); no mean/variance "
    "normalization, no norm bias, no soft-capping; mlp_hidden directions go through the out projection "
    "without its bias"
)


@dataclass
class LogitLens:
    """Top promoted and suppressed tokens of each direction: ids and logit values, `[n_features, top]` each."""

    promoted_ids: torch.Tensor
    promoted_values: torch.Tensor
    suppressed_ids: torch.Tensor
    suppressed_values: torch.Tensor


@torch.no_grad()
def norm_gain(norm: torch.nn.Module, d: int) -> torch.Tensor:
    """The elementwise gain `[d]` of a LayerNorm / RMSNorm module: (N(s) - N(-s)) / 2s for s = +-1."""
    param = next(norm.parameters())
    signs = torch.ones(d, device=param.device, dtype=param.dtype)
    signs[1::2] = -1
    return ((norm(signs[None]) - norm(-signs[None]))[0] / (2 * signs)).float()


@torch.no_grad()
def residual_directions(model: LoadedModel, site: Site | str, directions: torch.Tensor) -> torch.Tensor:
    """Directions `[k, d_in]` at `site` as residual-stream vectors `[k, d_model]` (see module docstring)."""
    site = parse_site(str(site), model.info.n_layers) if not isinstance(site, Site) else site
    if site.kind != "mlp_hidden":
        return directions.float()
    spec = FAMILIES[model.info.family]
    block = get_module(model.hf, spec.blocks)[site.layer]
    out_proj = get_module(block, spec.mlp_hidden_input_of)
    param = next(out_proj.parameters())
    v = directions.to(param.device, param.dtype)
    resid = (out_proj(v) - out_proj(torch.zeros_like(v[:1]))).float()  # linear part only: bias dropped
    if spec.mlp_out_output_of != "mlp":  # a norm after the MLP (Gemma 2 / 3): fold its gain in
        resid = resid * norm_gain(get_module(block, spec.mlp_out_output_of), resid.shape[1])
    return resid


@torch.no_grad()
def logit_lens(
    model: LoadedModel, site: Site | str, directions: torch.Tensor, top: int = 10, block_size: int = 256
) -> LogitLens:
    """Promoted / suppressed tokens of directions `[k, d_in]` at `site`, `top` of each, in blocks of features."""
    spec = FAMILIES[model.info.family]
    resid = residual_directions(model, site, directions)
    unembed = get_module(model.hf, spec.unembed).weight  # [vocab, d_model]
    gain = norm_gain(get_module(model.hf, spec.final_norm), resid.shape[1]).to(unembed.device)
    top = min(top, unembed.shape[0])
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, resid.shape[0], block_size):
        v = resid[start : start + block_size].to(unembed.device) * gain
        logits = (v.to(unembed.dtype) @ unembed.T).float()  # [block, vocab]
        hi, lo = logits.topk(top, dim=1), logits.topk(top, dim=1, largest=False)
        parts.append((hi.indices, hi.values, lo.indices, lo.values))
    cat = [torch.cat([p[i] for p in parts]).cpu() for i in range(4)]
    return LogitLens(cat[0].to(torch.int64), cat[1], cat[2].to(torch.int64), cat[3])
