"""The steering evaluation: detection, then a steering sweep over concepts x methods x strengths, resumable.

Output folder:
- `config.json`: the run's settings, written once the inputs are checked (a rerun with settings that change
  results into the same folder is refused; the device may change)
- `detection.csv`: held-out AUROC per concept and method (features, difference-in-means, random, probe)
- `cells.jsonl`: one line per finished grid cell (a rerun skips these: interrupted runs resume)
- `results.parquet`, `results.csv`, `summary.md`, `score_vs_kl.html`, `concept_vs_fluency.html`
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.core.checks import check_ranges
from interp.core.fingerprint import check_same, free_fields, make_fingerprint, settings_of
from interp.core.io import atomic_write, atomic_write_json, atomic_write_text
from interp.decompose.base import load_decomposer
from interp.models import load_model
from interp.models.sites import parse_site
from interp.steer.calibration import NEUTRAL_PROMPTS, Prompts, alpha_for_kl, kl_function, steered_samples
from interp.steer.concepts import ConceptError, load_concepts
from interp.steer.detection import detect, text_activations
from interp.steer.judges import (
    ConceptClassifier,
    EmbeddingJudge,
    LLMJudge,
    continuation_perplexity,
    fluency_scores,
    harmonic_mean,
)

BASELINES = ("diff_in_means", "random")


@dataclass(frozen=True)
class SteerEvalConfig:
    model: str = "gemma-3-270m"
    site: str = "9.mlp_hidden"
    decomposers: tuple[str, ...] = ()  # decomposer folders; each becomes a method named after its folder
    concepts: str = "bbc"  # built-in set (bbc, sentiment) or a .jsonl/.csv file with text, concept
    concept_names: tuple[str, ...] = ()  # a subset of the set's concepts (empty: all)
    per_concept: int = 40  # texts per concept used for detection and the judge's classifier
    methods: tuple[str, ...] = ("features", *BASELINES)  # "features" = every decomposer
    kl_targets: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.5)  # strengths matched by KL on neutral prompts
    strengths: tuple[float, ...] = ()  # or fixed strengths, in units of the site's mean activation norm
    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    n_samples: int = 4  # samples per prompt and cell
    max_new_tokens: int = 30
    max_len: int = 64  # tokens per concept text for detection
    top_k: int = 30
    top_p: float = 0.3
    seed: int = 0
    device: str = "auto"
    embedding_judge: bool = True  # use the offline sentence-embedding judge when installed
    llm_judge: bool = False  # also rate with the OpenAI-compatible endpoint of INTERP_JUDGE_URL

    def __post_init__(self) -> None:
        check_ranges(self, STEER_RANGES, SteerEvalError)


STEER_RANGES = {"per_concept": ">= 1", "kl_targets": "> 0", "n_samples": ">= 1", "max_new_tokens": ">= 1",
                "max_len": ">= 1", "top_k": ">= 1", "top_p": "in (0, 1]"}  # fmt: skip


class SteerEvalError(ValueError):
    """Bad steering-eval settings."""


def _method_names(config: SteerEvalConfig) -> dict[str, str]:
    """method name -> decomposer folder ('' for baselines)."""
    unknown = [m for m in config.methods if m not in ("features", *BASELINES)]
    if unknown:
        raise SteerEvalError(f"unknown method(s) {unknown}; valid: features, {', '.join(BASELINES)}")
    names = {}
    if "features" in config.methods:
        if not config.decomposers:
            raise SteerEvalError(
                "method 'features' needs at least one --decomposer folder (or drop it from --methods)"
            )
        for folder in config.decomposers:
            names[Path(folder).name] = folder
    names.update({b: "" for b in BASELINES if b in config.methods})
    return names


def _check_resume(out: Path, config: SteerEvalConfig) -> None:
    """Refuse to resume a run in `out` made with settings that change results (not the device); writes nothing."""
    saved = out / "config.json"
    if saved.exists():
        previous = settings_of(json.loads(saved.read_text()), ignore=free_fields(config))
        check_same(make_fingerprint(previous, {}), make_fingerprint(settings_of(config), {}),
                   f"the steering run in {out}", "rerun with the same settings, or pass another --out",
                   SteerEvalError)  # fmt: skip


def _record_config(out: Path, config: SteerEvalConfig) -> None:
    """Write the run's config.json, once every input has been checked."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", json.loads(json.dumps(dataclasses.asdict(config))))


def _finished_cells(path: Path) -> dict[tuple, dict]:
    """Cells already written; a line torn by an interruption is dropped (and the file rewritten without it)."""
    cells, torn = {}, False
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                torn = True
                continue
            cells[row["concept"], row["method"], row["target"]] = row
    if torn:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in cells.values()))
    return cells


def run_steer_eval(config: SteerEvalConfig, out: Path, progress: bool = True) -> list[dict]:
    """Run (or resume) the evaluation into `out`; returns the grid rows."""
    methods = _method_names(config)
    if not config.kl_targets and not config.strengths:
        raise SteerEvalError("give --kl-targets or --strengths")
    _check_resume(out, config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = load_model(config.model, device=config.device)
    site = parse_site(config.site, model.info.n_layers)
    concepts = _concepts(config)
    decomposers = _decomposers(methods, site, model)
    _record_config(out, config)  # only now: a run refused above leaves nothing behind

    text_acts = text_activations(model, concepts.texts, site, config.max_len)
    detections, directions = detect(concepts, text_acts, decomposers, config.seed)
    _write_detection(out, detections)
    scale = float(text_acts.acts[text_acts.mask].norm(dim=-1).mean())  # typical activation norm at the site
    sampler = _Sampler.build(config, model, site, concepts)

    cells_path = out / "cells.jsonl"
    finished = _finished_cells(cells_path)
    targets = [("kl", t) for t in config.kl_targets] + [("strength", s) for s in config.strengths]
    grid = [(c, m, t) for c in concepts.names for m in methods for t in targets]
    todo = [cell for cell in grid
            if (cell[0], cell[1], cell[2][1] if cell[2][0] == "kl" else -cell[2][1]) not in finished]  # fmt: skip

    # Reference: unsteered samples set the reference perplexity of the fluency score.
    reference = finished.get(("-", "none", 0.0))
    if reference is None:
        reference = {"concept": "-", "method": "none", "target": 0.0, "alpha": 0.0, "kl": 0.0, "reached": True,
                     **sampler.sample_and_judge(concepts.names[0], None, 0.0)}  # fmt: skip
        _append(cells_path, reference)
    reference_ppl = float(torch.tensor(reference["perplexity"]).median())

    kl_functions: dict[tuple[str, str], object] = {}
    bar = tqdm(todo, desc="steer-eval", unit="cell", disable=not progress)
    for concept, method, (kind, value) in bar:
        bar.set_postfix_str(f"{concept} / {method} / {kind} {value}")
        direction = directions[concept, method]
        if kind == "kl":
            key = (concept, method)
            if key not in kl_functions:
                kl_functions[key] = kl_function(model, sampler.prompts, site, direction)
            calib = alpha_for_kl(kl_functions[key], value, start=scale / 8)
            alpha, kl, reached, target = calib.alpha, calib.kl, calib.reached, value
        else:
            alpha, target = value * scale, -value  # fixed strengths are stored with a negative target
            kl = kl_function(model, sampler.prompts, site, direction)(alpha)
            reached = True
        judged = sampler.sample_and_judge(concept, direction, alpha)
        fluency = fluency_scores(torch.tensor(judged["perplexity"]), judged["texts"], reference_ppl)
        concept_scores = torch.tensor(judged.pop("concept_scores"))
        row = {"concept": concept, "method": method, "target": target, "alpha": alpha, "kl": kl, "reached": reached,
               "fluency": float(fluency.mean()), "score": float(harmonic_mean(concept_scores, fluency).mean()),
               **judged}  # fmt: skip
        _append(cells_path, row)
        finished[concept, method, target] = row
    rows = [r for r in finished.values() if r["method"] != "none"]
    write_results(out, rows, detections, config)
    return rows


def _concepts(config: SteerEvalConfig):
    concepts = load_concepts(config.concepts, config.per_concept, config.seed)
    if config.concept_names:
        concepts = concepts.select(list(config.concept_names))
    if len(concepts.names) < 2:
        raise ConceptError("detection needs at least two concepts (each is scored against the others)")
    return concepts


def _decomposers(methods: dict, site, model) -> dict:
    """The decomposers named in `methods`, each checked against the width of `site`."""
    decomposers = {name: load_decomposer(folder) for name, folder in methods.items() if folder}
    for name, dec in decomposers.items():
        if dec.d_in != site.width(model.info):
            raise SteerEvalError(
                f"decomposer {name} was fitted on width {dec.d_in}, but site {site.name} of "
                f"{model.info.name} is {site.width(model.info)} wide; fit it on this site"
            )
    return decomposers


@dataclass
class _Sampler:
    """Steered sampling and the judges of one run."""

    config: SteerEvalConfig
    model: Any
    site: Any
    prompts: Prompts
    classifier: ConceptClassifier
    embedder: EmbeddingJudge | None
    llm: LLMJudge | None

    @classmethod
    def build(cls, config: SteerEvalConfig, model, site, concepts) -> _Sampler:
        train_texts = [concepts.texts[i] for i in concepts.train]
        train_labels = [concepts.concepts[i] for i in concepts.train]
        use_embedder = config.embedding_judge and EmbeddingJudge.available()
        llm = LLMJudge.from_env() if config.llm_judge else None
        if config.llm_judge and llm is None:
            raise SteerEvalError(
                "--llm-judge needs INTERP_JUDGE_URL (and INTERP_JUDGE_MODEL, INTERP_JUDGE_KEY)"
            )
        return cls(config, model, site, Prompts.build(model, config.prompts),
                   ConceptClassifier.fit(train_texts, train_labels),
                   EmbeddingJudge(train_texts, train_labels) if use_embedder else None, llm)  # fmt: skip

    def sample_and_judge(self, concept: str, direction: torch.Tensor | None, alpha: float) -> dict:
        cfg = self.config
        texts, sequences, mask = steered_samples(self.model, self.prompts, self.site, direction, alpha,
                                                 cfg.n_samples, cfg.max_new_tokens, cfg.seed, cfg.top_k,
                                                 cfg.top_p)  # fmt: skip
        ppl = continuation_perplexity(self.model, sequences, sequences.shape[1] - cfg.max_new_tokens, mask)
        concept_score = self.classifier.scores(texts, concept)
        if self.embedder is not None:
            concept_score = (concept_score + self.embedder.scores(texts, concept)) / 2
        row = {"texts": texts, "perplexity": ppl.tolist(), "concept_score": float(concept_score.mean()),
               "concept_scores": concept_score.tolist()}  # fmt: skip
        if self.llm is not None:
            row["llm_concept"] = float(self.llm.concept_scores(texts, concept).mean())
            row["llm_fluency"] = float(self.llm.fluency_scores(texts).mean())
        return row


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def _write_detection(out: Path, detections: list) -> None:
    import pandas as pd

    frame = pd.DataFrame([dataclasses.asdict(d) for d in detections])
    tmp = out / ".detection.csv.tmp"
    frame.to_csv(tmp, index=False)
    tmp.replace(out / "detection.csv")


def write_results(out: Path, rows: list[dict], detections: list, config: SteerEvalConfig) -> None:
    """results.parquet / .csv, summary.md and the two plotly figures."""
    import pandas as pd
    import plotly.express as px

    frame = pd.DataFrame(rows)
    frame["example"] = frame["texts"].map(lambda texts: texts[0] if texts else "")
    flat = frame.drop(columns=["texts", "perplexity"])
    atomic_write(out / "results.parquet", lambda f: flat.to_parquet(f, index=False))
    atomic_write_text(out / "results.csv", flat.to_csv(index=False))

    best = flat.groupby(["concept", "method"])["score"].max().unstack("method")
    best.loc["mean"] = best.mean()
    detection = pd.DataFrame([dataclasses.asdict(d) for d in detections])
    auroc = detection.pivot(index="concept", columns="method", values="held_out_auroc")
    auroc.loc["mean"] = auroc.mean()
    unreached = flat[~flat["reached"]]
    lines = [
        f"# Steering evaluation: {config.model}, site {config.site}, concepts {config.concepts}",
        "",
        f"Best score per method and concept over strengths (harmonic mean of concept and fluency, 0-2; "
        f"{config.n_samples} samples x {len(config.prompts)} prompts x {config.max_new_tokens} tokens per cell):",
        "",
        _markdown(best),
        "",
        "Concept detection, held-out AUROC (best feature chosen on train; probe = logistic regression, upper bound):",
        "",
        _markdown(auroc),
        "",
        f"KL targets not reached within 10%: {len(unreached)} of {len(flat)} cells"
        + ("" if unreached.empty else " (" + ", ".join(
            f"{r.concept}/{r.method}/{r.target}" for r in unreached.itertuples()) + ")"),
    ]  # fmt: skip
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")

    kl_rows = flat[flat["target"] > 0]
    if not kl_rows.empty:
        curve = kl_rows.groupby(["method", "target"], as_index=False)[
            ["score", "kl", "concept_score", "fluency"]
        ].mean()
        fig = px.line(
            curve,
            x="kl",
            y="score",
            color="method",
            markers=True,
            log_x=True,
            title=f"Steering score vs KL ({config.model}, {config.site}; mean over concepts)",
            labels={"kl": "KL(clean || steered), next token on neutral prompts", "score": "score (0-2)"},
        )
        fig.write_html(out / "score_vs_kl.html", include_plotlyjs="directory")
    fig = px.scatter(
        flat,
        x="fluency",
        y="concept_score",
        color="method",
        symbol="concept",
        hover_data=["target", "alpha", "example"],
        title="Concept vs fluency, every cell",
    )
    fig.write_html(out / "concept_vs_fluency.html", include_plotlyjs="directory")


def _markdown(frame) -> str:
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join([frame.index.name or "", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for index, row in frame.iterrows():
        cells = ["" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" for v in row.tolist()]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)
