"""`interp steer-eval`: concept detection and steering of features against difference-in-means, matched random
directions and unsteered text, from flags or a TOML file; resumable."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from interp.cli.common import USER_ERRORS, fail, offline_by_default


def _floats(text: str | None) -> tuple[float, ...] | None:
    return None if text is None else tuple(float(v) for v in text.split(",") if v.strip())


def steer_eval_config(toml_path: Path | None, flags: dict[str, Any], preset: str | None = None) -> Any:
    """SteerEvalConfig from a preset (optional), then a TOML file (optional), then flags that were given: each
    layer overrides the one before."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from interp.steer.presets import preset_settings
    from interp.steer.run import SteerEvalConfig

    fields = {f.name for f in dataclasses.fields(SteerEvalConfig)}
    values: dict[str, Any] = preset_settings(preset)
    if toml_path is not None:
        from_file = tomllib.loads(Path(toml_path).read_text())
        unknown = sorted(set(from_file) - fields)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} in {toml_path}; valid: {', '.join(sorted(fields))}"
            )
        values.update(from_file)
    values.update({k: v for k, v in flags.items() if v is not None})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return SteerEvalConfig(**values)
    except ValueError as e:  # a setting out of range: name its flag
        name = getattr(e, "setting", None)
        if name is None:
            raise
        raise type(e)(f"--{name.replace('_', '-')}: {e}") from None


def check_preset_inputs(preset: str | None, settings: Any) -> None:
    """A preset's run steers decomposer features: refuse one without --decomposer, naming what it needs."""
    from interp.steer.presets import PRESETS

    if preset is not None and "features" in settings.methods and not settings.decomposers:
        raise ValueError(f"--preset {preset} needs {PRESETS[preset].needs}")


def steer_eval_cmd(
    config: Annotated[Path | None, typer.Option(help="TOML file with any of the settings below")] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="paper: the SNMF paper's settings (docs/steering.md); --config and explicit flags override it"
        ),
    ] = None,
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
    judge: Annotated[
        str | None, typer.Option(help="offline | llm | both (llm: AxBench rubric via INTERP_JUDGE_URL)")
    ] = None,
    steer_at: Annotated[
        str | None,
        typer.Option(
            help="paper | site | mlp_hidden | mlp_out | resid, then METHOD=KIND items (comma-separated)"
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="torch | nnsight | transformer_lens")] = None,
    signs: Annotated[str | None, typer.Option(help="comma-separated: 1,-1 (each sign calibrated)")] = None,
    n_random: Annotated[
        int | None, typer.Option(help="random directions the random baseline is the best of (0: matched)")
    ] = None,
    selection: Annotated[
        str | None,
        typer.Option(help="detection | detection,output (also NAME@output: chosen by output score)"),
    ] = None,
    output_candidates: Annotated[
        int | None, typer.Option(help="features (best train AUROC) the output score chooses among")
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help="concept | feature (steer --features toward their `interp explain` text)"),
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="feature protocol: comma-separated feature ids")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="results folder (default cache/steer/MODEL/SITE)")] = None,
) -> None:
    """Concept detection and steering of features vs difference-in-means and random directions; resumable."""
    from interp.core.paths import cache_dir
    from interp.steer.run import run_steer_eval

    offline_by_default()
    flags = {
        "model": model, "site": site, "decomposers": decomposer, "concepts": concepts, "concept_names": concept,
        "methods": None if methods is None else tuple(m.strip() for m in methods.split(",")),
        "kl_targets": _floats(kl_targets), "strengths": _floats(strengths), "n_samples": n_samples,
        "max_new_tokens": max_new_tokens, "per_concept": per_concept, "seed": seed, "device": device,
        "judge": judge, "steer_at": steer_at, "backend": backend, "n_random": n_random,
        "selection": None if selection is None else tuple(v.strip() for v in selection.split(",") if v.strip()),
        "output_candidates": output_candidates, "protocol": protocol,
        "features": None if features is None else tuple(int(v) for v in features.split(",") if v.strip()),
        "signs": None if signs is None else tuple(int(float(v)) for v in signs.split(",") if v.strip()),
    }  # fmt: skip
    try:
        settings = steer_eval_config(config, flags, preset)
        check_preset_inputs(preset, settings)
        if strengths is not None and kl_targets is None:
            settings = dataclasses.replace(settings, kl_targets=())
        out = out or cache_dir() / "steer" / Path(settings.model).name / settings.site
        run_steer_eval(settings, out)
    except USER_ERRORS as e:
        fail(e)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results in {out}")
