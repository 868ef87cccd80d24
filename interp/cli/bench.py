"""`interp bench`: the evaluation suite. `bench synthetic` scores every decomposer against known features;
`bench store` scores fitted decomposers of a real site (reconstruction, spliced CE / KL scores, sparse probing).
Both write metrics.csv, report.md and frontier.html into --out and resume there."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from interp.cli.common import USER_ERRORS, fail, offline_by_default, parse_overrides

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="synthetic | store",
                        pretty_exceptions_enable=False)  # fmt: skip

ALL_METHODS = "snmf,relu,topk,batchtopk,jumprelu,mpsae"


def _preset(name: str, overrides: dict[str, str]):
    """A preset with `--set name=value` overrides (fields of the data's SyntheticConfig as data.NAME)."""
    import typing

    from interp.cli.common import coerce
    from interp.decompose import METHODS, method_class
    from interp.evaluate.bench import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    for key, text in overrides.items():
        method, _, option = key.partition(".")
        if method in METHODS:  # a method's own setting, e.g. relu.l1_coeff=8
            hints = typing.get_type_hints(method_class(method).config_class)
            if option not in hints:
                raise ValueError(f"--set {key}: {method} has no setting {option!r}; its settings: "
                                 f"{', '.join(sorted(hints))}")  # fmt: skip
            options = {**preset.method_options, method: {**preset.method_options.get(method, {}),
                                                         option: coerce(text, hints[option])}}  # fmt: skip
            preset = dataclasses.replace(preset, method_options=options)
            continue
        target = preset.data if key.startswith("data.") else preset
        field = key.removeprefix("data.")
        hints = typing.get_type_hints(type(target))
        if field not in hints or field in ("data", "method_options"):
            valid = sorted(set(hints) - {"data", "method_options"})
            raise ValueError(f"--set {key}: no such setting; valid: {', '.join(valid)} (and data.<field>)")
        try:
            value = coerce(text, hints[field])
        except ValueError as e:
            raise ValueError(f"--set {key}={text!r}: {e}") from None
        changed = dataclasses.replace(target, **{field: value})
        preset = dataclasses.replace(preset, data=changed) if target is preset.data else changed
    return preset


@bench_app.command("synthetic")
def synthetic_cmd(
    out: Annotated[Path, typer.Option(help="output folder (rerun the same command to resume)")],
    preset: Annotated[
        str, typer.Option(help="tiny | cpu (minutes on 2 cores) | gpu (SynthSAEBench-16k)")
    ] = "cpu",
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = ALL_METHODS,
    variants: Annotated[
        str, typer.Option(help="dense | sparse (features on 1% of dims), comma-separated")
    ] = "dense",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="preset field name=value; data.NAME=value, METHOD.NAME=value (e.g. relu.l1_coeff=8)"
        ),
    ] = None,
) -> None:
    """Train every method on the same synthetic activations at matched L0; score them against the true features."""
    from interp.evaluate.bench import run_synthetic_bench
    from interp.evaluate.report import markdown_table

    try:
        chosen = _preset(preset, parse_overrides(set_ or []))
        rows = run_synthetic_bench(chosen, out, [m.strip() for m in methods.split(",") if m.strip()],
                                   [v.strip() for v in variants.split(",") if v.strip()], device,
                                   log=typer.echo)  # fmt: skip
    except USER_ERRORS as e:
        fail(e)
    typer.echo(markdown_table(rows))
    typer.echo(f"wrote {out}/metrics.csv, report.md, frontier.html")


@bench_app.command("store")
def store_cmd(
    decomposers: Annotated[list[Path], typer.Argument(help="decomposer folders fitted on the same site")],
    out: Annotated[Path, typer.Option(help="output folder (rerun the same command to resume)")],
    store: Annotated[Path | None, typer.Option(help="store (default: the one each was fitted on)")] = None,
    max_tokens: Annotated[int, typer.Option(help="tokens for the reconstruction metrics")] = 20_000,
    n_contexts: Annotated[int, typer.Option(help="contexts for spliced CE / KL (0: skip)")] = 16,
    probe: Annotated[
        str,
        typer.Option(
            help="labelled set for sparse probing: bbc | sentiment | a .csv/.jsonl "
            "with text, label ('' to skip)"
        ),
    ] = "bbc",
    n_texts: Annotated[int, typer.Option(help="texts of the probing set used (train + held out)")] = 400,
    absorption_tokens: Annotated[
        int,
        typer.Option(
            help="distinct alphabetic tokens of the store for the first-letter absorption (0: skip)"
        ),
    ] = 4000,
    device: str = "auto",
) -> None:
    """Core metrics (FVU, L0, dead, alive, shrinkage, CE / KL scores) and sparse probing of real decomposers."""
    from interp.cli.probe_data import probing_texts
    from interp.evaluate.report import markdown_table
    from interp.evaluate.store_bench import run_store_bench

    offline_by_default()
    try:
        texts = probing_texts(probe, n_texts) if probe else None
        rows = run_store_bench(decomposers, out, store, max_tokens, n_contexts, texts, device, log=typer.echo,
                               absorption_tokens=absorption_tokens)  # fmt: skip
    except USER_ERRORS as e:
        fail(e)
    typer.echo(markdown_table(rows))
    typer.echo(f"wrote {out}/metrics.csv, report.md, frontier.html")
