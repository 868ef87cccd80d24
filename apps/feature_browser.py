"""Streamlit entry file of the interp feature browser (`interp browse` runs it; the app lives in interp.browser)."""

from interp.browser.app import main

main()
