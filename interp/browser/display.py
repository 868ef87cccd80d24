"""HTML and plotly renderings of features, shared by the feature browser and notebooks (data in, HTML / figures out).

from IPython.display import HTML
HTML(feature_html(FeatureIndex.open(folder).feature(17)))      # top contexts, tokens shaded by activation
hierarchy_sunburst(index.hierarchy, labels=top_token_labels(index))   # the SNMF hierarchy, interactive
"""

from __future__ import annotations

import html
from typing import Any

from interp.features import Example, Feature

CSS = """
<style>
.fb-ex {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.86rem; line-height: 1.9;
        padding: 2px 0; border-bottom: 1px solid rgba(128,128,128,0.15); white-space: normal;}
.fb-val {display: inline-block; min-width: 4.2em; color: #666; font-size: 0.75rem; margin-right: 0.6em;}
.fb-tok {white-space: pre; border-radius: 3px; padding: 1px 0;}
.fb-tok:hover {outline: 1px solid #333;}
.fb-peak {border-bottom: 2px solid #c2410c; font-weight: 600;}
.fb-where {color: #999; font-size: 0.7rem; margin-left: 0.6em;}
.fb-head {font-family: sans-serif; font-size: 0.9rem; margin: 0.8em 0 0.2em 0;}
</style>
"""


def token_span(text: str, act: float | None, scale: float, peak: bool = False) -> str:
    """One token as a span shaded by `act / scale` (orange), with the value on hover; "" outside the context."""
    shown = html.escape(text.replace("\n", "⏎").replace("\t", "⇥")) or "∅"
    if act is None:
        return ""
    alpha = 0.0 if scale <= 0 else max(0.0, min(1.0, act / scale))
    classes = "fb-tok fb-peak" if peak else "fb-tok"
    style = f"background-color: rgba(251, 146, 60, {alpha:.2f})" if alpha > 0 else ""
    return f'<span class="{classes}" style="{style}" title="{act:.4g}">{shown}</span>'


def example_html(example: Example, scale: float) -> str:
    """One example row: its value, then its window of tokens highlighted by activation."""
    spans = "".join(
        token_span(text, act, scale, peak=i == example.peak)
        for i, (text, act) in enumerate(zip(example.texts, example.acts, strict=True))
    )
    where = f"ctx {example.context} · pos {example.position}"
    return (
        f'<div class="fb-ex"><span class="fb-val">{example.value:.3g}</span>{spans}'
        f'<span class="fb-where">{where}</span></div>'
    )


def examples_html(examples: list[Example], scale: float) -> str:
    return CSS + "".join(example_html(e, scale) for e in examples)


def text_html(texts: list[str], acts: list[float], scale: float) -> str:
    """A text, every token `texts [n]` highlighted by its activation `acts [n]` (the peak underlined)."""
    peak = max(range(len(acts)), key=lambda i: acts[i]) if acts else -1
    spans = "".join(
        token_span(t, a, scale, i == peak) for i, (t, a) in enumerate(zip(texts, acts, strict=True))
    )
    return CSS + f'<div class="fb-ex">{spans}</div>'


def feature_html(feature: Feature, top: int = 5, label: str = "") -> str:
    """A feature's heading (id, density, max, promoted tokens) and its `top` strongest contexts, highlighted."""
    promoted = " ".join(html.escape(repr(t)) for t, _ in feature.promoted[:5])
    head = (
        f"<b>feature {feature.id}</b>{' · ' + html.escape(label) if label else ''} · density "
        f"{feature.density:.2%} · max {feature.max:.3g}" + (f" · promotes {promoted}" if promoted else "")
    )
    body = "".join(example_html(e, feature.max) for e in feature.top[:top]) or "<i>never fires</i>"
    return CSS + f'<div class="fb-head">{head}</div>{body}'


def top_token_labels(table: Any, n: int = 3) -> dict[int, str]:
    """feature id -> its first `n` distinct top tokens, from a FeatureIndex's table (for figure labels)."""
    return {
        int(f): " · ".join(str(tokens).split(" · ")[:n])
        for f, tokens in zip(table["feature"], table["top_tokens"], strict=True)
    }


def hierarchy_sunburst(tree: dict, labels: dict[int, str] | None = None, title: str = "") -> Any:
    """The SNMF hierarchy `{"levels", "nodes"}` (see SNMF.hierarchy_tree) as a plotly sunburst.

    The coarsest level is the inner ring; each feature hangs under its first (heaviest) parent; a group's size is
    the number of finest-level features under it. `labels` names finest-level features (e.g. top tokens).
    """
    import plotly.graph_objects as go

    nodes = {node["id"]: node for node in tree["nodes"]}
    parent = {nid: (n["parents"][0]["id"] if n["parents"] else "") for nid, n in nodes.items()}
    leaves = [nid for nid, n in nodes.items() if n["level"] == 1]
    size = dict.fromkeys(nodes, 0)
    for leaf in leaves:  # count finest features under every group (a walk up the few levels)
        node = leaf
        while node:
            size[node] += 1
            node = parent[node]
    labels = labels or {}
    ids = [nid for nid in nodes if size[nid] > 0]

    def label(nid: str) -> str:
        n = nodes[nid]
        if n["level"] == 1:
            text = labels.get(n["feature"], "")
            return f"#{n['feature']}" + (f" {text}" if text else "")
        return f"group {nid}"

    weights = {nid: (n["parents"][0]["weight"] if n["parents"] else 1.0) for nid, n in nodes.items()}
    fig = go.Figure(
        go.Sunburst(
            ids=ids,
            labels=[label(nid) for nid in ids],
            parents=[parent[nid] for nid in ids],
            values=[size[nid] for nid in ids],
            branchvalues="total",
            customdata=[weights[nid] for nid in ids],
            hovertemplate="%{label}<br>%{value} features<br>weight in parent %{customdata:.3f}<extra></extra>",
            insidetextorientation="radial",
        )
    )
    fig.update_layout(title=title or f"SNMF hierarchy, levels {tree['levels']} (finest outside)",
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, height=600)  # fmt: skip
    return fig
