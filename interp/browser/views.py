"""HTML and plotly pieces of the feature browser (pure functions: data in, HTML / figures out); the token
highlighting lives in interp.display, shared with the notebooks."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from interp.browser.display import CSS, example_html, examples_html, text_html, token_span

__all__ = [
    "CSS",
    "density_figure",
    "example_html",
    "examples_html",
    "histogram_figure",
    "scores_line",
    "text_html",
    "token_span",
]


def histogram_figure(edges: list[float], counts: list[int]) -> go.Figure:
    """Bar chart of the firing activations' histogram."""
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
    fig = go.Figure(go.Bar(x=centers, y=counts, width=width, marker_color="#fb923c"))
    fig.update_layout(xaxis_title="activation", yaxis_title="tokens", height=260,
                      margin={"l": 40, "r": 10, "t": 10, "b": 40}, bargap=0.02)  # fmt: skip
    return fig


def density_figure(log_density: list[float]) -> go.Figure:
    """Histogram over features of log10 firing density."""
    fig = go.Figure(go.Histogram(x=log_density, nbinsx=50, marker_color="#60a5fa"))
    fig.update_layout(title="feature density (log10 fraction of tokens)", height=240,
                      margin={"l": 40, "r": 10, "t": 40, "b": 30})  # fmt: skip
    return fig


SCORE_COLUMNS = (("detection", "accuracy"), ("detection", "f1"), ("fuzzing", "accuracy"), ("fuzzing", "f1"),
                 ("simulation", "correlation"))  # fmt: skip
OPTIONAL_SCORERS = ("simulation",)  # shown only when it was run


def scores_line(row: dict) -> str:
    """`detection accuracy 0.82 (shuffled 0.51) · ...` from an explanations row; '–' for scores not computed."""

    def fmt(value: float) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.2f}"

    def missing(value: float | None) -> bool:
        return value is None or math.isnan(value)

    parts = []
    for scorer, metric in SCORE_COLUMNS:
        own, base = row.get(f"{scorer}_{metric}"), row.get(f"{scorer}_{metric}_shuffled")
        if own is not None and not (scorer in OPTIONAL_SCORERS and missing(own) and missing(base)):
            parts.append(f"{scorer} {metric} {fmt(own)} (shuffled {fmt(base)})")
    parts.append(f"{int(row.get('n_malformed', 0))} malformed replies")
    return " · ".join(parts)
