"""The Streamlit feature browser through streamlit.testing's AppTest: every page and widget, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_features import SITE, shared_toy_cache

APP = str(Path(__file__).resolve().parent.parent / "apps" / "feature_browser.py")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return shared_toy_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def model():
    from interp.models import load_model

    return load_model("tiny-llama", device="cpu")


def app(monkeypatch, cache: Path, **query: str) -> AppTest:
    monkeypatch.setenv("INTERP_CACHE", str(cache))
    monkeypatch.delenv("INTERP_INDEX", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def choose(at: AppTest, decomposer: str) -> AppTest:
    box = at.sidebar.selectbox(key="run_decomposer")
    box.set_value(next(o for o in box.options if o.startswith(decomposer))).run()
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [c.value for c in at.caption] + [h.value for h in at.header]
    parts += [s.value for s in at.subheader] + [x.label for x in at.expander] + [t.value for t in at.text]
    return "\n".join(parts)


def test_run_picker_and_features_table(monkeypatch, cache):
    at = app(monkeypatch, cache)
    assert [s.label for s in at.sidebar.selectbox] == ["Model", "Site", "Decomposer"]
    assert at.sidebar.selectbox(key="run_model").value == "tiny-llama"
    assert at.sidebar.selectbox(key="run_site").value == SITE
    choose(at, "topk-k32")
    assert "Features of topk" in texts(at) and "32 of 32 features" in texts(at)
    table = at.dataframe[0].value
    assert list(table["max_activation"]) == sorted(table["max_activation"], reverse=True)
    at.selectbox(key="sort").set_value("density").run()
    at.toggle(key="descending").set_value(False).run()
    table = at.dataframe[0].value
    assert list(table["density"]) == sorted(table["density"])
    token = next(t for t in table["top_tokens"] if t).split(" · ")[0]
    at.text_input(key="search").input(token).run()
    shown = at.dataframe[0].value

    def hits(frame):  # the rows whose top tokens, example text or promoted tokens contain the query
        columns = ("top_tokens", "top_text", "promoted")
        return sum(frame[c].str.contains(token, case=False, regex=False) for c in columns) > 0

    assert shown["top_tokens"].str.contains(token, regex=False).any() and hits(shown).all()
    assert sorted(shown["feature"]) == sorted(table["feature"][hits(table)]) and len(table) == 32
    at.text_input(key="search").input("no such text anywhere").run()
    assert "0 of 32 features" in texts(at)
    at.text_input(key="search").input("").run()
    at.number_input(key="jump").set_value(7).run()
    at.button(key="open_jump").click().run()
    assert at.sidebar.radio(key="page").value == "Feature" and "Feature 7" in texts(at)
    at.sidebar.radio(key="page").set_value("Features").run()
    at.selectbox(key="open_result_choice").set_value(at.selectbox(key="open_result_choice").options[2]).run()
    at.button(key="open_result").click().run()
    assert at.sidebar.radio(key="page").value == "Feature"
    assert (
        len(at.get("plotly_chart")) == 1
    )  # the feature page's histogram (density plot was on the table page)


def test_feature_page_shows_everything(monkeypatch, cache):
    at = app(monkeypatch, cache, page="Feature", feature="5")
    page = texts(at)
    assert "Feature 5" in page and "Top activations" in page and "Quantile bands" in page
    html = "\n".join(m.value for m in at.markdown)
    assert 'class="fb-tok' in html and 'title="' in html and "fb-peak" in html  # highlighted, value on hover
    assert len(at.get("plotly_chart")) == 1
    assert len(at.expander) == 6  # one per quantile band
    assert [m.label for m in at.metric] == ["density", "max activation", "mean when firing", "tokens firing"]
    frames = [list(d.value.columns) for d in at.dataframe]
    assert (
        ["promoted", "logit"] in frames
        and ["suppressed", "logit"] in frames
        and ["neuron", "weight"] in frames
    )
    assert "norm gains folded in" in page
    # hierarchy (SNMF): open the parent group, then one of its member features
    parent = next(b for b in at.button if b.key and b.key.startswith("parent_"))
    parent.click().run()
    assert "group L2:" in texts(at)
    child = next(b for b in at.button if b.key and b.key.startswith("child_L1:"))
    number = int(child.key.split(":")[1])
    child.click().run()
    assert f"Feature {number}" in texts(at)
    # similar features, prev / next, the id box
    similar = next(b for b in at.button if b.key and b.key.startswith("similar_"))
    target = int(similar.key.split("_")[1])
    similar.click().run()
    assert f"Feature {target}" in texts(at)
    at.number_input(key="feature_box").set_value(2).run()
    assert "Feature 2" in texts(at)
    at.button(key="next").click().run()
    assert "Feature 3" in texts(at)
    at.button(key="prev").click().run()
    assert "Feature 2" in texts(at)
    assert at.query_params["feature"] == ["2"] or at.query_params["feature"] == "2"


def test_text_steering_and_compare_pages(monkeypatch, cache):
    at = app(monkeypatch, cache, page="Test your text", feature="1")
    choose(at, "topk-k32")
    assert "Test your text" in texts(at)
    at.text_area(key="live_text").input("the cat sat on the mat").run()
    at.button(key="run_text").click().run()
    assert not at.exception, at.exception
    assert "fb-tok" in "\n".join(m.value for m in at.markdown) and "Feature 1" in texts(at)
    top = next(b for b in at.button if b.key and b.key.startswith("text_top_"))
    top.click().run()
    assert at.sidebar.radio(key="page").value == "Feature"

    at.sidebar.radio(key="page").set_value("Steering").run()
    at.text_input(key="steer_prompt").input("the cat").run()
    at.slider(key="steer_strength").set_value(4.0).run()
    at.slider(key="steer_tokens").set_value(8).run()
    at.button(key="steer_run").click().run()
    assert not at.exception, at.exception
    assert "without steering" in texts(at) and "at strength +4.00" in texts(at)
    assert len(at.text) == 2

    at.sidebar.radio(key="page").set_value("Compare").run()
    assert "Compare decomposers" in texts(at)
    assert at.selectbox(key="compare_with").value.endswith("snmf-k16")
    assert {m.label for m in at.metric} >= {"mean", "median", "frac>0.7"}
    match = next(b for b in at.button if b.key and b.key.startswith("match_"))
    number = int(match.key.split("_")[1])
    match.click().run()  # opens that feature of the other decomposer
    assert at.sidebar.selectbox(key="run_decomposer").value.startswith("snmf-k16")
    assert f"Feature {number}" in texts(at)


# ------------------------------------------------------------------------------------------------ bad input
def test_empty_cache_and_unindexed_decomposer(monkeypatch, cache, tmp_path):
    at = app(monkeypatch, tmp_path / "nothing_here")
    assert "No feature index found" in texts(at)
    copy = tmp_path / "cache" / "decomposers" / "toy" / SITE / "topk-k32"
    shutil.copytree(
        cache / "decomposers" / "toy" / SITE / "topk-k32", copy, ignore=shutil.ignore_patterns("index")
    )
    at = app(monkeypatch, tmp_path / "cache")
    assert "No feature index found" in texts(at)
    assert f"interp index {copy}" in "\n".join(c.value for c in at.code)


def test_old_format_missing_run_and_out_of_range(monkeypatch, cache, tmp_path):
    old = tmp_path / "old" / "decomposers" / "x" / "index"
    shutil.copytree(cache / "decomposers" / "toy" / SITE / "topk-k32" / "index", old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    at = app(monkeypatch, tmp_path / "old")
    assert "format version 0" in texts(at) and "rebuild" in texts(at)
    assert not at.exception

    monkeypatch.setenv("INTERP_INDEX", str(tmp_path / "no" / "such" / "run"))
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "empty"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and "no feature index at" in texts(at)

    at = app(monkeypatch, cache, page="Feature", feature="999")
    assert "Feature 999 is out of range: this index has features 0..15" in texts(at)
    assert not at.exception


def test_dead_feature_and_empty_index(monkeypatch, cache, tmp_path, model):
    from test_features import PlantedCodes, store_of

    from interp.features import IndexConfig, build_index

    store = store_of(cache)
    out = tmp_path / "dead" / "planted" / "index"
    build_index(PlantedCodes(store.d, 6), store, out, IndexConfig(top_k=3), model=model, progress=False)
    at = app(monkeypatch, tmp_path / "dead", page="Feature", feature="0")
    assert "never fired" in texts(at) and "No activating examples" in texts(at)
    assert not at.exception
    at.sidebar.radio(key="page").set_value("Test your text").run()
    assert "does not point to an existing decomposer folder" in texts(at)  # built from an object
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "n_tokens": 0}))
    at = app(monkeypatch, tmp_path / "dead", page="Features")
    assert "built on 0 tokens" in texts(at)


def test_compare_page_shows_the_bench_report_of_the_site(monkeypatch, cache, tmp_path):
    """Catches a page that ignores the report, shows rows of another site, or fakes a table when none exists."""
    from interp.evaluate.report import write_report

    at = app(monkeypatch, cache, page="Compare")
    choose(at, "topk-k32")
    assert "No `interp bench store` report" in texts(at) and "--out" in texts(at)

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    folders = {n: copy / "decomposers" / "toy" / "1.mlp_hidden" / n for n in ("topk-k32", "snmf-k16")}
    rows = [{"decomposer": n, "method": n.split("-")[0], "site": "1.mlp_hidden", "metric": "absorption_fraction",
             "value": v, "settings": json.dumps({"folder": str(f)})}
            for (n, f), v in zip(folders.items(), (0.125, 0.5), strict=True)]  # fmt: skip
    rows.append({**rows[0], "decomposer": "elsewhere", "site": "0.resid_post", "value": 0.9})
    write_report(rows, copy / "bench" / "toy", "interp bench store")
    at = app(monkeypatch, copy, page="Compare")
    choose(at, "topk-k32")
    assert "Bench report" in texts(at) and "No `interp bench store` report" not in texts(at)
    (table,) = at.dataframe[:1]
    shown = table.value
    assert sorted(shown["decomposer"]) == ["snmf-k16", "topk-k32"]
    assert dict(zip(shown["decomposer"], shown["absorption_fraction"], strict=True))["topk-k32"] == 0.125
