"""`interp bench synthetic`: every decomposer trained on the same synthetic activations at matched L0, scored
against the known features (interp.evaluate.ground_truth), written as metrics.csv / report.md / frontier.html.

A run folder holds `settings.json` (the preset, minus the list of methods), `decomposers/<variant>/<method>/`
(the fitted decomposer; its `checkpoint/` lets a killed fit resume) and `results/<variant>-<method>.json` (the
metrics of a finished evaluation, never recomputed). A rerun with other settings is refused, naming the fields
that changed; a rerun with more methods or variants adds them.

TopK, BatchTopK and MP-SAE are given L0 = k directly; ReLU and JumpReLU reach their L0 through their sparsity
coefficients (set per preset, calibrated on it; the L0 they reach is measured and reported); SNMF has at most d
features (its rank) and dense codes, so it is compared at its own L0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.core.device import resolve_device
from interp.core.io import atomic_write_json
from interp.decompose import METHODS, load_decomposer, method_class
from interp.evaluate.ground_truth import ground_truth_metrics
from interp.evaluate.report import write_report
from interp.evaluate.synthetic import SyntheticConfig, SyntheticModel

VARIANTS: dict[str, dict[str, Any]] = {"dense": {}, "sparse": {"support": 0.01}}
"""Data variants: SyntheticConfig overrides. sparse: features supported on 1% of the dimensions."""
RANK_LIMITED = {"snmf"}
"""Methods whose number of features is at most d (a factorization's rank)."""


@dataclass(frozen=True)
class BenchPreset:
    """What the synthetic bench trains and measures; every method shares the data and the training budget."""

    data: SyntheticConfig = SyntheticConfig()
    n_train: int = 2_000_000
    """Training rows sampled once (the trainers take epochs over them)."""
    width: int = 4096
    """Latents of every SAE / MP-SAE (SNMF: min(width, d))."""
    k: int = 25
    """Target L0 (TopK, BatchTopK, MP-SAE exactly)."""
    n_steps: int = 20_000
    batch_size: int = 1024
    lr: float = 3e-4
    n_eval: int = 100_000
    """Fresh samples the metrics are measured on."""
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-method config fields, e.g. {"relu": {"l1_coeff": 2.0}} (override the shared ones)."""
    seed: int = 0


PRESETS: dict[str, BenchPreset] = {
    "tiny": BenchPreset(
        data=SyntheticConfig(n_features=256, d=32, n_roots=4, branching=3, depth=2, p_min=0.005,
                             correlation_rank=4),
        n_train=8192, width=64, k=6, n_steps=60, batch_size=256, lr=1e-3, n_eval=2048,
        method_options={"snmf": {"max_iter": 20, "sparsity": 0.1}, "relu": {"l1_coeff": 1.0, "l1_warmup_steps": 10},
                        "jumprelu": {"target_l0": 6, "l0_coeff": 1.0}, "mpsae": {"lr": 1e-3}},
    ),
    "cpu": BenchPreset(
        data=SyntheticConfig(n_features=1024, d=64, n_roots=8, p_min=2e-3, correlation_rank=8),
        n_train=50_000, width=256, k=6, n_steps=1000, batch_size=512, lr=1e-3, n_eval=10_000,
        method_options={"snmf": {"max_iter": 100, "sparsity": 0.1},
                        "relu": {"l1_coeff": 5.0, "l1_warmup_steps": 200},
                        "jumprelu": {"target_l0": 6, "l0_coeff": 1.0}, "mpsae": {"lr": 1e-3}},
    ),
    "gpu": BenchPreset(  # SynthSAEBench-16k's configuration and its recommended width
        n_train=2_000_000, width=4096, k=25, n_steps=30_000, batch_size=1024, lr=3e-4, n_eval=100_000,
        method_options={"snmf": {"max_iter": 100}, "relu": {"l1_coeff": 5.0, "l1_warmup_steps": 1000},
                        "jumprelu": {"target_l0": 25, "l0_coeff": 1.0}, "mpsae": {"lr": 3e-4}},
    ),
}  # fmt: skip


def preset_settings(preset: BenchPreset) -> dict[str, Any]:
    """What every result of a run folder shares (the per-method options are checked per result)."""
    settings = dataclasses.asdict(preset)
    settings.pop("method_options")
    return settings


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record `settings` in out/settings.json, or refuse when the folder was run with others (naming them)."""
    path = out / "settings.json"
    if path.exists():
        old, new = _flatten(json.loads(path.read_text())), _flatten(json.loads(json.dumps(settings)))
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k)]  # fmt: skip
        if changed:
            raise ValueError(
                f"{out} holds a bench run with other settings ({'; '.join(changed)}); rerun with the same "
                "settings to resume, or pass another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def method_config(method: str, preset: BenchPreset, d: int, device: str) -> Any:
    """The config of `method` for this preset: the shared fields it has, then its own options."""
    config_class = method_class(method).config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    n_features = min(preset.width, d) if method in RANK_LIMITED else preset.width
    shared = {"architecture": method, "n_features": n_features, "k": preset.k, "n_steps": preset.n_steps,
              "batch_size": preset.batch_size, "lr": preset.lr, "seed": preset.seed, "device": device,
              "dead_tokens": preset.n_steps * preset.batch_size // 10}  # fmt: skip
    options = {k: v for k, v in shared.items() if k in fields}
    options.update(preset.method_options.get(method, {}))
    unknown = set(options) - fields
    if unknown:
        raise ValueError(
            f"method {method!r} has no setting(s) {sorted(unknown)}; its settings: {sorted(fields)}"
        )
    return config_class(**options)


def _fit_or_load(method: str, config: Any, data: torch.Tensor, folder: Path, progress: bool):
    if (folder / "config.json").exists():
        saved = json.loads((folder / "config.json").read_text())["config"]
        wanted = json.loads(json.dumps(dataclasses.asdict(config)))
        changed = sorted(
            k for k in set(saved) | set(wanted) if k != "device" and saved.get(k) != wanted.get(k)
        )
        if changed:
            raise ValueError(f"{folder} holds a {method} fitted with other settings ({', '.join(changed)}); "
                             "delete it to refit")  # fmt: skip
        return load_decomposer(folder), 0.0
    start = time.perf_counter()
    decomposer = method_class(method)(config).fit(
        data, checkpoint_dir=folder / "checkpoint", progress=progress
    )
    seconds = time.perf_counter() - start
    decomposer.save(folder)
    return decomposer, seconds


def run_synthetic_bench(preset: BenchPreset, out: Path, methods: list[str], variants: list[str],
                        device: str = "auto", progress: bool = True, log=print) -> list[dict]:  # fmt: skip
    """Train and score `methods` on each data variant; returns every metric row (also those of earlier runs)."""
    unknown = [m for m in methods if m not in METHODS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown method or variant {unknown}; methods: {', '.join(METHODS)}; variants: "
                         f"{', '.join(VARIANTS)}")  # fmt: skip
    out = Path(out)
    check_settings(out, preset_settings(preset))
    dev = resolve_device(device)
    jobs = [(v, m) for v in variants for m in methods]
    bar = tqdm(jobs, desc="bench", disable=not progress)
    models: dict[str, tuple[SyntheticModel, torch.Tensor]] = {}
    for variant, method in bar:
        bar.set_postfix(variant=variant, method=method)
        result_path = out / "results" / f"{variant}-{method}.json"
        config = method_config(method, preset, preset.data.d, str(dev))
        settings = json.dumps({"config": dataclasses.asdict(config), "data": variant}, sort_keys=True)
        if result_path.exists():
            _check_result(result_path, settings)
            continue
        if variant not in models:
            model = SyntheticModel(dataclasses.replace(preset.data, **VARIANTS[variant]), device=dev)
            models = {variant: (model, model.dataset(preset.n_train, seed=preset.seed))}
        model, data = models[variant]
        folder = out / "decomposers" / variant / method
        start = time.perf_counter()
        try:
            decomposer, seconds = _fit_or_load(method, config, data, folder, progress)
            start = time.perf_counter()
            metrics = ground_truth_metrics(decomposer, model, preset.n_eval, seed=preset.seed + 1,
                                           progress=progress)  # fmt: skip
        except (ValueError, RuntimeError) as e:  # the others still run; a rerun retries this one
            log(f"{variant}/{method} failed after {time.perf_counter() - start:.0f} s: {e}")
            continue
        metrics.update(train_seconds=seconds, eval_seconds=time.perf_counter() - start)
        name = f"{method}-w{config.n_features}-k{preset.k}"
        rows = [{"decomposer": name, "method": method, "site": f"synthetic-{variant}", "metric": key,
                 "value": float(value), "settings": settings} for key, value in metrics.items()]  # fmt: skip
        result_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(result_path, rows)
        write_report(collect_rows(out), out, "interp bench synthetic", NOTES)  # readable while the rest runs
        log(f"{variant}/{method}: F1 {metrics['f1']:.3f}  MCC {metrics['mcc']:.3f}  L0 {metrics['l0']:.1f}  "
            f"EV {metrics['explained_variance']:.3f}  ({seconds:.0f} s)")  # fmt: skip
    rows = collect_rows(out)
    write_report(rows, out, "interp bench synthetic", NOTES)
    return rows


def _check_result(path: Path, settings: str) -> None:
    """Refuse a finished result computed with other method settings than now, naming them."""
    rows = json.loads(path.read_text())
    old, new = _flatten(json.loads(rows[0]["settings"])), _flatten(json.loads(settings))
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.endswith(".device")]  # fmt: skip
    if changed:
        raise ValueError(
            f"{path} was computed with other settings ({'; '.join(changed)}); rerun with the same settings, or "
            f"delete it and {path.parent.parent / 'decomposers' / path.stem.replace('-', '/', 1)} to recompute"
        )


def collect_rows(out: Path) -> list[dict]:
    """Every finished evaluation's rows in `out/results`."""
    return [row for path in sorted((out / "results").glob("*.json")) for row in json.loads(path.read_text())]


NOTES = """Ground truth (SynthSAEBench's definitions): MCC = Hungarian-matched mean |cos| of latent directions and
true features; precision / recall / F1 = each latent as a detector of its best-matching true feature, averaged
over latents; uniqueness = distinct best matches / latents; parent_* / child_* = over the hierarchy's parents and
children, the best latent's |cos| and its F1 as a detector of that feature. SNMF is fitted at rank min(width, d)
with dense codes; ReLU and JumpReLU reach their L0 through their coefficients (see settings in metrics.csv).
"""
