"""`interp steer-judge`: judge a steer-eval run's generated texts again with the LLM judge, without the model.

A command of its own rather than a `steer-eval` flag: none of steer-eval's settings (model, decomposers, KL
targets, sampling) apply to judging texts that exist, and the run's folder already records them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import USER_ERRORS, fail


def steer_judge_cmd(
    run: Annotated[
        Path, typer.Argument(help="the --out folder of an `interp steer-eval` run (finished or not)")
    ],
    judge: Annotated[
        str, typer.Option(help="llm | both (both: keep the run's offline scores, add Spearman)")
    ] = "both",
    out: Annotated[
        Path | None, typer.Option(help="results folder (default RUN-JUDGE beside the run)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds per judge request")] = 600.0,
    concurrency: Annotated[int, typer.Option(help="judge requests in flight at once")] = 4,
    max_tokens: Annotated[int, typer.Option(help="reply length limit of the judge")] = 256,
) -> None:
    """Judge every cell's texts (both prompt splits, unsteered rows too) with the AxBench rubric through
    INTERP_JUDGE_URL / INTERP_JUDGE_MODEL (key: INTERP_JUDGE_KEY); writes the run's format; resumable."""
    from interp.steer.llm_judge import complete_from_env, judge_model
    from interp.steer.rejudge import rejudge

    out = out or run.parent / f"{run.name}-{judge}"
    options = {"timeout": timeout, "concurrency": concurrency, "max_tokens": max_tokens}
    try:
        endpoint = {"model": judge_model(), "max_tokens": max_tokens}
        rejudge(run, out, judge, complete_from_env(**options, cache_path=out / "llm_replies.jsonl"), endpoint,
                check=complete_from_env(**options))  # fmt: skip
    except USER_ERRORS as e:
        fail(e)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results in {out}")
