"""The output score (arXiv 2505.20063): a planted unembedding direction beats random ones, batching changes nothing,
and the score's formula on a hand-made distribution."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest
import torch
from fixed_decomposer import FixedDirections, two_concept_run

from interp.features.reader import FeatureIndex
from interp.models import load_model
from interp.models.sites import FAMILIES, get_module, parse_site
from interp.steer.concepts import load_concepts
from interp.steer.detection import auroc, text_activations
from interp.steer.feature_protocol import FeatureProtocolError
from interp.steer.output_score import OutputScoreConfig, output_scores, rank_of, score_from_probs
from interp.steer.run import BASELINES, SteerEvalConfig, SteerEvalError, run_steer_eval


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


@pytest.fixture
def fixed_run(tmp_path, monkeypatch):
    return two_concept_run(tmp_path, monkeypatch, methods=("features", "random"), kl_targets=(0.002,), signs=(1,),
                           n_samples=1, max_new_tokens=2, prompts=("The cat",), judge="offline",
                           selection=("detection", "output"), output_candidates=3)  # fmt: skip


def test_steer_eval_reports_output_selection_beside_detection(tmp_path, fixed_run):
    out = tmp_path / "out"
    rows = run_steer_eval(fixed_run, out, progress=False)
    assert {r["method"] for r in rows} == {"fixed", "fixed@output", "random"}
    assert len(rows) == 2 * 3  # concepts x methods (one sign, one target)
    scored = {
        int(f): s for f, s in json.loads((out / "output_scores.json").read_text())["fixed@output"].items()
    }
    detection = pd.read_csv(out / "detection.csv")
    concepts = load_concepts(fixed_run.concepts, fixed_run.per_concept, fixed_run.seed)
    model = load_model("tiny-llama", device="cpu")
    acts = text_activations(model, concepts.texts, parse_site("1.mlp_hidden", 2), fixed_run.max_len)
    codes = acts.max_pool(FixedDirections.load(tmp_path / "fixed").encode(
        acts.acts.reshape(-1, 128)).view(*acts.acts.shape[:2], -1))  # fmt: skip
    train = torch.tensor(concepts.train)
    for concept in ("cats", "dogs"):
        positive = torch.tensor([c == concept for c in concepts.concepts])
        candidates = auroc(codes[train], positive[train]).topk(3).indices.tolist()
        assert set(candidates) <= set(scored)  # the candidates are the best 3 by train AUROC, all scored
        chosen = detection.query("concept == @concept and method == 'fixed@output'")["feature"].item()
        assert chosen == max(candidates, key=lambda f: scored[f])  # the highest output score among them
    assert "fixed@output" in (out / "summary.md").read_text()


def test_output_selection_needs_features(tmp_path, fixed_run):
    with pytest.raises(SteerEvalError, match="add 'features' to --methods"):
        run_steer_eval(dataclasses.replace(fixed_run, methods=("random",)), tmp_path / "o", progress=False)
    with pytest.raises(SteerEvalError, match="unknown --selection"):
        run_steer_eval(dataclasses.replace(fixed_run, selection=("input",)), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.fixture
def explained_run(tmp_path, tmp_path_factory):
    from test_features import shared_toy_cache

    folder = tmp_path / "topk-k32"
    shutil.copytree(
        shared_toy_cache(tmp_path_factory) / "decomposers" / "toy" / "1.mlp_hidden" / "topk-k32", folder
    )
    index = FeatureIndex.open(folder)
    live = [f for f in range(index.n_features) if index.feature(f).count >= 4][:2]
    config = SteerEvalConfig(model="tiny-llama", site="1.mlp_hidden", decomposers=(str(folder),),
                             protocol="feature", features=tuple(live), methods=("features", *BASELINES),
                             kl_targets=(0.002,), signs=(1,), n_samples=1, max_new_tokens=2, device="cpu",
                             embedding_judge=False, prompts=("The cat",), select_prompts=("Yesterday,",),
                             judge="offline", per_concept=4)  # fmt: skip
    return folder, live, config


def test_feature_protocol_steers_each_feature_toward_its_explanation(tmp_path, explained_run):
    folder, live, config = explained_run
    with pytest.raises(FeatureProtocolError, match="run `interp explain`"):
        run_steer_eval(config, tmp_path / "o1", progress=False)
    assert not (tmp_path / "o1").exists()
    words = {live[0]: "planted: cats", live[1]: "planted: dogs"}
    pd.DataFrame({"feature": live, "explanation": [words[f] for f in live]}).to_parquet(
        folder / "index" / "explanations.parquet", index=False
    )
    rows = run_steer_eval(config, tmp_path / "o2", progress=False)
    assert {(r["concept"], r["method"]) for r in rows} == {
        (words[f], m) for f in live for m in ("topk-k32", *BASELINES)
    }  # one row per feature and method: the feature itself, difference-in-means, random
    detection = pd.read_csv(tmp_path / "o2" / "detection.csv")
    own = detection[detection["method"] == "topk-k32"].set_index("concept")["feature"]
    assert {words[f]: f for f in live} == own.to_dict()  # each concept steered with its own feature
    other = next(f for f in range(32) if f not in live)
    with pytest.raises(FeatureProtocolError, match=rf"feature\(s\) \[{other}\] have no explanation"):
        run_steer_eval(dataclasses.replace(config, features=(other,)), tmp_path / "o3", progress=False)
