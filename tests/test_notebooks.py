"""The notebooks run top to bottom on a tiny model (papermill, in a kernel on this interpreter) and show what they
promise; the committed copies carry no outputs."""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import pytest
from repo_scripts import load_script

nbformat = pytest.importorskip("nbformat", reason="the dev extra installs nbformat, papermill and ipykernel")
pytest.importorskip("papermill", reason="the dev extra installs papermill")
pytest.importorskip("ipykernel", reason="the dev extra installs ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
runner = load_script("notebooks/run.py", "notebook_runner")
PLOTLY = "application/vnd.plotly.v1+json"


def parameters_cell(nb) -> dict[str, object]:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters' (papermill)"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), "the parameters cell holds plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def test_committed_notebooks_are_clean_and_parametrized():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.stem for p in paths] == list(runner.NAMES)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} has outputs: run `python notebooks/run.py --strip`"
                assert cell.execution_count is None, f"{path.name} has execution counts: strip it"
            assert "papermill" not in cell.metadata and "execution" not in cell.metadata
        assert "papermill" not in nb.metadata and "widgets" not in nb.metadata
        params = parameters_cell(nb)
        assert params["model"] == "gemma-3-270m"  # the default model, out of the box
        for preset, sizes in runner.PRESETS.items():
            unknown = set(sizes[path.stem]) - set(params)
            assert not unknown, (
                f"preset {preset} passes parameters {unknown} that {path.name} does not define"
            )


def test_strip_clears_an_executed_copy(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=3)]
    cell.metadata["papermill"] = {"duration": 0.1}
    nb.cells = [cell]
    nb.metadata["papermill"] = {"parameters": {}}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert runner.strip(path) is True
    clean = nbformat.read(path, as_version=4)
    assert clean.cells[0].outputs == [] and clean.cells[0].execution_count is None
    assert "papermill" not in clean.metadata and "papermill" not in clean.cells[0].metadata
    assert runner.strip(path) is False  # already clean


# ------------------------------------------------------------------------------------------- execution
def execute(name: str, tmp_path: Path, monkeypatch) -> tuple[object, Path, dict]:
    """Run notebook `name` with the tiny parameters into tmp_path; returns (executed notebook, cache, params)."""
    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))  # restored after the test
    cache = tmp_path / "cache"
    params = {**runner.TINY[name], "cache": str(cache)}
    out = runner.run_notebook(name, tmp_path / "executed", params, timeout=300)
    nb = nbformat.read(out, as_version=4)
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code"), "a cell did not run"
    return nb, cache, params


def outputs(nb, kind: str) -> list:
    """Every output of `kind`: 'stream' texts, or the data of a mime type (e.g. text/html, PLOTLY)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "stream" and out.output_type == "stream":
                found.append(out.text)
            elif kind != "stream" and kind in out.get("data", {}):
                data = out.data[kind]
                found.append(json.loads(data) if isinstance(data, str) and kind == PLOTLY else data)
    return found


def array(value) -> list:
    """A plotly JSON array: a list, or plotly's typed-array encoding {"dtype", "bdata" (base64), "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
    from interp.features import FeatureIndex

    nb, cache, params = execute("01_quickstart", tmp_path, monkeypatch)
    [folder] = (cache / "notebooks" / "tiny-llama" / "bbc" / "decomposers" / "1.mlp_hidden").iterdir()
    index = FeatureIndex.open(folder)
    assert index.n_features == params["n_features"] and index.manifest.n_tokens == params["n_tokens"]
    firing = int((index.table["count"] > 0).sum())
    html = [h for h in outputs(nb, "text/html") if "fb-head" in h]
    assert len(html) == 1, "the top contexts are shown in one HTML output"
    assert html[0].count('class="fb-head"') == min(params["n_show"], firing)
    assert "background-color: rgba(251, 146, 60" in html[0] and "fb-peak" in html[0]
    [loss] = [fig for fig in outputs(nb, PLOTLY) if fig["layout"]["title"]["text"] == "SNMF fit"]
    y = array(loss["data"][0]["y"])
    assert len(y) == json.loads((folder / "config.json").read_text())["fit"]["iteration"]
    assert min(y) < y[0]  # the fit made progress
    browse = [t for t in outputs(nb, "stream") if "interp browse" in t]
    assert browse and str(folder) in browse[0]


@pytest.mark.slow
def test_feature_discovery(tmp_path, monkeypatch):
    import pandas as pd

    nb, cache, params = execute("02_feature_discovery", tmp_path, monkeypatch)
    table = pd.read_csv(cache / "notebooks" / "tiny-llama" / "bbc" / "comparison.csv", index_col="method")
    assert list(table.index) == ["snmf", "topk", "mpsae"]
    assert table.loc["snmf", "n_features"] == params["hierarchy"][0]
    assert (table["fvu"].between(0, 1.5)).all() and (table["l0"] > 0).all()
    for sparse in ("topk", "mpsae"):  # k active latents per token at most
        assert table.loc[sparse, "n_features"] == params["sae_features"]
        assert table.loc[sparse, "l0"] <= params["sae_k"] + 1e-6
    assert all(math.isfinite(v) for v in table["ce_spliced"])
    shown = " ".join(outputs(nb, "text/html"))
    assert all(name in shown for name in ("snmf -&gt; topk", "cos mpsae", "promoted"))
    [sunburst] = [fig["data"][0] for fig in outputs(nb, PLOTLY) if fig["data"][0]["type"] == "sunburst"]
    k = params["hierarchy"][0]
    assert {f"L1:{f}" for f in range(k)} <= set(sunburst["ids"])
    roots = [v for v, p in zip(array(sunburst["values"]), sunburst["parents"], strict=True) if p == ""]
    assert sum(roots) == k and all(i.startswith(f"L{len(params['hierarchy'])}:") for i, p in
                                   zip(sunburst["ids"], sunburst["parents"], strict=True) if p == "")  # fmt: skip
    bars = [fig for fig in outputs(nb, PLOTLY) if fig["data"][0]["type"] == "bar"]
    assert (
        bars and len(bars[0]["data"]) == 2
    )  # SNMF weights next to the TopK match's, at the feature's neurons


@pytest.mark.slow
def test_causal_tests(tmp_path, monkeypatch):
    import pandas as pd

    nb, cache, params = execute("03_causal_tests", tmp_path, monkeypatch)
    [steer_dir] = (cache / "notebooks" / "tiny-llama" / "bbc" / "steer").iterdir()
    results = pd.read_parquet(steer_dir / "results.parquet")
    methods = set(results["method"])
    assert {"diff_in_means", "random", "unsteered"} < methods and len(methods) == 4  # + the SNMF features
    steered = results[results["method"] != "unsteered"]
    assert set(steered["concept"]) == set(params["concept_names"])
    assert sorted(set(steered["target"])) == params["strengths"] and set(steered["kind"]) == {"strength"}
    assert len(steered) == 2 * 3 * len(params["strengths"])  # concepts x methods x strengths, one sign
    detection = pd.read_csv(steer_dir / "detection.csv")
    assert detection["held_out_auroc"].between(0, 1).all()
    [sweep] = [fig for fig in outputs(nb, PLOTLY) if "Steering sweep" in fig["layout"]["title"]["text"]]
    assert len(sweep["data"]) == 3 * 2 * 3  # methods x concepts x measures (concept score, fluency, KL)
    assert {x for trace in sweep["data"] for x in array(trace["x"])} == set(params["strengths"])
    text = "".join(outputs(nb, "stream"))
    assert "without: I think that" in text and "with:    I think that" in text
    assert sum("detects" in h for h in outputs(nb, "text/html")) == 1  # the chosen features, one HTML output
