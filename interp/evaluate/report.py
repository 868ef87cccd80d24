"""The bench's outputs, from long-format metric rows {decomposer, method, site, metric, value, settings}:

- `metrics.csv`: the rows as they are (settings: a JSON string of what produced the value);
- `report.md`: one table, a row per (decomposer, site), a column per metric (empty where not measured);
- `frontier.html`: plotly, FVU vs L0 and each other metric vs L0, one trace per method.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

from interp.core.io import atomic_write_text

COLUMNS = ("decomposer", "method", "site", "metric", "value", "settings")
ORDER = ("l0", "fvu", "explained_variance", "mcc", "f1", "precision", "recall", "uniqueness", "dead_fraction",
         "parent_f1", "child_f1", "parent_cos", "child_cos", "shrinkage", "ce_loss_recovered", "ce_score",
         "kl_score", "kl", "ce_delta")  # fmt: skip
"""Columns of report.md first in this order, the other metrics after them alphabetically."""
NOT_PLOTTED = (
    "l0",
    "true_l0",
    "n_tokens",
    "train_seconds",
    "eval_seconds",
    "core_seconds",
    "probing_seconds",
    "absorption_seconds",
)


def write_csv(rows: Iterable[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**row, "value": float(row["value"])} for row in csv.DictReader(f)]


def wide(rows: Iterable[dict]) -> tuple[list[str], list[dict]]:
    """(metric names in report order, one dict per (decomposer, site) with decomposer, method, site, metrics)."""
    table: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["decomposer"], row["site"])
        table.setdefault(key, {"decomposer": row["decomposer"], "method": row["method"], "site": row["site"]})
        table[key][row["metric"]] = row["value"]
    metrics = {m for entry in table.values() for m in entry} - {"decomposer", "method", "site"}
    names = [m for m in ORDER if m in metrics] + sorted(metrics - set(ORDER))
    return names, list(table.values())


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return (
            f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}" if abs(value) < 0.01 else f"{value:.3f}"
        )
    return str(value)


def markdown_table(rows: Iterable[dict]) -> str:
    """The wide table as markdown, decomposers as rows."""
    names, entries = wide(rows)
    head = ["decomposer", "method", "site", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(entry.get(c)) for c in head) + " |" for entry in entries]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out: Path, title: str, notes: str = "") -> None:
    """metrics.csv, report.md and frontier.html in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "metrics.csv")
    atomic_write_text(out / "report.md", f"# {title}\n\n{markdown_table(rows)}\n{notes}")
    write_frontier(rows, out / "frontier.html", title)


def write_frontier(rows: list[dict], path: Path, title: str) -> None:
    """FVU vs L0 and every other metric vs L0, one trace per (method, site), in one html file."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names, entries = wide(rows)
    plotted = [m for m in names if m not in NOT_PLOTTED]
    plotted = ["fvu", *[m for m in plotted if m != "fvu"]] if "fvu" in plotted else plotted
    if not plotted:
        return
    cols = min(3, len(plotted))
    n_rows = math.ceil(len(plotted) / cols)
    fig = make_subplots(rows=n_rows, cols=cols, subplot_titles=[f"{m} vs L0" for m in plotted])
    groups: dict[tuple[str, str], list[dict]] = {}
    for entry in entries:
        groups.setdefault((entry["method"], entry["site"]), []).append(entry)
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    for g, ((method, site), members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda e: e.get("l0", math.nan))
        for i, metric in enumerate(plotted):
            points = [(e.get("l0"), e.get(metric), e["decomposer"]) for e in members if metric in e]
            if not points:
                continue
            fig.add_trace(
                go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], text=[p[2] for p in points],
                           mode="lines+markers", name=f"{method} ({site})", legendgroup=f"{method}{site}",
                           showlegend=i == 0, marker_color=palette[g % len(palette)]),
                row=i // cols + 1, col=i % cols + 1,
            )  # fmt: skip
    fig.update_layout(title=title, height=320 * n_rows, template="plotly_white")
    fig.update_xaxes(title_text="L0")
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
