"""interp.display: tokens shaded by activation (escaped, peak marked) and the SNMF hierarchy as a sunburst."""

from __future__ import annotations

import re

import torch

from interp.browser.display import feature_html, hierarchy_sunburst, text_html, token_span, top_token_labels
from interp.features import Example, Feature


def example(value: float, texts: list[str], acts: list[float | None], peak: int) -> Example:
    return Example(value, 0, 3, 7, list(range(len(texts))), texts, acts, peak)


def feature(top: list[Example], promoted=(("Paris", 2.0),)) -> Feature:
    return Feature(id=5, density=0.0123, max=4.0, mean=1.0, count=12, threshold=0.0, top=top, bands=[],
                   hist_edges=[], hist_counts=[], promoted=list(promoted), suppressed=[], similar=[],
                   neurons=[], n_neurons_nonzero=None, hierarchy=None)  # fmt: skip


def shades(html: str) -> list[float]:
    return [float(a) for a in re.findall(r"rgba\(251, 146, 60, ([0-9.]+)\)", html)]


def test_token_span_shades_escapes_and_skips_outside_tokens():
    assert token_span("x", None, 1.0) == ""  # outside the context: nothing
    span = token_span("<b>\n", 2.0, 4.0, peak=True)
    assert "&lt;b&gt;⏎" in span and "<b>" not in span
    assert shades(span) == [0.5] and 'title="2"' in span and "fb-peak" in span
    assert shades(token_span("a", 9.0, 4.0)) == [1.0]  # clipped at the scale
    assert "background-color" not in token_span("a", -1.0, 4.0)  # negative: unshaded


def test_feature_html_shows_the_top_examples_with_their_peaks():
    top = [
        example(4.0, ["The", " cat", " sat"], [0.0, 4.0, 1.0], peak=1),
        example(2.0, [" on", " the", " mat", "x"], [None, 2.0, 0.5, None], peak=1),
        example(1.0, ["a"], [1.0], peak=0),
    ]
    html = feature_html(feature(top), top=2, label="sport")
    assert html.count('class="fb-ex"') == 2  # only the first two examples
    assert "feature 5" in html and "sport" in html and "1.23%" in html and "Paris" in html
    peaks = re.findall(r'class="fb-tok fb-peak"[^>]*>([^<]*)<', html)
    assert peaks == [" cat", " the"]
    assert shades(html) == [1.0, 0.25, 0.5, 0.12]  # act / feature max; zeros unshaded, None tokens dropped
    assert "x<" not in html
    assert "never fires" in feature_html(feature([]))


def test_text_html_marks_the_strongest_token():
    html = text_html(["a", "b", "c"], [0.1, 0.9, 0.3], 0.9)
    assert re.findall(r'class="fb-tok fb-peak"[^>]*>([^<]*)<', html) == ["b"]


def test_hierarchy_sunburst_nests_every_feature_under_its_first_parent():
    from interp.decompose.snmf import SNMF, SNMFConfig

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 24, generator=gen) @ torch.rand(24, 40, generator=gen)
    snmf = SNMF(SNMFConfig(hierarchy=(8, 3, 2), max_iter=15, sparsity=0.2, device="cpu")).fit(
        x, progress=False
    )
    tree = snmf.hierarchy_tree()
    fig = hierarchy_sunburst(tree, labels={0: "cats · dogs"})
    trace = fig.data[0]
    nodes = {n["id"]: n for n in tree["nodes"]}
    ids, parents, values = list(trace.ids), list(trace.parents), list(trace.values)
    assert {f"L1:{f}" for f in range(8)} <= set(ids)
    for nid, parent in zip(ids, parents, strict=True):
        node = nodes[nid]
        assert parent == (node["parents"][0]["id"] if node["parents"] else "")
        children = [v for v, p in zip(values, parents, strict=True) if p == nid]
        own = values[ids.index(nid)]
        assert own == (1 if node["level"] == 1 else sum(children))  # sizes count finest features
    assert sum(v for v, p in zip(values, parents, strict=True) if p == "") == 8
    assert all(nodes[i]["level"] == 3 for i, p in zip(ids, parents, strict=True) if p == "")
    assert "#0 cats · dogs" in list(trace.labels)


def test_top_token_labels_keeps_the_first_tokens():
    import pandas as pd

    table = pd.DataFrame({"feature": [0, 1], "top_tokens": ["a · b · c · d", ""]})
    assert top_token_labels(table, n=2) == {0: "a · b", 1: ""}
