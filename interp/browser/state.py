"""What the browser reads and remembers: settings, cached index reads, the live model and decomposers, and the
navigation callbacks that change the session state."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from interp.features.layout import EXPLANATIONS
from interp.features.reader import FeatureIndex, find_indexes, find_unindexed


# ----------------------------------------------------------------------------------------------- settings
def settings() -> tuple[Path, Path | None]:
    """(cache root, explicit index) from `-- --cache/--index` or INTERP_CACHE / INTERP_INDEX."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--cache")
    parser.add_argument("--index")
    args, _ = parser.parse_known_args(sys.argv[1:] if "streamlit" in Path(sys.argv[0]).name else [])
    from interp.core.paths import cache_dir

    cache = Path(args.cache) if args.cache else cache_dir()
    index = args.index or os.environ.get("INTERP_INDEX")
    return cache, Path(index) if index else None


# ----------------------------------------------------------------------------------------------- cached reads
def index_mtime(path: str) -> float:
    """When the index (or its explanations) last changed: the key of the cached reads."""
    files = [Path(path) / name for name in ("manifest.json", EXPLANATIONS)]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


@st.cache_resource(show_spinner=False, max_entries=16)
def open_index(path: str, mtime: float) -> FeatureIndex:
    return FeatureIndex.open(path)


@st.cache_resource(show_spinner=False, max_entries=1024)
def read_feature(path: str, mtime: float, feature: int):
    return open_index(path, mtime).feature(feature)


@st.cache_data(show_spinner=False, ttl=20)
def discover(root: str, explicit: str | None) -> tuple[list[dict], list[str]]:
    rows = find_indexes(root) if Path(root).exists() else []
    if explicit:
        path = Path(explicit)
        path = path / "index" if (path / "index" / "manifest.json").exists() else path
        if str(path) not in {r["path"] for r in rows}:
            rows += find_indexes(path.parent) if (path / "manifest.json").exists() else []
            if str(path) not in {r["path"] for r in rows}:
                rows.append({"path": str(path), "model": "?", "site": "?", "method": "?", "n_features": "?",
                             "decomposer": "", "name": path.name, "format_version": None,
                             "error": f"no feature index at {path}; build one with `interp index DECOMPOSER`"})  # fmt: skip
    unindexed = [str(p) for p in find_unindexed(root)] if Path(root).exists() else []
    return rows, unindexed


@st.cache_resource(show_spinner="loading the model...", max_entries=2)
def live_model(name: str):
    from interp.models import load_model

    return load_model(name, device="auto")


@st.cache_resource(show_spinner="loading the decomposer...", max_entries=8)
def live_decomposer(folder: str):
    from interp.decompose import load_decomposer

    return load_decomposer(folder)


@st.cache_resource(show_spinner="matching features...", max_entries=16)
def matches(folder_a: str, folder_b: str, top: int = 5):
    from interp.browser.live import best_matches

    a, b = live_decomposer(folder_a).directions.detach(), live_decomposer(folder_b).directions.detach()
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the decomposers have different widths ({a.shape[1]} vs {b.shape[1]}): not one site"
        )
    return best_matches(a.cpu(), b.cpu(), top)


# ----------------------------------------------------------------------------------------------- navigation
def open_feature(feature: int, page: str = "Feature") -> None:
    """Callback: show `feature` on `page`."""
    st.session_state.feature = int(feature)
    st.session_state.page = page


def open_group(node_id: str) -> None:
    st.session_state.group = node_id


def open_run(row: dict, feature: int) -> None:
    """Callback: switch to another index (from Compare) and open `feature` there."""
    st.session_state.run_model, st.session_state.run_site = row["model"], row["site"]
    st.session_state.run_decomposer = run_label(row)
    open_feature(feature)


def run_label(row: dict) -> str:
    return f"{row['name']} · {row['method']} · {row['n_features']} features"


def sync_feature_box() -> None:
    st.session_state.feature = int(st.session_state.feature_box)
