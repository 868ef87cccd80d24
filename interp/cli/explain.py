"""`interp explain`: explanations of features by any OpenAI-compatible LLM, scored by detection and fuzzing
against a shuffled-explanation baseline; written into the index folder; a rerun resumes from the cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import USER_ERRORS, fail


def _number(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def summary_lines(summary: dict) -> list[str]:
    """The run's mean scores against the shuffled baseline, and its counts, as lines for the terminal."""
    lines = ["| score | explanation | shuffled baseline |", "|---|---|---|"]
    for column, value in summary["mean"].items():
        if not column.endswith("_shuffled"):
            base = summary["mean"].get(column + "_shuffled")
            lines.append(f"| {column} | {_number(value)} | {_number(base)} |")
    skipped = summary["skipped_no_activations"]
    lines += [
        f"{summary['n_features']} features explained by {summary['llm_model']} ({summary['explanations']}); "
        f"{len(skipped)} skipped with no activating examples{': ' + str(skipped[:10]) if skipped else ''}; "
        f"{len(summary['unscored_no_non_activating'])} not scored for want of non-activating examples",
        f"non-activating examples: {summary['non_activating_examples']}; malformed replies: "
        f"{summary['n_malformed_replies']}; requests sent {summary['requests_sent']}, from cache "
        f"{summary['requests_cached']}, rejected {summary['requests_failed']}",
    ]
    return lines


def explain_cmd(
    index: Annotated[Path, typer.Argument(help="decomposer folder (with index/) or index folder")],
    llm_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    llm_model: Annotated[str, typer.Option(help="model name as the server knows it")],
    llm_key_env: Annotated[
        str | None, typer.Option(help="environment variable holding the API key (none for local servers)")
    ] = None,
    features: Annotated[str | None, typer.Option(help="features to explain, e.g. 0-99,120")] = None,
    sample: Annotated[int | None, typer.Option(help="explain this many random features instead")] = None,
    n_explain: Annotated[int, typer.Option(help="top examples shown to the explainer")] = 10,
    n_test: Annotated[int, typer.Option(help="activating (and as many non-activating) test examples")] = 10,
    per_prompt: Annotated[int, typer.Option(help="examples per scoring prompt")] = 5,
    chunk: Annotated[
        int, typer.Option(help="features scored between two writes of explanations.parquet")
    ] = 32,
    context: Annotated[
        int | None,
        typer.Option(help="tokens each side of a test example's centre (default: the index's window)"),
    ] = None,
    scorers: Annotated[
        str, typer.Option(help="comma-separated: detection, fuzzing, simulation (per-token activations)")
    ] = "detection,fuzzing",
    baseline: Annotated[bool, typer.Option(help="score a shuffled-explanation baseline too")] = True,
    concurrency: Annotated[int, typer.Option(help="requests in flight at once")] = 8,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 60.0,
    retries: Annotated[int, typer.Option(help="retries of a failed request, with backoff")] = 3,
    max_tokens: Annotated[int, typer.Option(help="reply length limit")] = 256,
    firing: Annotated[
        str,
        typer.Option(
            help="when a feature fires: relative (the index's threshold) | quantile (its --firing-q "
            "quantile over the index's tokens) | auto (quantile for features denser than --firing-dense)"
        ),
    ] = "auto",
    firing_q: Annotated[
        float, typer.Option(help="quantile: share of index tokens at or below the threshold")
    ] = 0.99,
    firing_dense: Annotated[
        float, typer.Option(help="auto: density at the index threshold above which quantile is used")
    ] = 0.1,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Explain features with an LLM and score the explanations (detection, fuzzing, shuffled baseline)."""
    import json

    from interp.autointerp import SUMMARY, ExplainConfig, explain_index, explanation_client, parse_features
    from interp.features import FeatureIndex
    from interp.llm import LLMConfig

    try:
        opened = FeatureIndex.open(index)
        chosen = parse_features(features, sample, opened.n_features, seed)
        llm = LLMConfig(url=llm_url, model=llm_model, key_env=llm_key_env, timeout=timeout, retries=retries,
                        concurrency=concurrency, max_tokens=max_tokens)  # fmt: skip
        config = ExplainConfig(n_explain=n_explain, n_test=n_test, per_prompt=per_prompt, shuffled_baseline=baseline,
                               context=context, seed=seed, firing=firing, firing_q=firing_q,
                               firing_dense=firing_dense, chunk=chunk, scorers=tuple(s.strip() for s in scorers.split(",")))  # fmt: skip
        explain_index(opened, chosen, explanation_client(opened, llm), config, progress=progress)
    except USER_ERRORS as e:
        fail(e)
    summary = json.loads((opened.path / SUMMARY).read_text())
    for line in summary_lines(summary):
        typer.echo(line)
    typer.echo(f"explanations in {opened.path / 'explanations.parquet'}")
