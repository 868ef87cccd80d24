"""`interp demo`: every stage on the default model and corpus, in one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from interp.cli.capture import print_summary
from interp.cli.common import USER_ERRORS, fail, offline_by_default
from interp.cli.evaluate import print_evaluation
from interp.cli.fit import run_fit

FITS = {
    "snmf": {"n_features": 64, "max_iter": 200},
    "topk": {"n_features": 4096, "k": 32, "n_steps": 200, "batch_size": 2048},
}


def demo_cmd(
    model: str = "gemma-3-270m",
    n_tokens: Annotated[int, typer.Option(help="tokens to capture")] = 20_000,
    device: str = "auto",
    out: Annotated[Path | None, typer.Option(help="run folder (default cache/demo)")] = None,
) -> None:
    """Every stage on the default model and corpus: capture a middle layer, fit SNMF and a TopK SAE on its MLP
    activations, compare them in one table, and show the top tokens of a few SNMF features."""
    from interp.capture import capture_corpus
    from interp.core.paths import cache_dir
    from interp.decompose import load_decomposer
    from interp.evaluate.compare import compare_decomposers
    from interp.features.describe import describe_features
    from interp.models import load_model
    from interp.store import ActivationStore

    offline_by_default()
    started = time.perf_counter()
    out = out or cache_dir() / "demo" / Path(model).name
    try:
        stores, stats, _ = capture_corpus(model, None, "bbc", n_tokens, 128, 8, "nnsight", device, "float32", out,
                                          log=typer.echo)  # fmt: skip
        typer.echo(f"captured {stats.n_tokens:,} new tokens at {stats.tokens_per_second:,.0f} tokens/s")
        print_summary(list(stores.values()))
        site = next(name for name in stores if name.endswith("mlp_hidden"))
        store_path = out / site
        folders = []
        for method, options in FITS.items():
            folder = out / "decomposers" / f"{method}-{site}"
            run_fit(store_path, method, folder, {**options, "device": device})
            folders.append(folder)
        typer.echo(
            "\nDecomposers of " + site + " (reconstruction on the fitted tokens; spliced into the model):"
        )
        print_evaluation(compare_decomposers(folders, None, max_tokens=n_tokens, n_contexts=8, device=device))
        snmf = load_decomposer(folders[0])
        tokenizer = load_model(model, device="cpu").tokenizer
        typer.echo("\nTop tokens of the first SNMF features:")
        for line in describe_features(snmf, ActivationStore.open(store_path), list(range(8)), tokenizer):
            typer.echo("  " + line)
    except USER_ERRORS as e:
        fail(e)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {out}")
