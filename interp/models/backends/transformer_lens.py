"""TransformerLens hooks (`blocks.L.mlp.hook_post`, ...): reading stops after the deepest site's block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from interp.models.edits import PositionTracker
from interp.models.loading import LoadedModel
from interp.models.sites import Site


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


@contextmanager
def edit_hook(model: LoadedModel, site: Site, tracker: PositionTracker) -> Iterator[None]:
    """Apply `tracker` at `site`'s TransformerLens hook while the context is open."""
    with model.transformer_lens().hooks(fwd_hooks=[(site.tl_hook, lambda acts, hook: tracker(acts))]):
        yield


def logits(model: LoadedModel, tokens: torch.Tensor, site: Site, tracker: PositionTracker) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` with `tracker` applied at `site`."""
    with torch.no_grad(), edit_hook(model, site, tracker):
        return model.transformer_lens()(tokens)


def generate(model: LoadedModel, prompts: torch.Tensor, site: Site, tracker: PositionTracker,
             options: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """TransformerLens `generate` with `tracker` applied at `site` (the HF keyword arguments translated)."""
    tl_options = {"max_new_tokens": options["max_new_tokens"], "do_sample": options["do_sample"],
                  "verbose": False, "stop_at_eos": False}  # fmt: skip
    tl_options |= {k: v for k, v in options.items() if k in ("top_k", "top_p", "temperature")}
    with torch.no_grad(), edit_hook(model, site, tracker):
        return model.transformer_lens().generate(prompts, **tl_options)
