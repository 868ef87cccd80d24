"""The steering report: held-out strength selection, the tables of summary.md with bootstrap intervals, the figures.

Strength selection (AxBench): per concept and method, the strength (sign and KL target) with the best mean score
on the *selection* prompts, among cells that reached their KL target, is chosen; its score on the *test* prompts
is reported. The test scores are never read by the selection. Every table has the unsteered row (the judge's floor)
and the paired difference of each method against it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from interp.core.io import atomic_write, atomic_write_text
from interp.steer.stats import Draws, Interval, bootstrap, paired_difference

UNSTEERED = "unsteered"
BASELINE_METHODS = ("diff_in_means", "random", UNSTEERED)


def select_strengths(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """(concept, method) -> the reached cell with the best mean score on the selection prompts.

    Reads only `row["select"]`; a (concept, method) with no reached cell is absent."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        if not row["reached"]:
            continue
        key, score = (row["concept"], row["method"]), _mean(row["select"]["score"])
        if key not in best or score > _mean(best[key]["select"]["score"]):
            best[key] = row
    return best


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def score_tensor(chosen: dict, method: str, concepts: list[str], shape: tuple[int, int], key: str = "score"):
    """Test scores `[n_concepts, n_prompts, n_samples]` of `method` at its chosen strengths (nan: none reached)."""
    out = torch.full((len(concepts), *shape), math.nan)
    for c, concept in enumerate(concepts):
        row = chosen.get((concept, method))
        if row is not None and key in row["test"]:
            out[c] = torch.tensor(row["test"][key], dtype=torch.float).view(shape)
    return out


def flat_frame(rows: list[dict]):
    """One line per cell: settings, then the mean of every per-text score per split (`select_*`, `test_*`)."""
    import pandas as pd

    lines = []
    for row in rows:
        line = {k: v for k, v in row.items() if k not in ("select", "test", "texts", "select_texts")}
        for split in ("select", "test"):
            for key, value in row[split].items():
                line[f"{split}_{key}"] = _mean(value) if isinstance(value, list) else value
        line["example"] = row["texts"][0] if row.get("texts") else ""
        lines.append(line)
    return pd.DataFrame(lines)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the report needs to know of the run."""

    title: str
    concepts: list[str]
    methods: list[str]  # in table order, unsteered last
    feature_methods: list[str]
    sites: dict[str, str]  # method -> steering site name
    shape: tuple[int, int]  # (n_test_prompts, n_samples)
    judge: str
    cell_note: str


def method_table(chosen: dict, layout: Layout, draws: Draws, keys: list[str]) -> tuple[list[list[str]], dict]:
    """Rows of the headline table, and each method's score interval."""
    table, intervals = [], {}
    for method in layout.methods:
        cells = [method, layout.sites.get(method, "-")]
        for key in keys:
            interval = bootstrap(score_tensor(chosen, method, layout.concepts, layout.shape, key), draws)
            cells.append(str(interval))
            if key == "score":
                intervals[method] = interval
        table.append(cells)
    return table, intervals


def pairs(layout: Layout) -> list[tuple[str, str]]:
    """(a, b) for each paired difference: every feature method against each baseline and the other features."""
    out = [(f, b) for f in layout.feature_methods for b in BASELINE_METHODS if b in layout.methods]
    out += [(a, b) for i, a in enumerate(layout.feature_methods) for b in layout.feature_methods[i + 1 :]]
    out += [(b, UNSTEERED) for b in ("diff_in_means", "random") if b in layout.methods]
    return out


def difference_table(chosen: dict, layout: Layout, draws: Draws) -> tuple[list[list[str]], dict]:
    rows, intervals = [], {}
    for a, b in pairs(layout):
        scores = [score_tensor(chosen, m, layout.concepts, layout.shape) for m in (a, b)]
        interval = paired_difference(*scores, draws)
        intervals[a, b] = interval
        verdict = "higher" if interval.lo > 0 else "lower" if interval.hi < 0 else "not distinguishable"
        rows.append([f"{a} - {b}", str(interval), verdict])
    return rows, intervals


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def frame_markdown(frame) -> str:
    rows = [[str(i)] + ["" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" for v in row.tolist()]
            for i, row in frame.iterrows()]  # fmt: skip
    return markdown([frame.index.name or "", *map(str, frame.columns)], rows)


def headline(differences: dict) -> str:
    """The verdict at the top of summary.md: which methods beat unsteered text (paired interval above 0)."""
    beat = [a for (a, b), d in differences.items() if b == UNSTEERED and d.lo > 0]
    if not beat:
        return ("**No method beats unsteered text**: no method's paired difference against the unsteered row "
                "is above 0 (95% interval); these steering scores do not show a steering effect.")  # fmt: skip
    return (
        "Methods whose score is above unsteered text (paired 95% interval above 0): " + ", ".join(beat) + "."
    )


def summary(rows: list[dict], unsteered: list[dict], detections: list, layout: Layout) -> tuple[str, dict]:
    """summary.md's text, and the intervals the figures draw."""
    import pandas as pd

    chosen = select_strengths(rows) | {(r["concept"], UNSTEERED): r for r in unsteered}
    draws = Draws.make(*layout.shape)
    keys = ["score", "on_topic", "concept", "fluency"]
    keys += ["offline_score"] if layout.judge == "both" else []
    table, intervals = method_table(chosen, layout, draws, keys)
    diffs, diff_intervals = difference_table(chosen, layout, draws)
    per_concept = pd.DataFrame(
        {m: [_mean(chosen[c, m]["test"]["score"]) if (c, m) in chosen else math.nan for c in layout.concepts]
         for m in layout.methods}, index=pd.Index(layout.concepts, name="concept"))  # fmt: skip
    detection = pd.DataFrame([dataclasses.asdict(d) for d in detections])
    auroc = detection.pivot(index="concept", columns="method", values="held_out_auroc")
    auroc.loc["mean"] = auroc.mean()
    unreached = [r for r in rows if not r["reached"]]
    lines = [f"# {layout.title}", "", headline(diff_intervals), "",
             f"Judge: {layout.judge}. Strength per concept and method chosen on the selection prompts (best mean "
             f"score among cells that reached their KL target); scores on the test prompts, mean over concepts "
             f"[95% bootstrap interval over prompts and samples]; {layout.cell_note}.", "",
             markdown(["method", "steered at", *keys], table), "",
             "Paired differences (same prompts and samples):", "", markdown(["difference", "mean [95%]", ""], diffs),
             "", "Test score per concept at the selected strength:", "", frame_markdown(per_concept), ""]  # fmt: skip
    lines += _judge_notes(rows, unsteered, layout)
    lines += ["Concept detection, held-out AUROC (best feature chosen on train; random = best of N random "
              "directions chosen the same way; probe = logistic regression, upper bound):", "", frame_markdown(auroc),
              "", f"KL targets not reached within 10% (left out of the selection): {len(unreached)} of {len(rows)} "
              "cells", *[f"- {r['concept']} / {r['method']} / sign {r['sign']:+d} / KL {r['target']}: {r['reason']}"
                         for r in unreached]]  # fmt: skip
    return "\n".join(lines) + "\n", intervals


def _judge_notes(rows: list[dict], unsteered: list[dict], layout: Layout) -> list[str]:
    """Unparseable LLM ratings, and (with both judges) their rank agreement."""
    notes = []
    every = rows + unsteered
    if layout.judge != "offline":
        rated = [
            r[s] for r in every for s in ("select", "test") if "llm_score" in r[s]
        ]  # splits the LLM rated
        bad, total = sum(s.get("unparseable", 0) for s in rated), sum(3 * len(s["llm_score"]) for s in rated)
        notes.append(f"LLM ratings that could not be parsed (rated 0): {bad} of {total}.")
    if layout.judge == "both":
        rho = [r["test"]["spearman"] for r in every if not math.isnan(r["test"].get("spearman", math.nan))]
        notes.append(f"Rank agreement of the offline and LLM scores (Spearman over each cell's test texts): mean "
                     f"{_mean(rho):.3f} over {len(rho)} cells (per cell in results.csv, test_spearman).")  # fmt: skip
    return [*notes, ""] if notes else []


def write_figures(out: Path, frame, intervals: dict[str, Interval], rows: list[dict], layout: Layout) -> None:
    """score_vs_kl.html (mean over concepts per KL target, with intervals), best_scores.html, concept_vs_fluency."""
    import pandas as pd
    import plotly.express as px

    draws = Draws.make(*layout.shape, n_boot=300)
    points = []
    for (method, sign, target), group in _groups(rows).items():
        chosen = {(r["concept"], method): r for r in group}
        iv = bootstrap(score_tensor(chosen, method, layout.concepts, layout.shape), draws)
        kl = _mean([r["kl"] for r in group])
        points.append({"method": f"{method} ({sign:+d})", "kl": kl, "score": iv.mean,
                       "plus": iv.hi - iv.mean, "minus": iv.mean - iv.lo, "target": target})  # fmt: skip
    if points:
        fig = px.line(pd.DataFrame(points), x="kl", y="score", color="method", error_y="plus", error_y_minus="minus",
                      markers=True, log_x=True, hover_data=["target"],
                      title=f"Test score vs KL, mean over concepts with 95% intervals ({layout.title})",
                      labels={"kl": "KL(clean || steered), next token on neutral prompts", "score": "score (0-2)"})  # fmt: skip
        fig.write_html(out / "score_vs_kl.html", include_plotlyjs="directory")
    bars = pd.DataFrame([{"method": m, "score": iv.mean, "plus": iv.hi - iv.mean, "minus": iv.mean - iv.lo}
                         for m, iv in intervals.items()])  # fmt: skip
    fig = px.bar(bars, x="method", y="score", error_y="plus", error_y_minus="minus",
                 title="Test score at the selected strength, 95% bootstrap intervals")  # fmt: skip
    fig.write_html(out / "best_scores.html", include_plotlyjs="directory")
    fig = px.scatter(frame, x="test_fluency", y="test_concept", color="method", symbol="concept",
                     hover_data=["target", "alpha", "example"], title="Concept vs fluency, every cell (test prompts)")  # fmt: skip
    fig.write_html(out / "concept_vs_fluency.html", include_plotlyjs="directory")


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["kind"] == "kl" and row["reached"]:
            groups.setdefault((row["method"], row["sign"], row["target"]), []).append(row)
    return groups


def write_results(
    out: Path, rows: list[dict], unsteered: list[dict], detections: list, layout: Layout
) -> None:
    """results.parquet / .csv (one line per cell, unsteered included), summary.md and the figures."""
    frame = flat_frame(rows + unsteered)
    atomic_write(out / "results.parquet", lambda f: frame.to_parquet(f, index=False))
    atomic_write_text(out / "results.csv", frame.to_csv(index=False))
    text, intervals = summary(rows, unsteered, detections, layout)
    atomic_write_text(out / "summary.md", text)
    write_figures(out, frame, intervals, rows, layout)
