"""Autointerp scores of a decomposer for the bench table, from `interp explain`'s index/explanations.parquet.

Per scorer (detection, fuzzing): the mean F1 over explained features, and the mean F1 of the same features scored
with another feature's (shuffled) explanation, the baseline. Nothing when the decomposer has no explanations.
"""

from __future__ import annotations

from pathlib import Path

from interp.features.layout import INDEX_DIR

EXPLANATIONS = "explanations.parquet"
SCORERS = ("detection", "fuzzing")


def autointerp_scores(folder: str | Path) -> dict[str, float]:
    """{autointerp_detection_f1, ..._shuffled, autointerp_fuzzing_f1, ..._shuffled, autointerp_n_scored}, or {}."""
    import pandas as pd

    path = Path(folder) / INDEX_DIR / EXPLANATIONS
    if not path.exists():
        return {}
    table = pd.read_parquet(path)
    out: dict[str, float] = {}
    for name in SCORERS:
        for column in (f"{name}_f1", f"{name}_f1_shuffled"):
            values = table[column].dropna() if column in table else []
            if len(values):
                out[f"autointerp_{column}"] = float(values.mean())
    columns = [f"{n}_f1" for n in SCORERS if f"{n}_f1" in table]
    if columns:
        out["autointerp_n_scored"] = float(table[columns].notna().any(axis=1).sum())
    return out
