"""Sparse probing and TPP on planted pooled activations whose answer is known."""

from __future__ import annotations

import pytest
import torch

from interp.evaluate.probing import Pooled, balanced, sparse_probing, tpp


class Linear:
    """decode(codes) = codes @ W: a latent's contribution is its code times its row."""

    def __init__(self, w: torch.Tensor):
        self.w = w

    def decode(self, codes):
        return codes @ self.w


def planted(n=600, n_latents=30, d=16, seed=0):
    """3 classes; latent c (c < 3) is exactly the indicator of class c, scaled; the others are noise. The
    activations are the codes decoded by W plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    codes = torch.rand(n, n_latents, generator=gen) * 0.5
    codes[:, :3] = torch.nn.functional.one_hot(labels, 3).float() * 2.0
    w = torch.randn(n_latents, d, generator=gen)
    acts = codes @ w + 0.01 * torch.randn(n, d, generator=gen)
    order = torch.randperm(n, generator=gen)
    return Pooled(acts, codes, labels, order[: n // 2], order[n // 2 :]), Linear(w)


def test_a_latent_that_is_the_label_probes_perfectly_and_random_ones_do_not():
    data, _ = planted()
    scores = sparse_probing(data, ks=(1, 2, 5, 20))
    assert scores["probe_k1"] == pytest.approx(1.0)
    assert scores["probe_full"] > 0.95
    assert scores["probe_random_k1"] < 0.75  # a random latent is the label's only 3 times in 30
    assert set(scores) == {"probe_full", *(f"probe{r}_k{k}" for r in ("", "_random") for k in (1, 2, 5, 20))}


def test_balanced_draws_as_many_negatives_as_positives():
    labels = torch.tensor([0, 1, 1, 1, 2, 2, 0, 1])
    rows, y = balanced(labels, torch.arange(8), 0, seed=0)
    assert y.sum() == 2 and y.numel() == 4 and (labels[rows[:2]] == 0).all() and (labels[rows[2:]] != 0).all()


def test_tpp_ablating_a_class_latent_hurts_only_its_probe():
    data, decomposer = planted()
    scores = tpp(data, decomposer, n_ablate=1)
    assert scores["tpp_own_drop_n1"] > 0.3  # probe c loses its signal
    assert scores["tpp_other_drop_n1"] < 0.1
    assert scores["tpp_n1"] == pytest.approx(scores["tpp_own_drop_n1"] - scores["tpp_other_drop_n1"])


class Halves:
    """encode(x) = [relu(x), relu(-x)]: a fixed, nonlinear, per-token code, so a mean of codes is not the code
    of a mean."""

    def encode(self, x):
        return torch.cat([x.clamp_min(0), (-x).clamp_min(0)], dim=1)


def test_pooled_texts_match_each_text_run_alone(tiny_llama):
    """Batched, padded and pooled once for every decomposer = each text alone (catches tokens pooled into the
    wrong text across batches, padding or BOS counted, codes of the mean instead of the mean of codes)."""
    from interp.evaluate.probing import pool, pool_texts, text_tokens
    from interp.models.hooks import backend_runner
    from interp.models.sites import parse_site

    site = parse_site("1.resid_post", tiny_llama.info.n_layers)
    texts = ["a cat", "the dog sat on the mat today", "x", "prices rose by ten percent", "hello there"]
    tokens = text_tokens(tiny_llama, site, texts, max_len=8, batch_size=2)
    acts, codes = pool(tokens, Halves(), chunk=3)
    run = backend_runner("torch")
    for i, text in enumerate(texts):
        ids = tiny_llama.tokenizer(text, add_special_tokens=False)["input_ids"][:7]
        x = run(tiny_llama, torch.tensor([[tiny_llama.bos_token_id, *ids]]), [site])[site][0, 1:].float()
        assert torch.allclose(acts[i], x.mean(0), atol=1e-5)
        assert torch.allclose(codes[i], Halves().encode(x).mean(0), atol=1e-5)
    again = pool_texts(tiny_llama, site, texts, Halves(), max_len=8, batch_size=4)
    assert torch.allclose(again[0], acts, atol=1e-5) and torch.allclose(again[1], codes, atol=1e-5)
