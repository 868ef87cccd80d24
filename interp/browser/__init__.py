"""The feature browser: the Streamlit app's pages (app), its figures (views), HTML shared with notebooks
(display), and what it computes live with the model (live)."""
