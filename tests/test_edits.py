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


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lively(request):
    """A tiny model whose weights are scaled up so greedy text depends on the context (the default init's
    tiny weights give one token over and over, which would make every generation test pass)."""
    from interp.models import load_model

    model = load_model(f"tiny-{request.param}", device="cpu")
    gen = torch.Generator().manual_seed(0)
    for param in model.hf.parameters():
        if param.ndim == 2:
            param.data.normal_(0, 0.25, generator=gen)
    return model


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two prompts, the second (4 tokens) left-padded to 6: tokens, attention mask, the second alone. The first
    starts with the pad id as a real token (only the mask can tell it from padding)."""
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randint(3, 259, (1, 6), generator=gen), torch.randint(3, 259, (1, 4), generator=gen)
    first[0, 0] = 0
    prompts = torch.cat([first, torch.cat([torch.zeros(1, 2, dtype=torch.long), second], 1)])
    mask = torch.ones_like(prompts)
    mask[1, :2] = 0
    return prompts, mask, second


def lively_edits(model) -> list:
    d = model.info.d_model
    dec = FixedDirections(FixedConfig(n_features=8, d_in=d))
    direction = torch.randn(d, generator=torch.Generator().manual_seed(2))
    return [AddDirection(direction, 1.0), AddDirection(direction, 2.0, "generated"), ProjectOut(direction),
            ClampLatent(dec, 2, 3.0), Reconstruct(dec), ZeroAblate("prompt")]  # fmt: skip


def test_every_edit_gives_equal_logits_through_all_backends(lively):
    from interp.models.hooks import steered_logits

    ids = padded_prompts()[0].clamp_min(3)
    plain = steered_logits(lively, ids, "0.resid_post", None)
    for edit in lively_edits(lively):
        logits = {
            b: steered_logits(lively, ids, "0.resid_post", edit, backend=b, prompt_len=4) for b in BACKENDS
        }
        assert not torch.allclose(logits["torch"], plain, atol=1e-3), edit
        for backend in BACKENDS:
            assert torch.allclose(logits[backend], logits["torch"], atol=1e-4), (edit, backend)


def test_every_edit_gives_equal_greedy_text_through_all_backends_and_padding(lively):
    """Left-padded prompts give the text they give alone, for every edit and backend (TransformerLens dropped
    the attention mask)."""
    from interp.models.hooks import generate

    prompts, mask, second = padded_prompts()
    lively.nnsight()  # nnsight sets the tokenizer's padding side to left: the test must not depend on it
    plain = generate(lively, prompts, max_new_tokens=5, attention_mask=mask)
    changed = 0
    for edit in lively_edits(lively)[:4]:  # edits at "prompt" positions count them in the padded layout
        outs = {b: generate(lively, prompts, "0.resid_post", edit, max_new_tokens=5, backend=b,
                            attention_mask=mask) for b in BACKENDS}  # fmt: skip
        alone = generate(lively, second, "0.resid_post", edit, max_new_tokens=5)
        first = generate(lively, prompts[:1], "0.resid_post", edit, max_new_tokens=5)
        assert torch.equal(outs["torch"][1, 6:], alone[0, 4:]) and torch.equal(outs["torch"][:1], first), edit
        for backend in BACKENDS:
            assert torch.equal(outs[backend], outs["torch"]), (edit, backend)
        changed += not torch.equal(plain, outs["torch"])
    assert changed >= 3  # the edits change the text (a small clamp may not)


@pytest.mark.parametrize("backend", BACKENDS)
def test_intervene_through_every_backend(lively, backend):
    from interp.models.hooks import intervene, steered_logits

    ids = padded_prompts()[0].clamp_min(3)
    edit = lively_edits(lively)[0]
    forward = {"torch": lambda: lively.hf(input_ids=ids).logits,
               "transformer_lens": lambda: lively.transformer_lens()(ids),
               "nnsight": lambda: nnsight_logits(lively, ids)}[backend]  # fmt: skip
    before = forward()
    with intervene(lively, "0.resid_post", edit, backend=backend):
        inside = forward()
    want = steered_logits(lively, ids, "0.resid_post", edit, backend=backend)
    assert torch.allclose(inside, want, atol=1e-5) and not torch.allclose(inside, before, atol=1e-3)
    assert torch.equal(forward(), before)


def nnsight_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.nnsight().trace(ids, use_cache=False):
        out = model.nnsight().output.logits.save()
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("held_on", ["cpu", "cuda"])
def test_every_edit_returns_the_activations_device(held_on):
    """A decomposer on one device, activations on the other: the result is on the activations' device."""
    reference, _ = held_in(torch.float32)
    moved = FixedDirections(reference.config, reference.weights.to(held_on))
    acts_on = "cpu" if held_on == "cuda" else "cuda"
    acts = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0)).to(acts_on)
    for ref_edit, edit in zip(all_edits(reference), all_edits(moved), strict=True):
        out = edit(acts)
        assert out.device.type == acts_on and torch.allclose(out.cpu(), ref_edit(acts.cpu()), atol=1e-5), edit
