"""`interp capture` and `interp summary`: activations at sites into resumable stores, and their statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from interp.cli.common import USER_ERRORS, fail, offline_by_default


def print_summary(stores: list[Any]) -> None:
    """One line of statistics per store."""
    from interp.store.summary import store_summary

    rows = [store_summary(s) for s in stores]
    header = f"{'site':<16}{'n_tokens':>10}{'d':>7}{'shards':>7}{'mean |x|':>10}{'mean':>9}{'frac>0':>8}{'max |x|':>10}{'MB':>8}"
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r['site']:<16}{r['n_tokens']:>10,}{r['d']:>7}{r['shards']:>7}{r['mean_norm']:>10.2f}{r['mean']:>9.3f}"
            f"{r['frac_positive']:>8.3f}{r['max_abs']:>10.1f}{r['size_mb']:>8.1f}"
        )


def capture_cmd(
    model: Annotated[
        str, typer.Option(help="built-in name, local HF folder, .gguf file, or hub name")
    ] = "gemma-3-270m",
    sites: Annotated[
        str | None,
        typer.Option(help="comma-separated, e.g. 9.mlp_hidden,9.resid_post (default: middle layer)"),
    ] = None,
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            help="'bbc' (built in), a .txt/.jsonl/.parquet/.csv file, or a hub dataset; repeat to pack several "
            "sources as one corpus (their documents in turn)"
        ),
    ] = None,
    n_tokens: Annotated[int, typer.Option(help="tokens to store per site (BOS excluded)")] = 100_000,
    context_len: Annotated[int, typer.Option(help="tokens per context, BOS included")] = 128,
    batch_size: int = 8,
    backend: Annotated[str, typer.Option(help="nnsight | transformer_lens | torch")] = "nnsight",
    device: Annotated[
        str, typer.Option(help="auto (GPU when there is one) | cpu | cuda | cuda:1 ...")
    ] = "auto",
    dtype: Annotated[str, typer.Option(help="stored dtype: float32 | float16 | bfloat16")] = "float32",
    out: Annotated[
        Path | None, typer.Option(help="run folder (default cache/activations/MODEL/CORPUS)")
    ] = None,
    text_column: str = "text",
    keep_bos: Annotated[bool, typer.Option(help="store the BOS position too")] = False,
    distributed: Annotated[bool, typer.Option(help="under torchrun: split contexts over ranks")] = False,
) -> None:
    """Capture activations at sites into a resumable, sharded store (rerun the same command to resume)."""
    from interp.capture import capture_corpus
    from interp.core import distributed as dist

    offline_by_default()
    corpus = corpus or ["bbc"]
    try:
        device = dist.start(distributed, device)
        stores, stats, folder = capture_corpus(model, sites, corpus, n_tokens, context_len, batch_size, backend,
                                               device, dtype, out, text_column, keep_bos, log=typer.echo)  # fmt: skip
    except USER_ERRORS as e:
        fail(e)
    finally:
        dist.stop()
    typer.echo(
        f"wrote {stats.n_tokens:,} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:,.0f} tokens/s) "
        f"into {folder}"
    )
    print_summary(list(stores.values()))


def summary_cmd(stores: Annotated[list[Path], typer.Argument(help="store folders (one per site)")]) -> None:
    """Print statistics of activation stores."""
    from interp.store import ActivationStore

    try:
        opened = [ActivationStore.open(p) for p in stores]
        for store in opened:
            if store.n_tokens == 0:
                raise ValueError(
                    f"the store at {store.path} is empty (0 tokens): nothing to summarize; capture into it first "
                    "(interp capture ... --out <its run folder>)"
                )
        print_summary(opened)
    except USER_ERRORS as e:
        fail(e)


def models_cmd() -> None:
    """List the models interp can load here without a network."""
    from interp.models import installed_models

    for row in installed_models():
        typer.echo(f"{row['name']:<40} {row['status']}")
