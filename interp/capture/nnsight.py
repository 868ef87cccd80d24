"""Capture through nnsight: read module inputs / outputs in a trace, then stop the forward pass."""

from __future__ import annotations

import torch

from interp.models import LoadedModel
from interp.sites import FAMILIES, Site, get_module


# site kind -> (path inside a block, read its "input" or "output"); blocks and MLP paths from the family table
def _envoy_path(family: str, site: Site) -> tuple[str, str]:
    spec = FAMILIES[family]
    block = f"{spec.blocks}.{site.layer}"
    return {
        "resid_pre": (block, "input"),
        "mlp_hidden": (f"{block}.{spec.mlp_hidden_input_of}", "input"),
        "mlp_out": (f"{block}.{spec.mlp_out_output_of}", "output"),
        "resid_post": (block, "output"),
    }[site.kind]


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`; sites in forward-pass order."""
    lm = model.nnsight()
    saved = {}
    with torch.no_grad(), lm.trace(tokens, use_cache=False) as tracer:
        for site in sorted(sites, key=lambda s: s.order):  # nnsight requires access in execution order
            path, which = _envoy_path(model.info.family, site)
            envoy = get_module(lm, path)
            saved[site] = (envoy.input if which == "input" else envoy.output).save()
        tracer.stop()
    return {site: (value[0] if isinstance(value, tuple) else value).detach() for site, value in saved.items()}
