"""Plain PyTorch hooks on the Hugging Face modules: no wrapper; reading stops the forward pass at the deepest site."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from interp.models.edits import PositionTracker, first_tensor, replace_first
from interp.models.loading import LoadedModel
from interp.models.sites import Site, hf_hook_point


class _StopForward(Exception):
    """Raised by the last hook so the forward pass ends once every site has been read."""


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`."""
    out: dict[Site, torch.Tensor] = {}
    handles = []

    def record(site: Site, value) -> None:
        out[site] = first_tensor(value).detach()
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


@contextmanager
def edit_hook(model: LoadedModel, site: Site, tracker: PositionTracker) -> Iterator[None]:
    """Apply `tracker` at `site` of the HF modules while the context is open; the hook is removed on exit."""
    module, which = hf_hook_point(model.hf, model.info.family, site)
    if which == "input":

        def pre_hook(mod, args, kwargs):
            if args:
                return (tracker(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": tracker(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(
            lambda mod, args, output: replace_first(output, tracker(first_tensor(output)))
        )
    try:
        yield
    finally:
        handle.remove()


def logits(model: LoadedModel, tokens: torch.Tensor, site: Site, tracker: PositionTracker) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` with `tracker` applied at `site`."""
    with torch.no_grad(), edit_hook(model, site, tracker):
        return model.hf(input_ids=tokens, use_cache=False).logits


def generate(model: LoadedModel, prompts: torch.Tensor, site: Site, tracker: PositionTracker,
             options: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """Hugging Face `generate` with `tracker` applied at `site`; `options` holds its keyword arguments."""
    with torch.no_grad(), edit_hook(model, site, tracker):
        return model.hf.generate(prompts, **options)
