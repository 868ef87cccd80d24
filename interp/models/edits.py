"""Edits of activations at a site, and where in a sequence they apply.

An edit is a small frozen dataclass with `__call__(acts [batch, pos, d]) -> acts`, returning a tensor on the device
and in the dtype of `acts` whatever device or dtype its own tensors (or decomposer) live in:
- `AddDirection(direction, alpha)`: acts + alpha * direction (direction used as given: normalize it yourself)
- `ProjectOut(direction)`: remove the component along the unit direction (directional ablation)
- `ClampLatent(decomposer, latent, value)`: set one latent of a decomposer to `value`, keeping the error term:
  acts + decode(codes with latent = value) - decode(codes)
- `Reconstruct(decomposer)`: decode(encode(acts)), the decomposer spliced in; `ZeroAblate()`: zeros

`positions` says where an edit applies: "all", "prompt" (positions < prompt_len) or "generated" (>= prompt_len);
`PositionTracker` applies an edit to those positions across the forward calls of one generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from interp.models.loading import LoadedModel
from interp.models.sites import Site

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


def as_decomposer_input(decomposer: Any, acts: torch.Tensor) -> torch.Tensor:
    """`acts [..., d]` flattened to `[n, d]`, on the device and in the dtype of the decomposer's directions (the
    edit's result goes back to the device and dtype of `acts`)."""
    held = decomposer.directions
    dtype = held.dtype if held.is_floating_point() else torch.float32
    return acts.reshape(-1, acts.shape[-1]).to(held.device, dtype)


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
        codes = self.decomposer.encode(as_decomposer_input(self.decomposer, acts))
        clamped = codes.clone()
        clamped[:, self.latent] = self.value
        delta = self.decomposer.decode(clamped) - self.decomposer.decode(codes)
        return acts + delta.reshape(acts.shape).to(acts.device, acts.dtype)


@dataclass(frozen=True, eq=False)
class Reconstruct:
    """Replace activations by a decomposer's reconstruction decode(encode(acts)) (splicing it into the model)."""

    decomposer: Any
    positions: str = "all"

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        flat = as_decomposer_input(self.decomposer, acts)
        out = self.decomposer.decode(self.decomposer.encode(flat))
        return out.reshape(acts.shape).to(acts.device, acts.dtype)


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


class PositionTracker:
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


def replace_first(value: Any, new: torch.Tensor) -> Any:
    """`value` with its activation tensor replaced by `new` (modules return a tensor or a tuple led by one)."""
    return (new, *value[1:]) if isinstance(value, tuple) else new


def first_tensor(value: Any) -> torch.Tensor:
    """The activation tensor of a module's input or output (a tensor or a tuple led by one)."""
    return value[0] if isinstance(value, tuple) else value
