"""`interp evaluate`: one table comparing decomposers of a site (FVU, L0, dead, spliced CE / KL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from interp.cli.common import USER_ERRORS, fail, offline_by_default


def print_evaluation(rows: list[dict[str, Any]]) -> None:
    """The comparison rows as an aligned table."""
    columns = [("decomposer", 26, "s"), ("site", 14, "s"), ("n_features", 10, "d"), ("fvu", 8, ".4f"),
               ("l0", 8, ".1f"), ("dead_fraction", 8, ".3f"), ("ce_delta", 9, ".4f"), ("kl", 8, ".4f"),
               ("ce_loss_recovered", 9, ".3f")]  # fmt: skip
    names = {"dead_fraction": "dead", "ce_loss_recovered": "CE rec.", "ce_delta": "dCE"}
    typer.echo(
        "".join(f"{names.get(c, c):>{w}} " if f != "s" else f"{names.get(c, c):<{w}} " for c, w, f in columns)
    )
    for row in rows:
        cells = []
        for column, width, fmt in columns:
            value = row.get(column, float("nan"))
            cells.append(f"{value:<{width}{fmt}} " if fmt == "s" else f"{value:>{width}{fmt}} ")
        typer.echo("".join(cells))


def evaluate_cmd(
    decomposers: Annotated[list[Path], typer.Argument(help="decomposer folders fitted on the same site")],
    store: Annotated[
        Path | None, typer.Option(help="store to measure on (default: the one each was fitted on)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens for the reconstruction metrics")] = 20_000,
    n_contexts: Annotated[int, typer.Option(help="contexts for the spliced CE / KL metrics (0: skip)")] = 16,
    device: str = "auto",
) -> None:
    """One table: FVU, L0, dead fraction, CE change / KL / CE loss recovered with the reconstruction spliced in."""
    from interp.evaluate.compare import compare_decomposers

    offline_by_default()
    try:
        print_evaluation(compare_decomposers(decomposers, store, max_tokens, n_contexts, device))
    except USER_ERRORS as e:
        fail(e)
