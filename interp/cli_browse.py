"""`interp index` and `interp browse`: build a decomposer's feature index, and open the feature browser.

Registered in interp/cli.py as:

    app.command("index")(index_cmd)
    app.command("browse")(browse_cmd)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

APP = Path(__file__).resolve().parent.parent / "apps" / "feature_browser.py"


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
    import dataclasses

    from interp.cli import echo0, start_distributed, stop_distributed
    from interp.features import IndexConfig, build_index

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        device = start_distributed(distributed, device)
        fields = {f.name: f for f in dataclasses.fields(IndexConfig)}
        options: dict = {"top_k": top_k, "window": window, "max_tokens": max_tokens, "device": device}
        for pair in set_ or []:
            name, sep, value = pair.partition("=")
            if not sep or name.strip() not in fields:
                raise ValueError(
                    f"--set takes name=value with a name among {', '.join(fields)}; got {pair!r}"
                )
            options[name.strip()] = _parse(value.strip(), fields[name.strip()].default)
        index = build_index(decomposer, store, out, IndexConfig(**options), model=model, hierarchy=hierarchy)
    except (ValueError, FileNotFoundError) as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    finally:
        stop_distributed()
    m = index.manifest
    echo0(
        f"indexed {m.n_features:,} features of {m.method} at {m.site} over {m.n_tokens:,} tokens in "
        f"{m.seconds:.1f} s -> {index.path}"
    )


def _parse(value: str, default: object) -> object:
    """A --set value in the type of the field's default."""
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float) or default is None:
        return None if value.lower() == "none" else float(value)
    if isinstance(default, tuple):
        return tuple(float(v) for v in value.split(",") if v.strip())
    return value


def browse_cmd(
    index: Annotated[
        Path | None, typer.Argument(help="an index or decomposer folder to open (default: pick in the app)")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="cache folder to list runs from (default: interp's)")
    ] = None,
    port: Annotated[int, typer.Option(help="port on localhost")] = 8501,
    open_browser: Annotated[bool, typer.Option(help="open a browser window")] = True,
) -> None:
    """Open the Streamlit feature browser on the feature indexes in the cache."""
    if not APP.exists():
        typer.secho(f"error: the browser app is missing ({APP}); use a source checkout of interp", err=True)
        raise typer.Exit(2)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if cache is not None:
        env["INTERP_CACHE"] = str(cache.resolve())
    if index is not None:
        env["INTERP_INDEX"] = str(index.resolve())
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.address", "localhost", "--server.headless", str(not open_browser).lower(),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]  # fmt: skip
    typer.echo(f"feature browser on http://localhost:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=env))
