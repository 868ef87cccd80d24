"""Capture through TransformerLens hooks (`blocks.L.mlp.hook_post`, ...), stopping after the deepest site's block."""

from __future__ import annotations

import torch

from interp.models import LoadedModel
from interp.sites import Site


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`."""
    tl = model.transformer_lens()
    by_hook = {site.tl_hook: site for site in sites}
    out: dict[Site, torch.Tensor] = {}

    def save(act: torch.Tensor, hook) -> None:
        out[by_hook[hook.name]] = act.detach()

    deepest = max(site.layer for site in sites)
    with torch.no_grad():
        tl.run_with_hooks(tokens, fwd_hooks=[(name, save) for name in by_hook], stop_at_layer=deepest + 1)
    return out
