"""Synthetic data with known features, and the ground-truth metrics on dictionaries whose answer is known."""

from __future__ import annotations

import pytest
import torch

from interp.evaluate.ground_truth import abs_cosines, detection_scores, ground_truth_metrics, mcc, uniqueness
from interp.evaluate.synthetic import SyntheticConfig, SyntheticModel, zipf_probabilities

SMALL = SyntheticConfig(n_features=96, d=128, n_roots=4, branching=3, depth=2, p_max=0.3, p_min=0.01,
                        correlation_rank=4, seed=3)  # fmt: skip


class Exact:
    """The true features with orthonormal vectors: encode recovers the true codes exactly."""

    def __init__(self, model: SyntheticModel):
        q, _ = torch.linalg.qr(torch.randn(model.config.d, model.config.n_features,
                                           generator=torch.Generator().manual_seed(0)))  # fmt: skip
        model.features = q.T.contiguous()  # [n_features, d], orthonormal rows
        self.model, self.n_features = model, model.config.n_features

    @property
    def directions(self):
        return self.model.features

    def encode(self, x):
        codes = (x - self.model.bias) @ self.model.features.T
        return codes * (codes > 1e-3)

    def decode(self, codes):
        return codes @ self.model.features + self.model.bias


class Random(Exact):
    def __init__(self, model: SyntheticModel, n: int):
        super().__init__(model)
        w = torch.randn(n, model.config.d, generator=torch.Generator().manual_seed(1))
        self.w = w / w.norm(dim=1, keepdim=True)
        self.n_features = n

    @property
    def directions(self):
        return self.w

    def encode(self, x):
        return ((x - self.model.bias) @ self.w.T).clamp_min(0)

    def decode(self, codes):
        return codes @ self.w + self.model.bias


def test_hierarchy_gates_children_and_siblings_exclude():
    model = SyntheticModel(SMALL)
    codes = model.sample_codes(4000, model.generator(0))
    fires = codes > 0
    child = model.parent >= 0
    assert child.sum() == 4 * 3 + 4 * 9
    assert not (fires[:, child] & ~fires[:, model.parent[child]]).any()  # a child fires only with its parent
    siblings = fires[:, 4 : 4 + 48].view(4000, -1, 3)  # levels 1 and 2: groups of 3 consecutive children
    assert siblings.sum(2).max() == 1 and siblings.any()
    rates = fires.float().mean(0)
    outside = slice(SMALL.n_hierarchy, SMALL.n_features)  # no hierarchy: rates are the Zipf probabilities
    assert torch.allclose(rates[outside], model.base_prob[outside], atol=0.02)
    assert torch.allclose(rates[:4], model.base_prob[:4], atol=0.03)


def test_zipf_and_neuron_sparse_support():
    p = zipf_probabilities(100, 0.5, 0.4, 5e-4)
    assert p[0] == pytest.approx(0.4) and p[-1] == pytest.approx(5e-4) and (p.diff() <= 0).all()
    model = SyntheticModel(SyntheticConfig(n_features=50, d=1000, n_roots=0, support=0.01))
    assert ((model.features != 0).sum(1) == 10).all()  # 1% of 1000 dimensions
    few = SyntheticModel(SyntheticConfig(n_features=50, d=64, n_roots=0, support=0.01))
    assert ((few.features != 0).sum(1) == 4).all()  # at least 4, or features would repeat
    assert torch.allclose(model.features.norm(dim=1), torch.ones(50))


def test_hierarchy_too_large_is_refused():
    with pytest.raises(ValueError, match="lower n_roots"):
        SyntheticConfig(n_features=10, n_roots=4, branching=4, depth=2)


def test_true_dictionary_scores_one_and_random_scores_near_chance():
    model = SyntheticModel(SMALL)
    exact = ground_truth_metrics(Exact(model), model, n_samples=3000)
    for name in ("mcc", "uniqueness", "f1", "precision", "recall", "parent_cos", "child_cos", "parent_f1",
                 "child_f1", "explained_variance"):  # fmt: skip
        assert exact[name] == pytest.approx(1.0, abs=1e-4), name
    assert exact["l0"] == pytest.approx(exact["true_l0"]) and exact["dead_fraction"] < 0.05
    rand = ground_truth_metrics(Random(SyntheticModel(SMALL), 96), SyntheticModel(SMALL), n_samples=3000)
    assert rand["mcc"] < 0.35 and rand["f1"] < 0.3  # random directions in 128 dims: |cos| ~ 0.1-0.3


def test_mcc_is_a_one_to_one_matching():
    true = torch.eye(4)
    duplicated = torch.stack([true[0], true[0], true[1], true[2]])  # feature 0 twice, feature 3 missed
    assert mcc(duplicated, true) == pytest.approx(0.75)
    assert uniqueness(duplicated, true) == pytest.approx(0.75)
    assert abs_cosines(-true, true).diag().tolist() == [1, 1, 1, 1]


def test_detection_scores_by_hand():
    scores = detection_scores(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]))
    assert scores["precision"].tolist() == pytest.approx([0.75, 0.0])
    assert scores["recall"].tolist() == pytest.approx([0.6, 0.0])
    assert scores["f1"][0] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
