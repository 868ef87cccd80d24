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
