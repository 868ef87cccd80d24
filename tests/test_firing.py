"""Firing definitions of `interp explain` (interp/autointerp/firing.py): dense SNMF codes get balanced
activating / non-activating examples under the quantile threshold; a resume under another definition is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from interp.autointerp import ExplainConfig, explain_index
from interp.autointerp.examples import load_encoder
from interp.autointerp.firing import Firing
from interp.autointerp.prompts import DETECTION_ASK, EXPLAINER_ASK, FUZZING_ASK
from interp.autointerp.run import gather
from interp.features import FeatureIndex
from interp.llm import LLMClient, LLMConfig

SMALL = dict(n_explain=4, n_test=4, per_prompt=4, chunk=2, context=3)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    from test_features import shared_toy_cache

    return shared_toy_cache(tmp_path_factory) / "decomposers" / "toy" / "1.mlp_hidden"


def test_dense_snmf_features_get_balanced_examples_under_the_quantile_threshold(toy_root):
    index = FeatureIndex.open(toy_root / "snmf-k16" / "index")
    features = list(range(index.n_features))
    assert min(index.feature(f).density for f in features) > 0.2  # dense codes at the index threshold
    old, _, _ = gather(index, features, ExplainConfig(**SMALL, firing="relative"))
    assert sum(len(fx.non_activating) == 4 for _, fx in old.values()) <= len(old) // 4  # the defect
    data, _, checked = gather(index, features, ExplainConfig(**SMALL))  # default: auto
    assert checked == "verified" and len(data) == len(features)
    decomposer, store = load_encoder(index)
    codes = decomposer.encode(store.read_rows(torch.arange(store.n_tokens))).float()
    for f, (feature, fx) in data.items():
        assert fx.firing == "quantile" and feature.threshold > index.feature(f).threshold
        assert len(fx.activating) == len(fx.non_activating) == 4
        assert all(max(s.acts) <= feature.threshold for s in fx.non_activating)
        assert all(s.acts[s.peak] > feature.threshold for s in fx.activating + fx.explain)
        share = float((codes[:, f] > feature.threshold).double().mean())  # 1 - q of the index's tokens fire
        assert abs(share - 0.01) <= 0.006, (f, share)


def test_auto_keeps_the_index_threshold_for_sparse_features(toy_root):
    index = FeatureIndex.open(toy_root / "topk-k32" / "index")
    sparse = [f for f in range(index.n_features) if 0 < index.feature(f).density <= 0.1]
    dense = [f for f in range(index.n_features) if index.feature(f).density > 0.1]
    assert sparse and dense
    data, _, _ = gather(index, sparse + dense, ExplainConfig(**SMALL))
    for f in sparse:
        assert data[f][1].firing == "relative" and data[f][0].threshold == index.feature(f).threshold
    assert all(data[f][1].firing == "quantile" for f in dense if f in data)
    with pytest.raises(ValueError, match="--firing"):
        ExplainConfig(firing="median")
    with pytest.raises(ValueError, match="--firing-q"):
        Firing("quantile", q=1.5)


REPLIES = {EXPLAINER_ASK.split()[-1]: "[EXPLANATION]: planted", DETECTION_ASK.split()[-1]: "[1, 0, 1, 0]",
           FUZZING_ASK.split()[-1]: "[1, 1, 0, 0]"}  # fmt: skip


class PlantedClient(LLMClient):
    """Replies by the prompt's last word, no server."""

    def check(self) -> list[str]:
        return [self.config.model]

    def map(self, conversations, desc="LLM", progress=True, **params):
        return [REPLIES.get(c[-1]["content"].split()[-1]) for c in conversations]


def test_resume_with_another_firing_definition_is_refused(toy_root, tmp_path):
    import pandas as pd

    shutil.copytree(toy_root / "snmf-k16" / "index", tmp_path / "index")
    index = FeatureIndex.open(tmp_path / "index")
    client = PlantedClient(LLMConfig(url="http://127.0.0.1:9/v1", model="planted"))
    explain_index(index, [0, 1, 2], client, ExplainConfig(**SMALL, firing="quantile", firing_q=0.98), False)
    table = pd.read_parquet(index.path / "explanations.parquet")
    assert (table["firing_setting"] == "--firing quantile --firing-q 0.98").all()
    assert (table["firing"] == "quantile").all() and table["detection_accuracy"].notna().all()
    for f, threshold in zip(table["feature"], table["firing_threshold"], strict=True):
        assert threshold > index.feature(f).threshold
    for other in (dict(firing="relative"), dict(firing="quantile", firing_q=0.9), dict()):
        with pytest.raises(ValueError, match="--firing quantile --firing-q 0.98"):
            explain_index(index, [3], client, ExplainConfig(**SMALL, **other), False)
    explain_index(index, [3], client, ExplainConfig(**SMALL, firing="quantile", firing_q=0.98), False)
    assert pd.read_parquet(index.path / "explanations.parquet")["feature"].tolist() == [0, 1, 2, 3]
    legacy = table.drop(
        columns=["firing_setting", "firing", "firing_threshold"]
    )  # before firing was recorded
    legacy.to_parquet(index.path / "explanations.parquet", index=False)
    with pytest.raises(ValueError, match="--firing relative"):
        explain_index(index, [3], client, ExplainConfig(**SMALL), False)


def test_cli_refuses_another_firing_and_a_bad_one_clearly(toy_root, tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    shutil.copytree(toy_root / "snmf-k16" / "index", tmp_path / "index")
    index = FeatureIndex.open(tmp_path / "index")
    client = PlantedClient(LLMConfig(url="http://127.0.0.1:9/v1", model="planted"))
    explain_index(index, [0], client, ExplainConfig(**SMALL), False)  # default: auto
    base = ["explain", str(index.path), "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m"]
    for extra, said in ((["--firing", "relative"], "--firing auto --firing-q 0.99 --firing-dense 0.1"),
                        (["--firing", "median"], "valid: relative, quantile, auto")):  # fmt: skip
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2 and said in result.output and "Traceback" not in result.output
