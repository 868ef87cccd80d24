"""The Compare page's bench section: the `interp bench store` table of the decomposers of one site.

Reports are looked up as CACHE/bench/**/metrics.csv; a row belongs to the site when its site matches and the
decomposer folder it names (settings: folder, or explanations for autointerp rows) was fitted on that model.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from interp.decompose.base import read_source
from interp.evaluate.report import read_csv, wide


def _model_of(settings: str) -> str | None:
    try:
        meta = json.loads(settings or "{}")
    except json.JSONDecodeError:
        return None
    folder = meta.get("folder") or meta.get("explanations")
    source = read_source(folder) if folder and Path(folder).exists() else None
    return source.get("model") if source else None


def site_reports(root: Path, model: str, site: str) -> list[tuple[Path, list[dict]]]:
    """(metrics.csv path, its rows of `model` at `site`) for every bench report under root/bench."""
    found = []
    for path in sorted((root / "bench").glob("**/metrics.csv")):
        rows = [r for r in read_csv(path) if r["site"] == site and _model_of(r["settings"]) in (model, None)]
        if rows:
            found.append((path, rows))
    return found


def bench_section(root: Path, model: str, site: str) -> None:
    """The bench table(s) of this site, or the command that makes one."""
    import pandas as pd

    st.subheader("Bench report")
    reports = site_reports(root, model, site)
    if not reports:
        st.info(
            f"No `interp bench store` report for {model} at {site} under {root / 'bench'}. Make one: "
            f"`interp bench store DECOMPOSER_FOLDERS... --out {root / 'bench' / model / site}`"
        )
        return
    for path, rows in reports:
        names, entries = wide(rows)
        st.caption(f"{path} (report.md beside it; each metric's definition in its notes)")
        table = pd.DataFrame([{c: e.get(c) for c in ["decomposer", "method", *names]} for e in entries])
        st.dataframe(table, hide_index=True, width="stretch")
