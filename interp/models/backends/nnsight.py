"""nnsight: read or edit module inputs / outputs inside a trace (reading stops the forward pass after the last site)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from interp.models.backends import torch_hooks
from interp.models.edits import PositionTracker, first_tensor, replace_first
from interp.models.loading import LoadedModel
from interp.models.sites import Site, get_module, module_path


def _envoy(model: LoadedModel, site: Site) -> tuple[Any, str]:
    path, which = module_path(model.info.family, site)
    return get_module(model.nnsight(), path), which


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`; sites in forward-pass order."""
    lm = model.nnsight()
    saved = {}
    with torch.no_grad(), lm.trace(tokens, use_cache=False) as tracer:
        for site in sorted(sites, key=lambda s: s.order):  # nnsight requires access in execution order
            envoy, which = _envoy(model, site)
            saved[site] = (envoy.input if which == "input" else envoy.output).save()
        tracer.stop()
    return {site: first_tensor(value).detach() for site, value in saved.items()}


@contextmanager
def edit_hook(model: LoadedModel, site: Site, tracker: PositionTracker) -> Iterator[None]:
    """Apply `tracker` at `site` while the context is open, in plain forward passes and in nnsight traces alike.

    nnsight's interventions live inside one trace; its LanguageModel wraps the very modules of `model.hf`, so a
    hook on that module outlives a trace and applies inside every trace too (the edit comes before the trace's
    own reads and writes at the site)."""
    with torch_hooks.edit_hook(model, site, tracker):
        yield


def _apply(envoy: Any, which: str, tracker: PositionTracker) -> None:
    if which == "input":
        envoy.input = tracker(envoy.input)
    else:
        output = envoy.output
        envoy.output = replace_first(output, tracker(first_tensor(output)))


def logits(model: LoadedModel, tokens: torch.Tensor, site: Site, tracker: PositionTracker) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` with `tracker` applied at `site`."""
    lm = model.nnsight()
    envoy, which = _envoy(model, site)
    with torch.no_grad(), lm.trace(tokens, use_cache=False):
        _apply(envoy, which, tracker)
        out = lm.output.logits.save()
    return out


def generate(model: LoadedModel, prompts: torch.Tensor, site: Site, tracker: PositionTracker,
             options: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """Generation inside an nnsight trace with `tracker` applied at `site` on every step."""
    lm = model.nnsight()
    envoy, which = _envoy(model, site)
    with torch.no_grad(), lm.generate(prompts, **options) as tracer:
        for _ in tracer.iter[: options["max_new_tokens"]]:  # bounded, so the line after the loop runs
            _apply(envoy, which, tracker)
        out = tracer.result.save()
    return out
