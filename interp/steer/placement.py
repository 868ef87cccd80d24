"""Where each method's direction is added (`--steer-at`), and the map of a direction to that place.

Directions are found where detection reads (the run's `--site`, e.g. `9.mlp_hidden`); each method then steers at
one of `STEER_AT` in the same layer:
- `mlp_hidden`: the MLP activations (neuron space, `d_mlp` wide)
- `mlp_out`: what the MLP adds to the residual stream (on Gemma: after the post-MLP norm)
- `resid`: the residual stream leaving the block (the same place as `mlp_out` for the next layers)

A `mlp_hidden` direction steered at `mlp_out` / `resid` is mapped through the MLP's out projection (and, on Gemma,
normalized as the post-MLP norm does), as the SNMF paper does; the result is a unit vector.

`--steer-at` is a base (`paper`, `site`, or one kind for every method) optionally followed by per-method
assignments: `paper`, `mlp_out`, `site,diff_in_means=mlp_out`. The paper's placement: SNMF features at
`mlp_hidden` on models without a post-MLP norm, every other direction (and every direction on Gemma) at `mlp_out`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from interp.models import LoadedModel
from interp.models.sites import FAMILIES, Site, get_module

STEER_AT = {"mlp_hidden": "mlp_hidden", "mlp_out": "mlp_out", "resid": "resid_post"}
PAPER_KIND = {"snmf": "mlp_hidden"}  # decomposer method -> where the paper adds it; others: mlp_out
D_MODEL_KINDS = ("mlp_out", "resid_pre", "resid_post")


class PlacementError(ValueError):
    """A --steer-at that names an unknown kind or method, or a map that does not exist."""


def _paper(kind_of_method: str, family: str, detect_kind: str) -> str:
    if detect_kind != "mlp_hidden":  # nothing to map: every direction stays where it was found
        return detect_kind
    kind = PAPER_KIND.get(kind_of_method, "mlp_out")
    return "mlp_out" if kind == "mlp_hidden" and FAMILIES[family].post_mlp_norm else kind


def steer_kinds(spec: str, methods: dict[str, str], family: str, detect_kind: str) -> dict[str, str]:
    """Method name -> site kind to steer at, from a `--steer-at` spec.

    `methods` maps each method name to its kind (a decomposer's method, e.g. `snmf`, or the baseline's name)."""
    base, *overrides = [item.strip() for item in spec.split(",") if item.strip()] or ["paper"]
    bases: dict[str, Callable[[str], str]] = {
        "paper": lambda kind: _paper(kind, family, detect_kind),
        "site": lambda kind: detect_kind,
        **{name: (lambda kind, k=site_kind: k) for name, site_kind in STEER_AT.items()},
    }
    if base not in bases:
        raise PlacementError(
            f"unknown --steer-at base {base!r}; valid: {', '.join(bases)} (then METHOD=KIND items)"
        )
    kinds = {name: bases[base](kind) for name, kind in methods.items()}
    for item in overrides:
        name, _, kind = item.partition("=")
        if name not in methods or kind not in STEER_AT:
            raise PlacementError(
                f"bad --steer-at item {item!r}: give METHOD=KIND with METHOD in {', '.join(methods)} and "
                f"KIND in {', '.join(STEER_AT)}"
            )
        kinds[name] = STEER_AT[kind]
    return kinds


def _identity(model: LoadedModel, layer: int, direction: torch.Tensor) -> torch.Tensor:
    return direction


def through_out_projection(model: LoadedModel, layer: int, direction: torch.Tensor) -> torch.Tensor:
    """`direction [d_mlp]` -> what it adds to the MLP's output `[d_model]` (after the post-MLP norm where the
    family has one): W_out v, then the norm applied to that vector as to an MLP output."""
    spec = FAMILIES[model.info.family]
    block = get_module(model.hf, f"{spec.blocks}.{layer}")
    proj = get_module(block, spec.mlp_hidden_input_of)
    weight = next(proj.parameters())
    v = direction.to(weight.device, weight.dtype)[None]
    with torch.no_grad():
        out = proj(v) - proj(torch.zeros_like(v))  # the linear part only (drops the bias)
        if spec.post_mlp_norm:
            out = get_module(block, spec.post_mlp_norm)(out)
    return out[0].float().cpu()


MAPS: dict[tuple[str, str], Callable[[LoadedModel, int, torch.Tensor], torch.Tensor]] = {
    ("mlp_hidden", "mlp_hidden"): _identity,
    **{("mlp_hidden", kind): through_out_projection for kind in D_MODEL_KINDS},
    **{(a, b): _identity for a in D_MODEL_KINDS for b in D_MODEL_KINDS},
}


def place(
    model: LoadedModel, found_at: Site, kind: str, direction: torch.Tensor
) -> tuple[Site, torch.Tensor]:
    """(steering site, unit direction there) for `direction` found at `found_at`, steered at `kind`."""
    mapper = MAPS.get((found_at.kind, kind))
    if mapper is None:
        raise PlacementError(
            f"a direction found at {found_at.name} cannot be steered at {kind}: d_model directions have no map "
            "back to the MLP's neurons; detect at an mlp_hidden site or steer at mlp_out / resid"
        )
    mapped = mapper(model, found_at.layer, direction).float()
    return Site(found_at.layer, kind), mapped / mapped.norm().clamp_min(1e-12)
