"""interp feature browser (Streamlit): browse the features of a decomposer through its feature index.

Launch with `interp browse` (or `streamlit run apps/feature_browser.py -- --cache DIR --index PATH`); the
entry file calls `main()` here. It lists every
feature index under the cache (`$INTERP_CACHE`, else interp.paths.cache_dir()); an index lives in its decomposer's
folder as `index/` (build one with `interp index DECOMPOSER_FOLDER`). Pages:

- Features: the table of features, sortable by density / max / mean activation, searchable by token or text.
- Feature: top activations with tokens shaded by activation (hover for the value), quantile-band examples, the
  activation histogram, logit lens, neuron composition, SNMF hierarchy, similar features (click to open).
- Test your text: per-token activations of the feature on typed text, computed live by the model.
- Steering: greedy generations without and with the feature's direction added at a chosen strength.
- Compare: best-matching features of the other decomposers of the same model and site.

Everything shown on the first two pages is read from the index (cached); only the last three run the model.
"""

from __future__ import annotations

import streamlit as st

from interp.browser.pages import (
    page_compare,
    page_feature,
    page_features,
    page_steering,
    page_text,
    pick_index,
)
from interp.browser.state import settings

USER_ERRORS = (ValueError, FileNotFoundError, KeyError)
PAGES = {
    "Features": lambda index, rows, unindexed: page_features(index),
    "Feature": lambda index, rows, unindexed: page_feature(index),
    "Test your text": lambda index, rows, unindexed: page_text(index),
    "Steering": lambda index, rows, unindexed: page_steering(index),
    "Compare": page_compare,
}


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    st.set_page_config(page_title="interp features", layout="wide")
    cache, explicit = settings()
    if "page" not in st.session_state:  # first run: a shared link can name the page and feature
        page = st.query_params.get("page", "Features")
        st.session_state.page = page if page in PAGES else "Features"
        feature = st.query_params.get("feature", "0")
        st.session_state.feature = int(feature) if feature.lstrip("-").isdigit() else 0
    try:
        index, rows, unindexed = pick_index(cache, explicit)
        page = st.sidebar.radio("Page", list(PAGES), key="page")
        if index is None:
            return
        st.query_params.update({"page": page, "feature": str(st.session_state.feature)})
        PAGES[page](index, rows, unindexed)
    except USER_ERRORS as e:  # errors a user can cause: say what and how to fix it, no stack trace
        st.error(str(e).strip("'\""))
