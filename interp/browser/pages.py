"""The browser's pages (Features, Feature, Test your text, Steering, Compare) and its sidebar run picker."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from interp.browser import views
from interp.browser.bench_view import bench_section
from interp.browser.state import (
    discover,
    index_mtime,
    live_decomposer,
    live_model,
    matches,
    open_feature,
    open_group,
    open_index,
    open_run,
    read_feature,
    run_label,
    settings,
    sync_feature_box,
)
from interp.decompose.base import read_source
from interp.features.reader import FeatureIndex


# ----------------------------------------------------------------------------------------------- sidebar
def pick_index(cache: Path, explicit: Path | None) -> tuple[FeatureIndex | None, list[dict], list[str]]:
    """The run picker: model, site, decomposer among the indexes found. Returns (index or None, rows, unindexed)."""
    rows, unindexed = discover(str(cache), str(explicit) if explicit else None)
    side = st.sidebar
    side.title("interp · features")
    if not rows:
        side.warning(f"No feature index under {cache}.")
        st.info(
            f"No feature index found under `{cache}`. Build one with `interp index DECOMPOSER_FOLDER` "
            "(a folder written by `interp fit`), then reload."
        )
        if unindexed:
            st.markdown("Decomposers without an index:")
            st.code("\n".join(f"interp index {p}" for p in unindexed[:20]), language="bash")
        return None, rows, unindexed
    models = sorted({str(r["model"]) for r in rows})
    model = side.selectbox("Model", models, key="run_model")
    sites = sorted({str(r["site"]) for r in rows if str(r["model"]) == model})
    site = side.selectbox("Site", sites, key="run_site")
    choices = [r for r in rows if str(r["model"]) == model and str(r["site"]) == site]
    labels = [run_label(r) for r in choices]
    label = side.selectbox("Decomposer", labels, key="run_decomposer")
    row = choices[labels.index(label)] if label in labels else choices[0]
    if row["error"]:
        st.error(f"Cannot open the index at {row['path']}: {row['error']}")
        return None, rows, unindexed
    index = open_index(row["path"], index_mtime(row["path"]))
    previous = st.session_state.get("index_path")
    if previous != row["path"]:
        st.session_state.index_path = row["path"]
        st.session_state.pop("group", None)
        if previous is not None:  # switched runs: keep the feature id where it exists
            st.session_state.feature = min(int(st.session_state.get("feature", 0)), index.n_features - 1)
    m = index.manifest
    side.caption(
        f"{m.n_features:,} features · {m.n_tokens:,} tokens indexed · d_in {m.d_in}  \nindex: `{index.path}`"
    )
    return index, rows, unindexed


# ----------------------------------------------------------------------------------------------- pages
def page_features(index: FeatureIndex) -> None:
    table = index.table
    st.header(f"Features of {index.manifest.method} · {index.manifest.site}")
    if index.manifest.n_tokens == 0:
        st.warning("This index was built on 0 tokens: every feature is empty. Capture a corpus with text.")
    c1, c2, c3 = st.columns([3, 2, 1])
    searched = [c for c in ("top_tokens", "top_text", "promoted", "explanation") if c in table.columns]
    query = c1.text_input("Search " + ", ".join(c.replace("_", " ") for c in searched), key="search")
    sort = c2.selectbox("Sort by", ["max_activation", "density", "mean_activation", "count", "feature"],
                        key="sort")  # fmt: skip
    descending = c3.toggle("Descending", value=True, key="descending")
    view = table
    if query:
        mask = False
        for column in searched:
            mask = mask | table[column].str.contains(query, case=False, regex=False)
        view = table[mask]
    view = view.sort_values(sort, ascending=not descending, kind="stable")
    st.caption(f"{len(view):,} of {len(table):,} features")
    st.dataframe(
        view.head(2000),
        hide_index=True,
        width="stretch",
        column_config={
            "density": st.column_config.NumberColumn("density", format="percent"),
            "max_activation": st.column_config.NumberColumn("max", format="%.4g"),
            "mean_activation": st.column_config.NumberColumn("mean", format="%.4g"),
        },
    )
    j1, j2, j3 = st.columns([2, 1, 3])
    j1.number_input("Jump to feature id", min_value=0, step=1, key="jump")
    j2.button("Open", key="open_jump", on_click=lambda: open_feature(st.session_state.jump))
    if len(view):
        first = view["feature"].head(50).tolist()
        j3.selectbox("Or open a result", first, key="open_result_choice",
                            format_func=lambda f: f"#{f} · {table.at[f, 'top_tokens']}")  # fmt: skip
        j3.button("Open result", key="open_result",
                  on_click=lambda: open_feature(st.session_state.open_result_choice))  # fmt: skip
    density = table["density"][table["density"] > 0]
    if len(density):
        st.plotly_chart(views.density_figure([math.log10(d) for d in density]), key="density_plot")
    dead = int((table["count"] == 0).sum())
    st.caption(f"{dead:,} features never fired on the indexed tokens.")


def feature_header(index: FeatureIndex) -> int | None:
    """Prev / id / next controls; returns the feature id, or None when out of range (with a message)."""
    n = index.n_features
    st.session_state.feature_box = int(st.session_state.get("feature", 0))
    c1, c2, c3, _ = st.columns([1, 2, 1, 4])
    feature = int(st.session_state.feature)
    c1.button("◀ prev", key="prev", disabled=feature <= 0, on_click=lambda: open_feature(feature - 1))
    c2.number_input("Feature id", step=1, key="feature_box", on_change=sync_feature_box,
                    label_visibility="collapsed")  # fmt: skip
    c3.button("next ▶", key="next", disabled=feature >= n - 1, on_click=lambda: open_feature(feature + 1))
    if not 0 <= feature < n:
        st.error(f"Feature {feature} is out of range: this index has features 0..{n - 1}.")
        return None
    return feature


def page_feature(index: FeatureIndex) -> None:
    feature_id = feature_header(index)
    if feature_id is None:
        return
    f = read_feature(str(index.path), index_mtime(str(index.path)), feature_id)
    m = index.manifest
    st.header(f"Feature {f.id}")
    tokens = index.table.at[f.id, "top_tokens"]
    st.caption(f"{m.method} · {m.site} · {m.model}" + (f" · top tokens: {tokens}" if tokens else ""))
    explanation_panel(index, f.id)
    c = st.columns(4)
    c[0].metric("density", f"{f.density:.3%}")
    c[1].metric("max activation", f"{f.max:.4g}")
    c[2].metric("mean when firing", f"{f.mean:.4g}")
    c[3].metric("tokens firing", f"{f.count:,}")
    if f.count == 0:
        st.warning(f"This feature never fired on the {m.n_tokens:,} tokens indexed (a dead feature).")
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Top activations")
        if f.top:
            st.markdown(views.examples_html(f.top, f.max), unsafe_allow_html=True)
        else:
            st.info("No activating examples.")
        st.subheader("Quantile bands")
        quantiles = list(m.config.get("band_quantiles", [])) + [1.0]
        for b, (low, high, examples) in enumerate(f.bands):
            q = f"{quantiles[b]:.0%}–{quantiles[b + 1]:.0%}" if b + 1 < len(quantiles) else ""
            with st.expander(f"band {q} · activations {low:.3g}–{high:.3g} · {len(examples)} samples",
                             expanded=b == len(f.bands) - 2):  # fmt: skip
                if examples:
                    st.markdown(views.examples_html(examples, f.max), unsafe_allow_html=True)
                else:
                    st.caption("no tokens in this band")
    with right:
        if f.count:
            st.subheader("Activation histogram")
            st.caption(f"firing tokens, activations above {f.threshold:.3g}")
            st.plotly_chart(views.histogram_figure(f.hist_edges, f.hist_counts), key="histogram")
        if f.promoted:
            st.subheader("Logit lens")
            st.caption(m.logit_lens)
            l1, l2 = st.columns(2)
            l1.dataframe({"promoted": [t for t, _ in f.promoted], "logit": [v for _, v in f.promoted]},
                         hide_index=True)  # fmt: skip
            l2.dataframe({"suppressed": [t for t, _ in f.suppressed], "logit": [v for _, v in f.suppressed]},
                         hide_index=True)  # fmt: skip
        if f.neurons:
            st.subheader("Neuron composition")
            st.caption(
                f"{f.n_neurons_nonzero:,} of {m.d_in:,} neurons have a non-zero weight; largest |weight|:"
            )
            st.dataframe({"neuron": [i for i, _ in f.neurons], "weight": [w for _, w in f.neurons]},
                         hide_index=True, height=210)  # fmt: skip
        if index.hierarchy:
            hierarchy_panel(index, f)
        st.subheader("Similar features")
        for other, cos in f.similar:
            label = f"#{other} · cos {cos:.2f} · {index.table.at[other, 'top_tokens']}"
            st.button(label, key=f"similar_{other}", on_click=open_feature, args=(other,))


def explanation_panel(index: FeatureIndex, feature: int) -> None:
    """The feature's LLM explanation and its scores against the shuffled-explanation baseline (`interp explain`)."""
    row = index.explanation(feature)
    if row is None:
        if "explanation" in index.table.columns:
            st.caption("no explanation for this feature (explain it with `interp explain --features ...`)")
        return
    st.info(
        f"**Explanation** ({row['llm_model']}, {row['prompt_version']}): {row['explanation'] or '(none)'}"
    )
    st.caption(views.scores_line(row))


def hierarchy_panel(index: FeatureIndex, f) -> None:
    """SNMF hierarchy: this feature's parent groups and, for an opened group, its members (all clickable)."""
    st.subheader("Hierarchy")
    st.caption(f"levels (finest first): {index.hierarchy['levels']}")
    node = f.hierarchy
    if node is None:
        st.caption("this feature is not in the hierarchy")
        return
    for parent in node["parents"]:
        st.button(f"parent group {parent['id']} (weight {parent['weight']:.2f})", key=f"parent_{parent['id']}",
                  on_click=open_group, args=(parent["id"],))  # fmt: skip
    group = st.session_state.get("group")
    if group and group in index.nodes:
        g = index.nodes[group]
        with st.container(border=True):
            st.markdown(f"**group {group}** · level {g['level']} · {len(g['children'])} children")
            for child in sorted(g["children"], key=lambda c: -c["weight"]):
                level, number = child["id"][1:].split(":")
                if level == "1":
                    tokens = index.table.at[int(number), "top_tokens"]
                    st.button(f"feature #{number} (weight {child['weight']:.2f}) · {tokens}",
                              key=f"child_{child['id']}", on_click=open_feature, args=(int(number),))  # fmt: skip
                else:
                    st.button(f"group {child['id']} (weight {child['weight']:.2f})", key=f"child_{child['id']}",
                              on_click=open_group, args=(child["id"],))  # fmt: skip
            for parent in g["parents"]:
                st.button(f"parent group {parent['id']} (weight {parent['weight']:.2f})",
                          key=f"gparent_{parent['id']}", on_click=open_group, args=(parent["id"],))  # fmt: skip


def needs_decomposer(index: FeatureIndex) -> str | None:
    folder = index.manifest.decomposer
    if not folder or not Path(folder).exists():
        st.error(
            f"This index does not point to an existing decomposer folder ({folder or 'none recorded'}); "
            "live pages need it. Rebuild the index from the decomposer folder: `interp index FOLDER`."
        )
        return None
    return folder


def live_page(index: FeatureIndex, title: str):
    """The header of a page that runs the model: (decomposer folder, feature), or None when either is missing."""
    st.header(title)
    folder = needs_decomposer(index)
    if folder is None:
        return None
    feature = feature_header(index)
    return None if feature is None else (folder, feature)


def page_text(index: FeatureIndex) -> None:
    from interp.browser.live import text_codes

    opened = live_page(index, "Test your text")
    if opened is None:
        return
    folder, feature = opened
    text = st.text_area("Text", value="The capital of France is Paris. The market rallied on Monday.",
                        key="live_text")  # fmt: skip
    if st.button("Run the model", key="run_text", type="primary"):
        model = live_model(index.manifest.model)
        st.session_state.live_result = (text, str(index.path), text_codes(model, live_decomposer(folder),
                                                                          index.manifest.site, text))  # fmt: skip
    result = st.session_state.get("live_result")
    if result is None or result[1] != str(index.path):
        st.caption("Type text and press Run: the model computes this feature's activation on every token.")
        return
    _, _, codes = result
    acts = codes.codes[:, feature].tolist()
    scale = max(
        read_feature(str(index.path), index_mtime(str(index.path)), feature).max, max(acts, default=0.0)
    )
    st.markdown(f"**Feature {feature}** on your text (max here {max(acts, default=0.0):.4g}; shading relative to "
                f"max({scale:.4g}) over the corpus and this text)")  # fmt: skip
    st.markdown(views.text_html(codes.texts, acts, scale), unsafe_allow_html=True)
    st.subheader("Strongest features on this text")
    peak = codes.codes.max(dim=0)
    top = peak.values.topk(min(10, peak.values.shape[0]))
    for value, other in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        label = f"#{other} · max {value:.3g} · {index.table.at[other, 'top_tokens']}"
        st.button(label, key=f"text_top_{other}", on_click=open_feature, args=(other,))


def page_steering(index: FeatureIndex) -> None:
    from interp.browser.live import steer

    opened = live_page(index, "Steering playground")
    if opened is None:
        return
    folder, feature = opened
    m = index.manifest
    st.caption(
        f"Adds strength × {m.mean_input_norm:.3g} (the mean activation norm at {m.site}) × the feature's unit "
        "direction at every position, through interp.steer.interventions; greedy decoding."
    )
    prompt = st.text_input("Prompt", value="I think that", key="steer_prompt")
    c1, c2 = st.columns(2)
    strength = c1.slider("Strength (× mean activation norm)", -4.0, 4.0, 1.0, 0.25, key="steer_strength")
    n_new = c2.slider("New tokens", 4, 64, 24, 4, key="steer_tokens")
    if st.button("Generate", key="steer_run", type="primary"):
        model = live_model(m.model)
        direction = live_decomposer(folder).directions[feature].detach().cpu()
        plain, steered = steer(model, m.site, direction, strength * m.mean_input_norm, prompt, n_new)
        st.session_state.steer_result = (feature, strength, prompt, plain, steered)
    result = st.session_state.get("steer_result")
    if result is not None and result[0] == feature:
        _, used, prompt_used, plain, steered = result
        left, right = st.columns(2)
        left.markdown("**without steering**")
        left.text(prompt_used + plain)
        right.markdown(f"**with feature {feature} at strength {used:+.2f}**")
        right.text(prompt_used + steered)


def page_compare(index: FeatureIndex, rows: list[dict], unindexed: list[str]) -> None:
    st.header("Compare decomposers of one site")
    m = index.manifest
    bench_section(settings()[0], m.model, m.site)
    folder = needs_decomposer(index)
    if folder is None:
        return
    others = {r["decomposer"]: r for r in rows if r["model"] == m.model and r["site"] == m.site
              and r["decomposer"] not in ("", folder) and not r["error"]}  # fmt: skip
    for path in unindexed:
        info = read_source(path)
        if (
            path not in others
            and info is not None
            and (info.get("model"), info.get("site")) == (m.model, m.site)
        ):
            others[path] = {"decomposer": path, "name": Path(path).name, "method": "?", "n_features": "?",
                            "model": m.model, "site": m.site, "path": "", "error": "not indexed"}  # fmt: skip
    if not others:
        st.info(
            f"No other decomposer of {m.model} at {m.site} in the cache. Fit another one on the same store "
            "(`interp fit --method topk --store STORE`) and index it to compare."
        )
        return
    choice = st.selectbox("Compare with", list(others), key="compare_with",
                          format_func=lambda p: f"{others[p]['name']} ({others[p]['method']})")  # fmt: skip
    other = others[choice]
    ids, cos = matches(folder, choice)
    from interp.browser.live import match_summary

    summary = match_summary(cos[:, 0])
    st.caption("Best match of each feature here among the other decomposer's features, by direction cosine:")
    cols = st.columns(len(summary))
    for col, (name, value) in zip(cols, summary.items(), strict=True):
        col.metric(name, f"{value:.2f}")
    feature = feature_header(index)
    if feature is None:
        return
    st.subheader(f"Feature {feature}: closest features of {other['name']}")
    for j, c in zip(ids[feature].tolist(), cos[feature].tolist(), strict=True):
        if other["error"]:
            st.markdown(f"- #{j} · cos {c:.2f} (index it to open: `interp index {choice}`)")
        else:
            st.button(f"open #{j} in {other['name']} · cos {c:.2f}", key=f"match_{j}", on_click=open_run,
                      args=(other, j))  # fmt: skip
    import pandas as pd

    table = pd.DataFrame({"feature": range(ids.shape[0]), "best match": ids[:, 0].numpy(),
                          "cosine": cos[:, 0].numpy(), "top tokens": index.table["top_tokens"]})  # fmt: skip
    st.dataframe(table.sort_values("cosine", ascending=False), hide_index=True, width="stretch", height=320)
