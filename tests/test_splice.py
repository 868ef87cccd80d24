"""Spliced-in CE / KL metrics on a tiny model with decomposers whose answers are known."""

from __future__ import annotations

import math

import torch
from fixed_decomposer import FixedConfig, FixedDirections, SplitIdentity

from interp.corpus import Document, pack
from interp.evaluate.splice import spliced_metrics


def contexts(model):
    docs = [Document(f"sentence number {i} about cats and dogs and more") for i in range(20)]
    return pack(docs, model.tokenizer, context_len=24, n_tokens=200)


def test_exact_reconstruction_recovers_all_loss(tiny_llama):
    m = spliced_metrics(tiny_llama, SplitIdentity(128), "1.mlp_hidden", contexts(tiny_llama), n_contexts=6)
    assert math.isclose(m["ce_spliced"], m["ce_clean"], rel_tol=1e-5)
    assert abs(m["kl"]) < 1e-5 and math.isclose(m["ce_loss_recovered"], 1.0, rel_tol=1e-4)
    assert m["ce_zero"] != m["ce_clean"] and m["n_tokens"] > 0


def test_reconstruction_through_nothing_is_zero_ablation(tiny_llama):
    null = FixedDirections(FixedConfig(n_features=4, d_in=64), torch.zeros(4, 64))
    m = spliced_metrics(tiny_llama, null, "0.resid_post", contexts(tiny_llama), n_contexts=6)
    assert math.isclose(m["ce_spliced"], m["ce_zero"], rel_tol=1e-5)
    assert abs(m["ce_loss_recovered"]) < 1e-4 and m["kl"] > 0
