"""The `interp` command line: capture | fit | evaluate | index | browse | steer-eval | models | summary | demo."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, ConnectionError)


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _offline_by_default() -> None:
    """No hub calls unless the user asked for them: loads work offline and fail fast behind a firewall."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def start_distributed(requested: bool, device: str | None) -> str | None:
    """With --distributed, join the process group torchrun describes and return this rank's device (nccl and
    cuda:LOCAL_RANK on GPUs, gloo on CPU). Without it, refuse to run under a multi-process launcher, where every
    process would do the whole job and write the same files."""
    from interp import distributed

    if requested:
        return distributed.init_from_env(device or "auto")
    if distributed.requested_by_env():
        raise ValueError(
            f"this runs under torchrun with WORLD_SIZE={os.environ['WORLD_SIZE']} but without --distributed, so "
            "every process would do the whole job; add --distributed"
        )
    return device


def stop_distributed() -> None:
    """Leave the process group (no barrier: after an error on one rank the others fail fast instead of waiting)."""
    from interp import distributed

    if distributed.is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()


def echo0(message: str) -> None:
    """Print on rank 0 only (every line once under torchrun, also after the process group is gone)."""
    from interp import distributed

    if distributed.rank() == 0 and os.environ.get("RANK", "0") == "0":
        typer.echo(message)


def middle_sites(n_layers: int) -> str:
    layer = n_layers // 2
    return f"{layer}.mlp_hidden,{layer}.resid_post"


def default_run_dir(model: str, corpus: str) -> Path:
    from interp.paths import cache_dir

    return cache_dir() / "activations" / Path(model).name / Path(corpus).stem


# ------------------------------------------------------------------------------------------ capture
def run_capture(
    model_name: str,
    sites: str | None,
    corpus: str,
    n_tokens: int,
    context_len: int,
    batch_size: int,
    backend: str,
    device: str,
    dtype: str,
    out: Path | None,
    text_column: str = "text",
    keep_bos: bool = False,
) -> tuple[dict, Any]:
    """Load, pack, capture; returns (stores by site, stats)."""
    from interp.capture import capture
    from interp.corpus import load_contexts
    from interp.models import load_model

    model = load_model(model_name, device=device)
    sites = sites or middle_sites(model.info.n_layers)
    contexts = load_contexts(model.tokenizer, corpus, context_len, n_tokens, text_column)
    out = out or default_run_dir(model_name, corpus)
    typer.echo(f"capturing {sites} of {model.info.name} on {device} ({model.device}) into {out}")
    return capture(
        model,
        contexts,
        sites,
        out,
        backend=backend,
        batch_size=batch_size,
        dtype=dtype,
        drop_bos=not keep_bos,
    )


@app.command("capture")
def capture_cmd(
    model: Annotated[
        str, typer.Option(help="built-in name, local HF folder, .gguf file, or hub name")
    ] = "gemma-3-270m",
    sites: Annotated[
        str | None,
        typer.Option(help="comma-separated, e.g. 9.mlp_hidden,9.resid_post (default: middle layer)"),
    ] = None,
    corpus: Annotated[
        str, typer.Option(help="'bbc' (built in), a .txt/.jsonl/.parquet/.csv file, or a hub dataset")
    ] = "bbc",
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
    _offline_by_default()
    try:
        device = start_distributed(distributed, device)
        stores, stats = run_capture(
            model,
            sites,
            corpus,
            n_tokens,
            context_len,
            batch_size,
            backend,
            device,
            dtype,
            out,
            text_column,
            keep_bos,
        )
    except USER_ERRORS as e:
        _fail(e)
    finally:
        stop_distributed()
    typer.echo(
        f"wrote {stats.n_tokens:,} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:,.0f} tokens/s)"
    )
    print_summary(list(stores.values()))


# ------------------------------------------------------------------------------------------ summary
def store_summary(store: Any, max_rows: int = 20_000) -> dict[str, Any]:
    """Basic statistics of a store, from its first `max_rows` rows."""
    import torch

    acts = next(store.iter_shards())[:max_rows]
    norms = acts.norm(dim=1)
    return {
        "site": store.site, "n_tokens": store.n_tokens, "d": store.d, "shards": store.n_shards,
        "mean_norm": float(norms.mean()), "mean": float(acts.mean()),
        "frac_positive": float((acts > 0).float().mean()),
        "max_abs": float(acts.abs().max()), "dtype": store.manifest.dtype,
        "size_mb": sum(s.n_bytes for s in store.manifest.shards) / 2**20,
        "finite": bool(torch.isfinite(acts).all()),
    }  # fmt: skip


def print_summary(stores: list[Any]) -> None:
    rows = [store_summary(s) for s in stores]
    header = f"{'site':<16}{'n_tokens':>10}{'d':>7}{'shards':>7}{'mean |x|':>10}{'mean':>9}{'frac>0':>8}{'max |x|':>10}{'MB':>8}"
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r['site']:<16}{r['n_tokens']:>10,}{r['d']:>7}{r['shards']:>7}{r['mean_norm']:>10.2f}{r['mean']:>9.3f}"
            f"{r['frac_positive']:>8.3f}{r['max_abs']:>10.1f}{r['size_mb']:>8.1f}"
        )


@app.command("summary")
def summary_cmd(stores: Annotated[list[Path], typer.Argument(help="store folders (one per site)")]) -> None:
    """Print statistics of activation stores."""
    from interp.store import ActivationStore

    try:
        print_summary([ActivationStore.open(p) for p in stores])
    except USER_ERRORS as e:
        _fail(e)


# ------------------------------------------------------------------------------------------ models
@app.command("models")
def models_cmd() -> None:
    """List the models interp can load here without a network."""
    from interp.models import installed_models

    for row in installed_models():
        typer.echo(f"{row['name']:<40} {row['status']}")


# ------------------------------------------------------------------------------------------ fit
def parse_overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes name=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _coerce(value: Any, field: dataclasses.Field) -> Any:
    """Turn a CLI string into the type of a config field (int, float, bool, str, tuple of ints)."""
    if not isinstance(value, str):
        return value
    default = field.default
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return value


def build_config(config_class: type, method: str, options: dict[str, Any]) -> Any:
    """A method's config from CLI options; options the config has no field for are an error."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    kwargs = {}
    if "architecture" in fields:
        kwargs["architecture"] = method
    for name, value in options.items():
        if value is None:
            continue
        if name not in fields:
            flag = {"n_features": "--k", "k": "--topk-k"}.get(name, "--" + name.replace("_", "-"))
            raise ValueError(f"{flag} does not apply to method {method!r}; its settings: {', '.join(fields)}")
        kwargs[name] = _coerce(value, fields[name])
    return config_class(**kwargs)


def default_fit_dir(store_path: Path, method: str, n_features: int | None) -> Path:
    from interp.paths import cache_dir

    run, site = store_path.resolve().parent.name, store_path.resolve().name
    return cache_dir() / "decomposers" / run / site / f"{method}-k{n_features or 'default'}"


def run_fit(
    store_path: Path, method: str, out: Path | None, options: dict[str, Any], progress: bool = True
) -> Any:
    """Fit a decomposer on a store, with checkpoints in out/checkpoint (rerun resumes); returns it."""
    from interp.decompose import method_class
    from interp.store import ActivationStore

    cls = method_class(method)
    store = ActivationStore.open(store_path)
    config = build_config(cls.config_class, method, options)
    out = out or default_fit_dir(store_path, method, options.get("n_features"))
    from interp import distributed

    world = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    echo0(f"fitting {method} on {store}{world} -> {out}")
    decomposer = cls(config).fit(store, checkpoint_dir=out / "checkpoint", progress=progress)
    if distributed.rank() == 0:  # every rank holds the same fitted decomposer
        decomposer.save(out)
        (out / "source.json").write_text(
            json.dumps(
                {"store": str(store_path.resolve()), "model": store.manifest.model, "site": store.site},
                indent=2,
            )
        )
    distributed.barrier()
    return decomposer


@app.command("fit")
def fit_cmd(
    method: Annotated[str, typer.Option(help="snmf | relu | topk | batchtopk | jumprelu | mpsae")],
    store: Annotated[
        Path, typer.Option(help="a store folder (one site), e.g. cache/activations/M/bbc/9.mlp_hidden")
    ],
    out: Annotated[Path | None, typer.Option(help="output folder (default under cache/decomposers)")] = None,
    k: Annotated[int | None, typer.Option("--k", help="number of features")] = None,
    sparsity: Annotated[float | None, typer.Option(help="SNMF: fraction of neurons kept per feature")] = None,
    init: Annotated[str | None, typer.Option(help="SNMF: random | svd | kmeans")] = None,
    hierarchy: Annotated[
        str | None, typer.Option(help="SNMF: ranks of the hierarchy, e.g. 400,200,100,50")
    ] = None,
    max_iter: Annotated[int | None, typer.Option(help="SNMF: iteration limit")] = None,
    topk_k: Annotated[
        int | None, typer.Option("--topk-k", help="TopK / BatchTopK / MP-SAE: active latents per token")
    ] = None,
    n_steps: Annotated[int | None, typer.Option(help="SAE: training steps")] = None,
    batch_size: Annotated[int | None, typer.Option(help="SAE: tokens per step")] = None,
    lr: Annotated[float | None, typer.Option(help="SAE: learning rate")] = None,
    l1_coeff: Annotated[float | None, typer.Option(help="ReLU SAE: L1 coefficient")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    seed: int | None = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="any other config field: name=value")
    ] = None,
    distributed: Annotated[
        bool,
        typer.Option(
            help="under torchrun: data-parallel (SAEs: DDP, --batch-size is the global batch; SNMF: "
            "tokens split, sums all-reduced)"
        ),
    ] = False,
) -> None:
    """Fit a decomposer on a store; interrupt and rerun to resume from the last checkpoint."""
    options = {
        "n_features": k, "sparsity": sparsity, "init": init, "hierarchy": hierarchy, "max_iter": max_iter,
        "k": topk_k, "n_steps": n_steps, "batch_size": batch_size, "lr": lr, "l1_coeff": l1_coeff,
        "device": device, "seed": seed,
    }  # fmt: skip
    try:
        options["device"] = start_distributed(distributed, device)
        options.update(parse_overrides(set_ or []))
        run_fit(store, method, out, options)
    except USER_ERRORS as e:
        _fail(e)
    finally:
        stop_distributed()


# ------------------------------------------------------------------------------------------ evaluate
def evaluate_decomposers(folders: list[Path], store_path: Path | None, max_tokens: int, n_contexts: int,
                         device: str = "auto") -> list[dict[str, Any]]:  # fmt: skip
    """Reconstruction, sparsity and spliced-in metrics of decomposers fitted on one site, one row each."""
    from interp.capture import CONTEXTS_FILE
    from interp.corpus import Contexts
    from interp.decompose import load_decomposer
    from interp.decompose.metrics import evaluate
    from interp.decompose.splice import spliced_metrics
    from interp.models import load_model
    from interp.store import ActivationStore

    rows, model = [], None
    for folder in folders:
        source = json.loads((folder / "source.json").read_text()) if (folder / "source.json").exists() else {}
        path = store_path or (Path(source["store"]) if source else None)
        if path is None:
            raise ValueError(f"{folder} does not say which store it was fitted on; pass --store")
        store = ActivationStore.open(path)
        decomposer = load_decomposer(folder)
        row = {"decomposer": folder.name, "method": json.loads((folder / "config.json").read_text())["method"],
               "site": store.site, "n_features": decomposer.n_features,
               **evaluate(decomposer, store, max_tokens=max_tokens)}  # fmt: skip
        if n_contexts > 0 and (path.parent / CONTEXTS_FILE).exists():
            model = model or load_model(store.manifest.model, device=device)
            contexts = Contexts.load(path.parent / CONTEXTS_FILE)
            row.update(spliced_metrics(model, decomposer, store.site, contexts, n_contexts=n_contexts))
        rows.append(row)
    return rows


def print_evaluation(rows: list[dict[str, Any]]) -> None:
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


@app.command("evaluate")
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
    _offline_by_default()
    try:
        print_evaluation(evaluate_decomposers(decomposers, store, max_tokens, n_contexts, device))
    except USER_ERRORS as e:
        _fail(e)


# ------------------------------------------------------------------------------------------ steer-eval
def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(",") if v.strip())


def steer_eval_config(toml_path: Path | None, flags: dict[str, Any]) -> Any:
    """SteerEvalConfig from a TOML file (optional), then flags that were given."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from interp.steer.evaluate import SteerEvalConfig

    fields = {f.name for f in dataclasses.fields(SteerEvalConfig)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        values = tomllib.loads(Path(toml_path).read_text())
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} in {toml_path}; valid: {', '.join(sorted(fields))}"
            )
    values.update({k: v for k, v in flags.items() if v is not None})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return SteerEvalConfig(**values)


@app.command("steer-eval")
def steer_eval_cmd(
    config: Annotated[Path | None, typer.Option(help="TOML file with any of the settings below")] = None,
    model: str | None = None,
    site: Annotated[str | None, typer.Option(help="e.g. 9.mlp_hidden")] = None,
    decomposer: Annotated[
        list[str] | None, typer.Option(help="decomposer folder (repeat for several)")
    ] = None,
    concepts: Annotated[
        str | None, typer.Option(help="bbc | sentiment | a .jsonl/.csv with text, concept")
    ] = None,
    concept: Annotated[list[str] | None, typer.Option(help="restrict to these concepts (repeat)")] = None,
    methods: Annotated[
        str | None, typer.Option(help="comma-separated: features,diff_in_means,random")
    ] = None,
    kl_targets: Annotated[
        str | None, typer.Option(help="comma-separated KL targets, e.g. 0.025,0.05,0.1")
    ] = None,
    strengths: Annotated[
        str | None, typer.Option(help="fixed strengths (x mean activation norm) instead")
    ] = None,
    n_samples: int | None = None,
    max_new_tokens: int | None = None,
    per_concept: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    llm_judge: Annotated[bool | None, typer.Option(help="also rate with INTERP_JUDGE_URL's model")] = None,
    out: Annotated[Path | None, typer.Option(help="results folder (default cache/steer/MODEL/SITE)")] = None,
) -> None:
    """Concept detection and steering of features vs difference-in-means and random directions; resumable."""
    from interp.paths import cache_dir
    from interp.steer.evaluate import run_steer_eval

    _offline_by_default()
    flags = {
        "model": model, "site": site, "decomposers": decomposer, "concepts": concepts, "concept_names": concept,
        "methods": None if methods is None else tuple(m.strip() for m in methods.split(",")),
        "kl_targets": _floats(kl_targets), "strengths": _floats(strengths), "n_samples": n_samples,
        "max_new_tokens": max_new_tokens, "per_concept": per_concept, "seed": seed, "device": device,
        "llm_judge": llm_judge,
    }  # fmt: skip
    try:
        settings = steer_eval_config(config, flags)
        if strengths is not None and kl_targets is None:
            settings = dataclasses.replace(settings, kl_targets=())
        out = out or cache_dir() / "steer" / Path(settings.model).name / settings.site
        run_steer_eval(settings, out)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results in {out}")


# ------------------------------------------------------------------------------------------ demo
@app.command("demo")
def demo_cmd(
    model: str = "gemma-3-270m",
    n_tokens: Annotated[int, typer.Option(help="tokens to capture")] = 20_000,
    device: str = "auto",
    out: Annotated[Path | None, typer.Option(help="run folder (default cache/demo)")] = None,
) -> None:
    """Every stage on the default model and corpus: capture a middle layer, fit SNMF and a TopK SAE on its MLP
    activations, compare them in one table, and show the top tokens of a few SNMF features."""
    from interp.examples import describe_features
    from interp.paths import cache_dir

    _offline_by_default()
    started = time.perf_counter()
    out = out or cache_dir() / "demo" / Path(model).name
    try:
        stores, stats = run_capture(model, None, "bbc", n_tokens, 128, 8, "nnsight", device, "float32", out)
        typer.echo(f"captured {stats.n_tokens:,} new tokens at {stats.tokens_per_second:,.0f} tokens/s")
        print_summary(list(stores.values()))
        site = next(name for name in stores if name.endswith("mlp_hidden"))
        store_path = out / site
        fits = {
            "snmf": {"n_features": 64, "max_iter": 200, "device": device},
            "topk": {"n_features": 4096, "k": 32, "n_steps": 200, "batch_size": 2048, "device": device},
        }
        folders = []
        for method, options in fits.items():
            folder = out / "decomposers" / f"{method}-{site}"
            run_fit(store_path, method, folder, options)
            folders.append(folder)
        typer.echo(
            "\nDecomposers of " + site + " (reconstruction on the fitted tokens; spliced into the model):"
        )
        print_evaluation(
            evaluate_decomposers(folders, None, max_tokens=n_tokens, n_contexts=8, device=device)
        )
        from interp.decompose import load_decomposer
        from interp.models import load_model
        from interp.store import ActivationStore

        snmf = load_decomposer(folders[0])
        tokenizer = load_model(model, device="cpu").tokenizer
        typer.echo("\nTop tokens of the first SNMF features:")
        for line in describe_features(snmf, ActivationStore.open(store_path), list(range(8)), tokenizer):
            typer.echo("  " + line)
    except USER_ERRORS as e:
        _fail(e)
    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {out}")


from interp.cli_browse import browse_cmd, index_cmd  # noqa: E402 (the commands live in their own module)

app.command("index")(index_cmd)
app.command("browse")(browse_cmd)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
