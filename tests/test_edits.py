"""Edits (models.edits) through every backend: device and dtype follow the activations; backends agree."""

from __future__ import annotations

import pytest
import torch
from fixed_decomposer import FixedConfig, FixedDirections

from interp.models.edits import AddDirection, ClampLatent, ProjectOut, Reconstruct, ZeroAblate

BACKENDS = ("torch", "transformer_lens", "nnsight")


def held_in(dtype: torch.dtype, d_in: int = 64) -> tuple[FixedDirections, FixedDirections]:
    """The same fixed decomposer in float32 and held in `dtype` (weights rounded to `dtype` in both)."""
    base = FixedDirections(FixedConfig(n_features=8, d_in=d_in))
    weights = base.weights.to(dtype)
    return FixedDirections(base.config, weights.float()), FixedDirections(base.config, weights)


def all_edits(dec: FixedDirections) -> list:
    return [Reconstruct(dec), ClampLatent(dec, 2, 3.0), AddDirection(dec.directions[1], 2.0),
            ProjectOut(dec.directions[3]), ZeroAblate()]  # fmt: skip


@pytest.mark.parametrize("held", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("acts_dtype", [torch.float32, torch.bfloat16])
def test_every_edit_returns_the_activations_dtype(held, acts_dtype):
    reference, other = held_in(held)
    acts = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)).to(acts_dtype)
    tol = 0.1 if torch.bfloat16 in (held, acts_dtype) else 1e-5
    for ref_edit, edit in zip(all_edits(reference), all_edits(other), strict=True):
        out = edit(acts)
        assert out.dtype == acts_dtype and out.device == acts.device and out.shape == acts.shape, edit
        assert torch.allclose(out.float(), ref_edit(acts).float(), atol=tol), type(edit).__name__


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float64_decomposer_splices_into_a_float32_model(tiny_llama, backend):
    from interp.models.hooks import steered_logits

    reference, other = held_in(torch.float64)
    ids = torch.randint(3, 259, (2, 8), generator=torch.Generator().manual_seed(1))
    for make in (Reconstruct, lambda d: ClampLatent(d, 2, 3.0)):
        want = steered_logits(tiny_llama, ids, "0.resid_post", make(reference), backend=backend)
        got = steered_logits(tiny_llama, ids, "0.resid_post", make(other), backend=backend)
        assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-4)
