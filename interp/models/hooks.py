"""The one hook layer: read activations at sites, or apply an edit there during a forward pass or a generation,
through any backend. Capture, the spliced metrics, steering and the browser all go through it.

    acts = backend_runner("nnsight")(model, tokens, sites)        # {site: [batch, pos, d]}
    with intervene(model, "9.mlp_hidden", AddDirection(v, 8.0), backend="torch"):
        logits = model.hf(input_ids=tokens).logits                # steered
    logits = model.hf(input_ids=tokens).logits                    # hooks removed: the model is exactly as before
    steered = steered_logits(model, tokens, "9.mlp_hidden", edit, backend="nnsight")

`BACKENDS` maps each backend to its module (interp.models.backends.*), which provides `run(model, tokens, sites)`,
`logits(model, tokens, site, tracker)`, `generate(model, prompts, site, tracker, options)` and
`edit_hook(model, site, tracker)`, a hook that outlives one call (what `intervene` opens). Edits are in
interp.models.edits; every edit gives the same logits and greedy text through every backend (tests/test_edits.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch

from interp.models.edits import Edit, InterventionError, PositionTracker, check_edit
from interp.models.loading import LoadedModel
from interp.models.sites import Site, parse_site

BACKENDS = {
    "nnsight": "interp.models.backends.nnsight",
    "transformer_lens": "interp.models.backends.transformer_lens",
    "torch": "interp.models.backends.torch_hooks",
}


def backend_module(name: str) -> ModuleType:
    """The module of backend `name` (imported on first use, so a backend's library loads only when used)."""
    if name not in BACKENDS:
        raise InterventionError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def backend_runner(name: str) -> Callable[[LoadedModel, torch.Tensor, list[Site]], dict[Site, torch.Tensor]]:
    """The `run(model, tokens [batch, pos], sites) -> {site: acts [batch, pos, d]}` function of a backend."""
    return backend_module(name).run


def _site(model: LoadedModel, site: str | Site) -> Site:
    return site if isinstance(site, Site) else parse_site(str(site), model.info.n_layers)


@contextmanager
def intervene(
    model: LoadedModel, site: str | Site, edit: Edit, prompt_len: int | None = None, backend: str = "torch"
) -> Iterator[None]:
    """Apply `edit` at `site` to every forward pass run while the context is open: of `model.hf` and nnsight
    traces for backend torch or nnsight, of `model.transformer_lens()` for transformer_lens.

    Hooks are removed on exit, whatever happens, so the model is restored exactly.
    """
    module = backend_module(backend)
    if not hasattr(module, "edit_hook"):
        raise InterventionError(
            f"intervene() takes a backend whose hooks outlive one call ({', '.join(_hookable())}); for "
            f"{backend} use steered_logits / generate"
        )
    site = _site(model, site)
    check_edit(edit, model, site)
    with module.edit_hook(model, site, PositionTracker(edit, prompt_len)):
        yield


def _hookable() -> list[str]:
    return [name for name in BACKENDS if hasattr(backend_module(name), "edit_hook")]


def steered_logits(
    model: LoadedModel,
    tokens: torch.Tensor,
    site: str | Site,
    edit: Edit | None,
    backend: str = "torch",
    prompt_len: int | None = None,
) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` of `tokens [batch, pos]` with `edit` applied at `site` (None: no edit)."""
    site = _site(model, site)
    tokens = tokens.to(model.device)
    if edit is None:
        with torch.no_grad():
            return model.hf(input_ids=tokens, use_cache=False).logits
    check_edit(edit, model, site)
    return backend_module(backend).logits(model, tokens, site, PositionTracker(edit, prompt_len))


def generate(
    model: LoadedModel,
    prompts: torch.Tensor,
    site: str | Site | None = None,
    edit: Edit | None = None,
    max_new_tokens: int = 20,
    backend: str = "torch",
    do_sample: bool = False,
    seed: int = 0,
    attention_mask: torch.Tensor | None = None,
    **sampling: Any,
) -> torch.Tensor:
    """Token ids `[batch, prompt_len + max_new_tokens]` generated from `prompts [batch, prompt_len]` with `edit`.

    Prompts of different lengths are left-padded with an `attention_mask` (0 on padding); "prompt" / "generated"
    positions are then counted in the padded layout (all prompts end at column prompt_len). Sampling kwargs
    (top_k, top_p, temperature) go to Hugging Face `generate`; `seed` makes sampling reproducible.
    """
    prompts = prompts.to(model.device)
    mask = torch.ones_like(prompts) if attention_mask is None else attention_mask.to(model.device)
    options = {"attention_mask": mask, "max_new_tokens": max_new_tokens, "do_sample": do_sample,
               "pad_token_id": model.pad_token_id, "eos_token_id": None, "min_new_tokens": max_new_tokens,
               **sampling}  # fmt: skip
    torch.manual_seed(seed)
    if edit is None:
        with torch.no_grad():
            return model.hf.generate(prompts, **options)
    site = _site(model, site)
    check_edit(edit, model, site)
    tracker = PositionTracker(edit, prompts.shape[1])
    return backend_module(backend).generate(model, prompts, site, tracker, options)
