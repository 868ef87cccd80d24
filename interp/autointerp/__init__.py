"""Autointerp: explanations of features by an LLM (delphi-style prompts), scored by detection and fuzzing
against a shuffled-explanation baseline, written into the feature index's folder."""

from interp.autointerp.run import (
    CACHE,
    RESULTS,
    SUMMARY,
    ExplainConfig,
    explain_index,
    explanation_client,
    parse_features,
)

__all__ = ["CACHE", "RESULTS", "SUMMARY", "ExplainConfig", "explain_index", "explanation_client",
           "parse_features"]  # fmt: skip
