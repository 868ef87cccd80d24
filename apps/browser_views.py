"""HTML and plotly pieces of the feature browser (pure functions: data in, HTML / figures out)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from interp.features import Example

CSS = """
<style>
.fb-ex {font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.86rem; line-height: 1.9;
        padding: 2px 0; border-bottom: 1px solid rgba(128,128,128,0.15); white-space: normal;}
.fb-val {display: inline-block; min-width: 4.2em; color: #666; font-size: 0.75rem; margin-right: 0.6em;}
.fb-tok {white-space: pre; border-radius: 3px; padding: 1px 0;}
.fb-tok:hover {outline: 1px solid #333;}
.fb-peak {border-bottom: 2px solid #c2410c; font-weight: 600;}
.fb-where {color: #999; font-size: 0.7rem; margin-left: 0.6em;}
</style>
"""


def token_span(text: str, act: float | None, scale: float, peak: bool = False) -> str:
    """One token as a span shaded by `act / scale` (orange), with the value on hover."""
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
    """Typed text, every token highlighted by its activation."""
    peak = max(range(len(acts)), key=lambda i: acts[i]) if acts else -1
    spans = "".join(
        token_span(t, a, scale, i == peak) for i, (t, a) in enumerate(zip(texts, acts, strict=True))
    )
    return CSS + f'<div class="fb-ex">{spans}</div>'


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
