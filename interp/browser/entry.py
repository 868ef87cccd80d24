"""Streamlit entry file of the feature browser inside the package (`interp browse` runs it, so an installed interp
browses without a source checkout); apps/feature_browser.py is the same for `streamlit run`."""

from interp.browser.app import main

main()
