"""`interp fit`: a decomposer on a store, resumable from its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from interp.cli.common import USER_ERRORS, config_from_options, echo0, fail, parse_overrides

FLAGS = {"n_features": "--k", "k": "--topk-k", "batch_size": "--batch-size", "n_steps": "--n-steps",
         "max_iter": "--max-iter", "l1_coeff": "--l1-coeff", "lr": "--lr", "sparsity": "--sparsity",
         "hierarchy": "--hierarchy", "seed": "--seed"}  # fmt: skip


def method_config(method: str, options: dict[str, Any]) -> Any:
    """The config of `method` from CLI options (strings typed by the config's annotations)."""
    from interp.decompose import method_class

    config_class = method_class(method).config_class
    if "architecture" in {f for f in config_class.__dataclass_fields__}:
        options = {"architecture": method, **options}
    return config_from_options(config_class, options, FLAGS, what=f"method {method!r}")


def run_fit(store_path: Path, method: str, out: Path | None, options: dict[str, Any], progress: bool = True,
            overwrite: bool = False, keep_checkpoint: bool = False) -> Any:  # fmt: skip
    """Fit `method` with CLI `options` on a store into `out` (default under cache/decomposers); returns it."""
    from interp.decompose.fitting import default_fit_dir, fit_store

    config = method_config(method, options)
    k = options.get("n_features")
    if options.get("hierarchy") and k is not None and int(k) != config.n_features:
        raise ValueError(
            f"--k {k} disagrees with --hierarchy {options['hierarchy']}: the features are the hierarchy's first "
            f"(finest) rank; pass --k {config.n_features}, or leave --k out"
        )
    out = out or default_fit_dir(store_path, method, getattr(config, "n_features", k))
    return fit_store(store_path, method, config, out, progress, log=echo0, overwrite=overwrite,
                     keep_checkpoint=keep_checkpoint)  # fmt: skip


def fit_cmd(
    method: Annotated[
        str,
        typer.Option(
            help="snmf | relu | topk | batchtopk | jumprelu | matryoshka | mpsae | transcoder | "
            "skip_transcoder"
        ),
    ],
    store: Annotated[
        Path | None, typer.Option(help="a store folder (one site), e.g. cache/activations/M/bbc/9.mlp_hidden")
    ] = None,
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
    overwrite: Annotated[
        bool, typer.Option(help="replace a fit (or a checkpoint) of other settings in the output folder")
    ] = False,
    keep_checkpoint: Annotated[
        bool, typer.Option(help="keep FOLDER/checkpoint after a successful fit (optimizer state, SNMF's G)")
    ] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            help="under torchrun: data-parallel (SAEs: DDP, --batch-size is the global batch; SNMF: "
            "tokens split, sums all-reduced)"
        ),
    ] = False,
    target: Annotated[
        Path | None, typer.Option(help="transcoder: the target store of the same capture, e.g. .../9.mlp_out")
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="SAEs: FIELD=V1,V2,... (a config field: k=8,16,32) trained together from one read of "
            "the store, each into OUT-FIELDV"
        ),
    ] = None,
    live: Annotated[
        bool, typer.Option(help="SAEs / MP-SAE: train on activations streamed from --model (no store)")
    ] = False,
    model: Annotated[str | None, typer.Option(help="--live: built-in name, local folder or .gguf")] = None,
    corpus: Annotated[list[str] | None, typer.Option(help="--live: as interp capture --corpus")] = None,
    site: Annotated[str | None, typer.Option(help="--live: e.g. 9.mlp_hidden")] = None,
    n_tokens: Annotated[int | None, typer.Option(help="--live: tokens to stream (BOS excluded)")] = None,
    buffer_tokens: Annotated[
        int, typer.Option(help="--live: tokens shuffled together (rounded to whole contexts)")
    ] = 262_144,
    context_len: Annotated[int, typer.Option(help="--live: tokens per context, BOS included")] = 128,
) -> None:
    """Fit a decomposer on a store; interrupt and rerun to resume from the last checkpoint."""
    from interp.core import distributed as dist

    options = {
        "n_features": k, "sparsity": sparsity, "init": init, "hierarchy": hierarchy, "max_iter": max_iter,
        "k": topk_k, "n_steps": n_steps, "batch_size": batch_size, "lr": lr, "l1_coeff": l1_coeff,
        "device": device, "seed": seed,
    }  # fmt: skip
    try:
        options["device"] = dist.start(distributed, device)
        options.update(parse_overrides(set_ or []))
        if target is not None:
            options["target"] = str(target.resolve())
        if live or store is None:
            live_spec = check_live_options(live, store, target, sweep, model, corpus, site, n_tokens)
            run_live(live_spec(buffer_tokens, context_len), method, out, options, overwrite, keep_checkpoint)
            return
        fit = run_sweep if sweep else run_fit
        fit(store, method, out, options, overwrite=overwrite, keep_checkpoint=keep_checkpoint,
            **({"sweep": sweep} if sweep else {}))  # fmt: skip
    except USER_ERRORS as e:
        fail(e)
    finally:
        dist.stop()


def run_sweep(store_path: Path, method: str, out: Path | None, options: dict[str, Any], sweep: str,
              overwrite: bool = False, keep_checkpoint: bool = False) -> list:  # fmt: skip
    """`--sweep NAME=V1,V2`: one config per value, trained together (interp.decompose.sweep), into OUT-NAMEV."""
    import typing

    from interp.cli.common import coerce
    from interp.decompose.fitting import default_fit_dir
    from interp.decompose.sweep import fit_sweep, sweep_configs

    field, _, values = sweep.partition("=")
    config = method_config(method, options)
    if not values or not hasattr(config, "n_steps"):
        raise ValueError(f"--sweep {sweep!r}: give FIELD=V1,V2,... (a config field, e.g. k or n_features) of an "
                         f"SAE method (not {method})")  # fmt: skip
    hint = typing.get_type_hints(type(config)).get(field, str)
    configs = sweep_configs(config, field, [coerce(v.strip(), hint) for v in values.split(",")])
    base = out or default_fit_dir(store_path, method, getattr(config, "n_features", None))
    outs = [base.parent / f"{base.name}-{field}{getattr(c, field)}" for c in configs]
    return fit_sweep(store_path, method, configs, outs, log=echo0, overwrite=overwrite,
                     keep_checkpoint=keep_checkpoint)  # fmt: skip


def check_live_options(live: bool, store: Path | None, target: Path | None, sweep: str | None, model: str | None,
                       corpus: list[str] | None, site: str | None, n_tokens: int | None) -> Any:  # fmt: skip
    """Refuse mixed or missing options of `fit --live`; a function (buffer_tokens, context_len) -> LiveSpec."""
    from interp.decompose.live_fit import LiveSpec

    if not live:
        raise ValueError("give --store FOLDER (a captured site), or --live --model M --site S --n-tokens N")
    for flag, value in (("--store", store), ("--target", target), ("--sweep", sweep)):
        if value is not None:
            raise ValueError(
                f"--live streams from the model, so it takes no {flag}; drop {flag} or drop --live"
            )
    for flag, value in (("--model", model), ("--site", site), ("--n-tokens", n_tokens)):
        if value is None:
            raise ValueError(f"--live needs {flag} (e.g. --live --model gemma-3-270m --site 9.mlp_hidden "
                             "--n-tokens 1000000)")  # fmt: skip
    return lambda buffer, length: LiveSpec(model, tuple(corpus or ["bbc"]), site, n_tokens, buffer, length)


def run_live(spec: Any, method: str, out: Path | None, options: dict[str, Any], overwrite: bool,
             keep_checkpoint: bool) -> Any:  # fmt: skip
    """`fit --live`: `method` on rows streamed from `spec`'s model (n_steps: one pass unless --n-steps)."""
    from interp.cli.common import offline_by_default
    from interp.decompose.live_fit import check_live_method, fit_live

    offline_by_default()
    check_live_method(method)
    config = method_config(method, options)
    return fit_live(spec, method, config, out, options.get("n_steps") is not None, log=echo0,
                    overwrite=overwrite, keep_checkpoint=keep_checkpoint)  # fmt: skip
