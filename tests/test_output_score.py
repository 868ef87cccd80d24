"""The output score (arXiv 2505.20063): a planted unembedding direction beats random ones, batching changes nothing,
and the score's formula on a hand-made distribution."""

from __future__ import annotations

import torch

from interp.models.sites import FAMILIES, get_module, parse_site
from interp.steer.output_score import OutputScoreConfig, output_scores, rank_of, score_from_probs


def test_score_formula_on_a_known_distribution():
    probs = torch.tensor([[0.15, 0.5, 0.3, 0.05], [0.7, 0.2, 0.06, 0.04]])
    ids = torch.tensor([[2, 3], [1, 0]])
    assert rank_of(probs, ids)[0].tolist() == [1, 3] and rank_of(probs, ids)[1].tolist() == [1, 0]
    # row 0: best rank 1 of 4 -> 0.75, best prob 0.3; row 1: token 0 is the mode -> 1 * 0.7
    assert torch.allclose(score_from_probs(probs, ids), torch.tensor([0.75 * 0.3, 0.7]))


def test_a_planted_unembedding_direction_scores_higher_than_random_ones(tiny):
    n = tiny.info.n_layers
    site = parse_site(f"{n - 1}.resid_pre", n)
    unembed = get_module(tiny.hf, FAMILIES[tiny.info.family].unembed).weight.float()
    planted = torch.nn.functional.normalize(unembed[10:18], dim=1)  # each promotes its own token
    gen = torch.Generator().manual_seed(0)
    random = torch.nn.functional.normalize(torch.randn(8, unembed.shape[1], generator=gen), dim=1)
    config = OutputScoreConfig(top=5, batch_size=3)  # blocks of 3: rows of a block must not mix
    planted_scores = output_scores(tiny, site, 30 * planted, config)
    random_scores = output_scores(tiny, site, 30 * random, config)
    assert planted_scores.shape == (8,) and bool(((planted_scores >= 0) & (planted_scores <= 1)).all())
    assert planted_scores.min() > random_scores.max()


def test_batched_scores_equal_one_feature_at_a_time(tiny_llama):
    site = parse_site("1.mlp_hidden", tiny_llama.info.n_layers)
    gen = torch.Generator().manual_seed(1)
    vectors = 5 * torch.randn(5, tiny_llama.info.d_mlp, generator=gen)
    batched = output_scores(tiny_llama, site, vectors, OutputScoreConfig(top=4, batch_size=5))
    alone = torch.cat([output_scores(tiny_llama, site, v[None], OutputScoreConfig(top=4)) for v in vectors])
    assert torch.allclose(batched, alone, atol=1e-6)
    assert not torch.allclose(batched, batched[:1].expand(5))  # the rows differ: each got its own vector
