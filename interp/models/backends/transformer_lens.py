"""TransformerLens hooks (`blocks.L.mlp.hook_post`, ...): reading stops after the deepest site's block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from interp.models.edits import PositionTracker
from interp.models.loading import LoadedModel
from interp.models.sites import Site


def _norm_weight(tl, site: Site) -> torch.Tensor | None:
    """The pre-MLP norm's weight of `site`'s block when the site is `mlp_in`: TransformerLens's
    `ln2.hook_normalized` is x / rms, before the weight, while the MLP reads (x / rms) * w (None: no weight)."""
    if site.kind != "mlp_in":
        return None
    return getattr(tl.blocks[site.layer].ln2, "w", None)


def run(model: LoadedModel, tokens: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Activations `[batch, pos, d]` at each site for `tokens [batch, pos]`."""
    tl = model.transformer_lens()
    by_hook = {site.tl_hook: site for site in sites}
    out: dict[Site, torch.Tensor] = {}

    def save(act: torch.Tensor, hook) -> None:
        site = by_hook[hook.name]
        weight = _norm_weight(tl, site)
        out[site] = (act if weight is None else act * weight).detach()

    deepest = max(site.layer for site in sites)
    with torch.no_grad():
        tl.run_with_hooks(tokens, fwd_hooks=[(name, save) for name in by_hook], stop_at_layer=deepest + 1)
    return out


@contextmanager
def edit_hook(model: LoadedModel, site: Site, tracker: PositionTracker) -> Iterator[None]:
    """Apply `tracker` at `site`'s TransformerLens hook while the context is open."""
    tl = model.transformer_lens()
    weight = _norm_weight(tl, site)

    def edit(acts: torch.Tensor, hook) -> torch.Tensor:
        if weight is None:
            return tracker(acts)
        safe = torch.where(weight == 0, torch.ones_like(weight), weight)  # the MLP ignores those dimensions
        return tracker(acts * weight) / safe

    with tl.hooks(fwd_hooks=[(site.tl_hook, edit)]):
        yield


def logits(model: LoadedModel, tokens: torch.Tensor, site: Site, tracker: PositionTracker) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` with `tracker` applied at `site`."""
    with torch.no_grad(), edit_hook(model, site, tracker):
        return model.transformer_lens()(tokens)


def generate(model: LoadedModel, prompts: torch.Tensor, site: Site, tracker: PositionTracker,
             options: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """Token ids `[batch, prompt_len + max_new_tokens]` from `prompts [batch, prompt_len]`, `tracker` applied at
    `site` on every step. A loop of full forward passes under `options["attention_mask"]` (TransformerLens'
    own `generate` rebuilds the mask from pad tokens, so left-padded prompts came out wrong); greedy unless
    `do_sample`, then HF's temperature, top_k and top_p."""
    tl = model.transformer_lens()
    tokens, mask = prompts, options["attention_mask"].to(prompts.device, torch.long)
    with torch.no_grad(), edit_hook(model, site, tracker):
        for _ in range(options["max_new_tokens"]):
            last = tl(tokens, attention_mask=mask)[:, -1].float()  # [batch, vocab]
            new = sample_next(last, options) if options.get("do_sample") else last.argmax(-1)
            tokens = torch.cat([tokens, new[:, None].to(tokens.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return tokens


def sample_next(logits: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """One sampled token id per row of `logits [batch, vocab]`: temperature, then top_k, then top_p (HF order)."""
    logits = logits / options.get("temperature", 1.0)
    top_k = options.get("top_k")
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = options.get("top_p")
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)  # mass of the tokens ranked above
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before > top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)[:, 0]
