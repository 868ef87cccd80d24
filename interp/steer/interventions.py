"""Interventions at a site, during a forward pass or batched generation, through any backend.

An edit is a small frozen dataclass with `__call__(acts [batch, pos, d]) -> acts`:
- `AddDirection(direction, alpha)`: acts + alpha * direction (direction used as given: normalize it yourself)
- `ProjectOut(direction)`: remove the component along the unit direction (directional ablation)
- `ClampLatent(decomposer, latent, value)`: set one latent of a decomposer to `value`, keeping the error term:
  acts + decode(codes with latent = value) - decode(codes)
- `Reconstruct(decomposer)`: decode(encode(acts)), the decomposer spliced in; `ZeroAblate()`: zeros

`positions` says where an edit applies: "all", "prompt" (positions < prompt_len) or "generated" (>= prompt_len).

    with intervene(model, "9.mlp_hidden", AddDirection(v, 8.0), backend="torch"):
        logits = model.hf(input_ids=tokens).logits          # steered
    logits = model.hf(input_ids=tokens).logits              # hooks removed: the model is exactly as before

`steered_logits` and `generate` run one edit through the nnsight, TransformerLens or plain-torch backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from interp.models import LoadedModel
from interp.sites import Site, hf_hook_point, parse_site

POSITIONS = ("all", "prompt", "generated")


class InterventionError(ValueError):
    """An edit that cannot apply: wrong direction size, unknown positions, latent out of range."""


@dataclass(frozen=True, eq=False)
class AddDirection:
    direction: torch.Tensor  # [d]
    alpha: float
    positions: str = "all"

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return acts + self.alpha * self.direction.to(acts.device, acts.dtype)


@dataclass(frozen=True, eq=False)
class ProjectOut:
    direction: torch.Tensor  # [d]
    positions: str = "all"

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        unit = (self.direction / self.direction.norm()).to(acts.device, acts.dtype)
        return acts - (acts @ unit)[..., None] * unit


@dataclass(frozen=True, eq=False)
class ClampLatent:
    decomposer: Any  # any interp Decomposer
    latent: int
    value: float
    positions: str = "all"

    @property
    def direction(self) -> torch.Tensor:
        return self.decomposer.directions[self.latent]

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1, acts.shape[-1]).float()
        codes = self.decomposer.encode(flat)
        clamped = codes.clone()
        clamped[:, self.latent] = self.value
        delta = self.decomposer.decode(clamped) - self.decomposer.decode(codes)
        return acts + delta.view_as(acts).to(acts.dtype)


@dataclass(frozen=True, eq=False)
class Reconstruct:
    """Replace activations by a decomposer's reconstruction decode(encode(acts)) (splicing it into the model)."""

    decomposer: Any
    positions: str = "all"

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1, acts.shape[-1]).float()
        return self.decomposer.decode(self.decomposer.encode(flat)).view_as(acts).to(acts.dtype)


@dataclass(frozen=True, eq=False)
class ZeroAblate:
    positions: str = "all"

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(acts)


Edit = AddDirection | ProjectOut | ClampLatent | Reconstruct | ZeroAblate


def check_edit(edit: Edit, model: LoadedModel, site: Site) -> None:
    """Raise InterventionError when `edit` cannot apply at `site` of `model`."""
    width = site.width(model.info)
    if edit.positions not in POSITIONS:
        raise InterventionError(f"unknown positions {edit.positions!r}; valid: {', '.join(POSITIONS)}")
    if isinstance(edit, ClampLatent):
        n = edit.decomposer.n_features
        if not 0 <= edit.latent < n:
            raise InterventionError(
                f"latent {edit.latent} is out of range: the decomposer has features 0..{n - 1}"
            )
    if isinstance(edit, Reconstruct | ClampLatent) and edit.decomposer.d_in != width:
        raise InterventionError(
            f"the decomposer was fitted on width {edit.decomposer.d_in}, but site {site.name} is {width} wide"
        )
    if isinstance(edit, Reconstruct | ZeroAblate):
        return
    direction = edit.direction
    if direction.ndim != 1 or direction.shape[0] != width:
        raise InterventionError(
            f"the direction has shape {list(direction.shape)} but site {site.name} is {width} wide; "
            f"use a direction of the same site (mlp_hidden: d_mlp = {model.info.d_mlp}, others: d_model)"
        )


class _PositionTracker:
    """Applies an edit to the positions it names, across the forward calls of one generation.

    A call with more than one position starts a sequence (prompt pass, or a pass without KV cache); a call with
    one position continues it (one generated token with KV cache).
    """

    def __init__(self, edit: Edit, prompt_len: int | None):
        if edit.positions != "all" and prompt_len is None:
            raise InterventionError(f"positions={edit.positions!r} needs prompt_len")
        self.edit, self.prompt_len, self.offset = edit, prompt_len, 0

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        n_pos = acts.shape[1]
        if n_pos > 1:
            self.offset = 0
        start, self.offset = self.offset, self.offset + n_pos
        if self.edit.positions == "all":
            return self.edit(acts)
        positions = torch.arange(start, start + n_pos, device=acts.device)
        keep = (
            positions < self.prompt_len if self.edit.positions == "prompt" else positions >= self.prompt_len
        )
        if not keep.any():
            return acts
        return torch.where(keep[None, :, None], self.edit(acts), acts)


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    return (new, *value[1:]) if isinstance(value, tuple) else new


@contextmanager
def intervene(
    model: LoadedModel, site: str | Site, edit: Edit, prompt_len: int | None = None, backend: str = "torch"
) -> Iterator[None]:
    """Apply `edit` at `site` inside the block, for the torch (HF modules) or transformer_lens backend.

    Hooks are removed on exit, whatever happens, so the model is restored exactly.
    """
    site = parse_site(str(site), model.info.n_layers) if not isinstance(site, Site) else site
    check_edit(edit, model, site)
    tracker = _PositionTracker(edit, prompt_len)
    if backend == "transformer_lens":
        tl = model.transformer_lens()
        with tl.hooks(fwd_hooks=[(site.tl_hook, lambda acts, hook: tracker(acts))]):
            yield
        return
    if backend != "torch":
        raise InterventionError(
            f"intervene() takes backend 'torch' or 'transformer_lens'; for nnsight use "
            f"steered_logits / generate (got {backend!r})"
        )
    module, which = hf_hook_point(model.hf, model.info.family, site)
    if which == "input":

        def pre_hook(mod, args, kwargs):
            if args:
                return (tracker(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": tracker(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(mod, args, output):
            first = output[0] if isinstance(output, tuple) else output
            return _replace_first(output, tracker(first))

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _nnsight_envoy(model: LoadedModel, site: Site) -> tuple[Any, str]:
    from interp.capture.nnsight import _envoy_path
    from interp.sites import get_module

    path, which = _envoy_path(model.info.family, site)
    return get_module(model.nnsight(), path), which


def _nnsight_apply(envoy: Any, which: str, tracker: _PositionTracker) -> None:
    if which == "input":
        envoy.input = tracker(envoy.input)
    else:
        output = envoy.output
        envoy.output = _replace_first(output, tracker(output[0] if isinstance(output, tuple) else output))


def steered_logits(
    model: LoadedModel,
    tokens: torch.Tensor,
    site: str | Site,
    edit: Edit | None,
    backend: str = "torch",
    prompt_len: int | None = None,
) -> torch.Tensor:
    """Logits `[batch, pos, vocab]` of `tokens [batch, pos]` with `edit` applied at `site` (None: no edit)."""
    site = parse_site(str(site), model.info.n_layers) if not isinstance(site, Site) else site
    tokens = tokens.to(model.device)
    if edit is None:
        with torch.no_grad():
            return model.hf(input_ids=tokens, use_cache=False).logits
    if backend == "nnsight":
        check_edit(edit, model, site)
        lm, tracker = model.nnsight(), _PositionTracker(edit, prompt_len)
        envoy, which = _nnsight_envoy(model, site)
        with torch.no_grad(), lm.trace(tokens, use_cache=False):
            _nnsight_apply(envoy, which, tracker)
            logits = lm.output.logits.save()
        return logits
    with torch.no_grad(), intervene(model, site, edit, prompt_len, backend):
        if backend == "transformer_lens":
            return model.transformer_lens()(tokens)
        return model.hf(input_ids=tokens, use_cache=False).logits


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
    prompt_len = prompts.shape[1]
    mask = torch.ones_like(prompts) if attention_mask is None else attention_mask.to(model.device)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": model.pad_token_id,
              "eos_token_id": None, "min_new_tokens": max_new_tokens, **sampling}  # fmt: skip
    torch.manual_seed(seed)
    if edit is None:
        with torch.no_grad():
            return model.hf.generate(prompts, attention_mask=mask, **kwargs)
    site = parse_site(str(site), model.info.n_layers) if not isinstance(site, Site) else site
    if backend == "nnsight":
        check_edit(edit, model, site)
        lm, tracker = model.nnsight(), _PositionTracker(edit, prompt_len)
        envoy, which = _nnsight_envoy(model, site)
        with (
            torch.no_grad(),
            lm.generate(prompts, attention_mask=mask, **kwargs) as tracer,
        ):
            for _ in tracer.iter[:max_new_tokens]:  # bounded, so the line after the loop runs
                _nnsight_apply(envoy, which, tracker)
            out = tracer.result.save()
        return out
    with torch.no_grad(), intervene(model, site, edit, prompt_len, backend):
        if backend == "transformer_lens":
            tl_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "verbose": False,
                         "stop_at_eos": False, **sampling}  # fmt: skip
            return model.transformer_lens().generate(prompts, **tl_kwargs)
        return model.hf.generate(prompts, attention_mask=mask, **kwargs)
