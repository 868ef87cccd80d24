"""`interp import`: another library's dictionary (SAELens, sparsify, dictionary_learning, Gemma Scope) as an interp
decomposer folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import USER_ERRORS, fail


def import_cmd(
    source: Annotated[
        Path, typer.Argument(help="a SAELens / sparsify / dictionary_learning folder, or params.npz")
    ],
    out: Annotated[Path, typer.Option(help="the interp decomposer folder to write")],
    format: Annotated[
        str | None,
        typer.Option(help="saelens | sparsify | dictionary_learning | gemma_scope (default: detected)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name, for files without one (Gemma Scope)")] = None,
    site: Annotated[
        str | None, typer.Option(help="interp site, e.g. 6.resid_post (default: from the file's hook name)")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(help="a store of that site: checks d_in and records it for index / evaluate"),
    ] = None,
) -> None:
    """Convert a dictionary saved by another library; `load_decomposer` and every later stage read the folder."""
    from interp.decompose.formats import import_dictionary

    try:
        decomposer, imported = import_dictionary(source, out, format, model or "", site, store)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(
        f"imported {imported.format} {imported.architecture} ({imported.d_in} -> {imported.n_features}, site "
        f"{imported.site}, model {imported.model_name or '?'}) into {out}"
    )
