"""`interp index`: the feature index of a decomposer (top examples, quantile bands, histograms, logit lens, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import (
    USER_ERRORS,
    config_from_options,
    echo0,
    fail,
    offline_by_default,
    parse_overrides,
)


def index_cmd(
    decomposer: Annotated[Path, typer.Argument(help="decomposer folder written by `interp fit`")],
    store: Annotated[
        Path | None, typer.Option(help="store to index over (default: the one in the folder's source.json)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="index folder (default DECOMPOSER/index)")] = None,
    top_k: Annotated[int, typer.Option(help="top activating tokens kept per feature")] = 20,
    window: Annotated[int, typer.Option(help="tokens shown on each side of an example")] = 15,
    max_tokens: Annotated[int | None, typer.Option(help="index only the first tokens of the store")] = None,
    model: Annotated[
        str | None, typer.Option(help="model for tokens and logit lens (default: the store's)")
    ] = None,
    hierarchy: Annotated[
        Path | None, typer.Option(help='hierarchy JSON {"levels", "nodes"} (SNMF folders carry their own)')
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any other IndexConfig field: name=value")
    ] = None,
    distributed: Annotated[
        bool,
        typer.Option(help="under torchrun: each rank streams a block of shards; rank 0 merges and writes"),
    ] = False,
) -> None:
    """Build the feature index of a decomposer (top examples, quantile bands, histograms, logit lens, ...)."""
    from interp.core import distributed as dist
    from interp.features import IndexConfig, build_index

    offline_by_default()
    try:
        device = dist.start(distributed, device)
        options = {"top_k": top_k, "window": window, "max_tokens": max_tokens, "device": device}
        options.update(parse_overrides(set_ or []))
        flags = {"top_k": "--top-k", "window": "--window", "max_tokens": "--max-tokens"}
        config = config_from_options(IndexConfig, options, flags, what="interp index")
        index = build_index(decomposer, store, out, config, model=model, hierarchy=hierarchy)
    except USER_ERRORS as e:
        fail(e)
    finally:
        dist.stop()
    m = index.manifest
    echo0(
        f"indexed {m.n_features:,} features of {m.method} at {m.site} over {m.n_tokens:,} tokens in "
        f"{m.seconds:.1f} s -> {index.path}"
    )
