"""Options of the command line and the configs: values that cannot work are refused with the flag named, before
any work; the output folder agrees with what is fitted."""

from __future__ import annotations

import pytest
from test_resume import make_store, planted
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose import DecomposerError
from interp.decompose.snmf import SNMFConfig

runner = CliRunner()


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "run" / "0.resid_post"
    make_store(path, planted().abs())
    return path


def test_k_and_hierarchy_must_agree(store_path, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    fit = ["fit", "--method", "snmf", "--store", str(store_path), "--max-iter", "3", "--device", "cpu"]
    result = runner.invoke(app, [*fit, "--k", "100", "--hierarchy", "8,4"])  # the old code fitted 8 into k100
    assert result.exit_code == 2 and "--k 100 disagrees with --hierarchy 8,4" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cache").exists()
    with pytest.raises(DecomposerError, match="pass --k 8"):
        SNMFConfig(n_features=6, hierarchy=(8, 4))
    result = runner.invoke(app, [*fit, "--hierarchy", "8,4"])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "cache" / "decomposers").rglob("config.json")
    assert folder.parent.name == "snmf-k8"
    from interp.decompose import load_decomposer

    assert load_decomposer(folder.parent).n_features == 8


@pytest.mark.parametrize(
    "method,flags,message",
    [
        ("snmf", ["--k", "0"], "--k: n_features=0 must be >= 1"),  # the old code wrote F of shape [d, 0]
        ("snmf", ["--k", "-3"], "--k: n_features=-3 must be >= 1"),
        ("snmf", ["--sparsity", "0"], "--sparsity: sparsity=0.0 must be in (0, 1]"),
        ("topk", ["--batch-size", "0"], "--batch-size: batch_size=0 must be >= 1"),
        ("topk", ["--lr", "-0.01"], "--lr: lr=-0.01 must be >= 0"),
        ("mpsae", ["--n-steps", "0"], "--n-steps: n_steps=0 must be >= 1"),
        ("topk", ["--set", "decay_start=2"], "--set decay_start=...: decay_start=2.0 must be in [0, 1]"),
    ],
)
def test_fit_refuses_numbers_out_of_range_naming_the_flag(store_path, method, flags, message):
    result = runner.invoke(app, ["fit", "--method", method, "--store", str(store_path), *flags])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_capture_and_steer_eval_refuse_numbers_out_of_range(tmp_path):
    result = runner.invoke(
        app, ["capture", "--model", "tiny-gpt2", "--n-tokens", "0", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--n-tokens must be >= 1, got 0" in result.output
    assert not any(tmp_path.iterdir())  # refused before any work
    result = runner.invoke(app, ["steer-eval", "--n-samples", "0", "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--n-samples: n_samples=0 must be >= 1" in result.output
    assert not (tmp_path / "s").exists()


def test_configs_validate_their_numbers_for_library_users():
    from interp.decompose.mp_sae import MPSAEConfig
    from interp.decompose.sae import SAEConfig
    from interp.features import FeatureIndexError, IndexConfig
    from interp.steer.run import SteerEvalConfig, SteerEvalError

    for make, field in [(lambda: SNMFConfig(n_features=0), "n_features"), (lambda: SAEConfig(batch_size=0), "batch_size"),
                        (lambda: MPSAEConfig(lr=0.0), "lr"), (lambda: SNMFConfig(hierarchy=(8, 0)), "hierarchy")]:  # fmt: skip
        with pytest.raises(DecomposerError, match=f"^{field}="):
            make()
    with pytest.raises(FeatureIndexError, match="batch_tokens=0 must be >= 1"):
        IndexConfig(batch_tokens=0)
    with pytest.raises(SteerEvalError, match="top_p=1.5 must be in"):
        SteerEvalConfig(top_p=1.5)


def test_capture_takes_several_corpus_sources(tmp_path, monkeypatch):
    import json

    from interp.corpus import Contexts

    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.txt").write_text("\n\n".join(f"apples number {i} are red." for i in range(20)))
    (tmp_path / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": f"berries {i} are blue."}) for i in range(20))
    )
    result = runner.invoke(app, ["capture", "--model", "tiny-gpt2", "--sites", "0.resid_post", "--n-tokens", "80",
                                 "--context-len", "16", "--device", "cpu", "--corpus", str(tmp_path / "a.txt"),
                                 "--corpus", str(tmp_path / "b.jsonl")])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / "cache" / "activations" / "tiny-gpt2" / "a+b"
    contexts = Contexts.load(run / "contexts.safetensors")
    assert contexts.description["corpus"] == [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    assert len(contexts.doc_ids[contexts.doc_ids >= 0].unique()) > 2  # both sources' documents, ids apart
