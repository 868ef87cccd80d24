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
