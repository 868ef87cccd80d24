"""Capture with plain PyTorch forward hooks on the Hugging Face modules: no wrapper, stops at the deepest site."""

from __future__ import annotations

import torch

from interp.models import LoadedModel
from interp.sites import Site, hf_hook_point


class _StopForward(Exception):
    """Raised by the last hook so the forward pass ends once every site has been read."""


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`."""
    out: dict[Site, torch.Tensor] = {}
    handles = []

    def record(site: Site, value) -> None:
        value = value[0] if isinstance(value, tuple) else value
        out[site] = value.detach()
        if len(out) == len(sites):
            raise _StopForward

    for site in sites:
        module, which = hf_hook_point(model.hf, model.info.family, site)
        if which == "input":
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args, kwargs, s=site: record(s, args[0] if args else kwargs["hidden_states"]),
                    with_kwargs=True,
                )
            )
        else:
            handles.append(module.register_forward_hook(lambda m, args, output, s=site: record(s, output)))
    try:
        with torch.no_grad():
            model.hf(input_ids=tokens, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return out
