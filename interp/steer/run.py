"""The steering evaluation: detection, then a sweep over concepts x methods x signs x strengths, resumable.

Each cell's strength is matched to a KL target by bisection, for each sign separately; continuations are sampled
on two prompt sets: the *selection* prompts (which strength is best, per concept and method) and the *test*
prompts (the reported score). Every method steers where `--steer-at` puts it (interp.steer.placement).

Output folder:
- `config.json`: the run's settings (a rerun with other settings into the same folder is refused)
- `detection.csv`: held-out AUROC per concept and method (features, difference-in-means, random, probe)
- `output_scores.json` (with `--selection output`): the output score of each candidate feature per method
- `cells.jsonl`: one line per finished cell, unsteered rows included (a rerun skips these: interrupted runs resume),
  with the generated texts of both splits (`texts`: test, `select_texts`: selection), so `interp steer-judge` can
  judge them again
- `results.parquet`, `results.csv`, `summary.md`, `score_vs_kl.html`, `best_scores.html`, `concept_vs_fluency.html`
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp.core.checks import check_ranges
from interp.core.fingerprint import check_same, free_fields, make_fingerprint, settings_of
from interp.core.io import atomic_write_json, atomic_write_text
from interp.decompose.base import CONFIG_FILE, load_decomposer
from interp.models import load_model
from interp.models.hooks import backend_module
from interp.models.sites import parse_site
from interp.steer.calibration import (
    NEUTRAL_PROMPTS,
    Prompts,
    Sampling,
    alpha_for_kl,
    kl_function,
    steered_samples,
)
from interp.steer.concepts import ConceptError, load_concepts
from interp.steer.detection import detect, text_activations
from interp.steer.feature_protocol import NEUTRAL, feature_concepts, feature_directions
from interp.steer.judges import ConceptClassifier, EmbeddingJudge
from interp.steer.llm_judge import Complete, check_complete, complete_from_env
from interp.steer.output_select import SUFFIX, output_method, select_by_output
from interp.steer.placement import place, steer_kinds
from interp.steer.report import UNSTEERED, Layout, write_results
from interp.steer.scoring import JUDGE_MODES, Judges, Texts

BASELINES = ("diff_in_means", "random")
SELECT_PROMPTS = ("Let me tell you about", "Yesterday,", "My favourite thing is", "Here is a short story:")
SPLITS = ("select", "test")
SELECTIONS = ("detection", "output")  # how a decomposer's feature is chosen per concept


@dataclass(frozen=True)
class SteerEvalConfig:
    model: str = "gemma-3-270m"
    site: str = "9.mlp_hidden"  # where detection reads (and the decomposers were fitted)
    decomposers: tuple[str, ...] = ()  # decomposer folders; each becomes a method named after its folder
    concepts: str = "bbc"  # built-in set (bbc, sentiment) or a .jsonl/.csv file with text, concept
    concept_names: tuple[str, ...] = ()  # a subset of the set's concepts (empty: all)
    per_concept: int = 40  # texts per concept used for detection and the judge's classifier
    methods: tuple[str, ...] = ("features", *BASELINES)  # "features" = every decomposer
    kl_targets: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.5)  # strengths matched by KL on neutral prompts
    strengths: tuple[
        float, ...
    ] = ()  # or fixed strengths, in units of the detection site's mean activation norm
    signs: tuple[int, ...] = (1, -1)  # steer along +direction and -direction, each sign calibrated on its own
    prompts: tuple[str, ...] = NEUTRAL_PROMPTS  # test prompts (reported scores); also the KL prompts
    select_prompts: tuple[str, ...] = SELECT_PROMPTS  # held-out prompts on which the best strength is chosen
    n_samples: int = 4  # samples per prompt and cell
    max_new_tokens: int = 30
    max_len: int = 64  # tokens per concept text for detection
    top_k: int = 30
    top_p: float = 0.3
    seed: int = 0
    device: str = "auto"
    embedding_judge: bool = True  # use the offline sentence-embedding judge when installed
    judge: str = "offline"  # offline | llm | both (llm: an OpenAI-compatible endpoint, INTERP_JUDGE_URL)
    steer_at: str = "paper"  # paper | site | mlp_hidden | mlp_out | resid, then METHOD=KIND items
    backend: str = "torch"  # torch | nnsight | transformer_lens
    n_random: int = 0  # random directions the random baseline is the best of (0: as many as features)
    selection: tuple[str, ...] = ("detection",)  # + "output": also NAME@output, chosen by output score
    output_candidates: int = 10  # features (best train AUROC) among which the output score chooses
    protocol: str = "concept"  # concept | feature (steer --features toward their explanations)
    features: tuple[int, ...] = ()  # feature protocol: the decomposer's features to steer

    def __post_init__(self) -> None:
        check_ranges(self, STEER_RANGES, SteerEvalError)


STEER_RANGES = {"per_concept": ">= 1", "kl_targets": "> 0", "n_samples": ">= 1", "max_new_tokens": ">= 1",
                "max_len": ">= 1", "top_k": ">= 1", "top_p": "in (0, 1]", "n_random": ">= 0",
                "output_candidates": ">= 1"}  # fmt: skip


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
        if "output" in config.selection:
            names.update({output_method(Path(folder).name): folder for folder in config.decomposers})
    elif "output" in config.selection:
        raise SteerEvalError(
            "--selection output chooses among a decomposer's features: add 'features' to --methods"
        )
    names.update({b: "" for b in BASELINES if b in config.methods})
    return names


def _check_settings(config: SteerEvalConfig) -> None:
    if not config.kl_targets and not config.strengths:
        raise SteerEvalError("give --kl-targets or --strengths")
    if not config.selection or set(config.selection) - set(SELECTIONS):
        raise SteerEvalError(f"unknown --selection {list(config.selection)}; valid: {', '.join(SELECTIONS)}")
    if config.protocol not in CONCEPTS:
        raise SteerEvalError(f"unknown --protocol {config.protocol!r}; valid: {', '.join(CONCEPTS)}")
    if config.protocol == "feature" and (len(config.decomposers) != 1 or not config.features
                                         or "output" in config.selection):  # fmt: skip
        raise SteerEvalError(
            "--protocol feature takes one --decomposer, --features F1,F2,... and no --selection output"
        )
    if config.judge not in JUDGE_MODES:
        raise SteerEvalError(f"unknown judge {config.judge!r}; valid: {', '.join(JUDGE_MODES)}")
    if not config.signs or set(config.signs) - {1, -1}:
        raise SteerEvalError(f"signs must be 1 and/or -1, not {list(config.signs)}")
    if not config.prompts or not config.select_prompts:
        raise SteerEvalError("give both test prompts and selection prompts (held-out strength selection)")
    backend_module(config.backend)  # an unknown backend fails here, naming the valid ones


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


def cell_key(row: dict) -> tuple:
    return row["concept"], row["method"], row["kind"], row["sign"], row["target"]


def read_cells(path: Path) -> tuple[list[dict], bool]:
    """The cells of a cells.jsonl in file order, and whether a torn line (an interruption, or a run still
    writing it) was skipped."""
    cells, torn = [], False
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            cells.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    return cells, torn


def finished_cells(path: Path) -> dict[tuple, dict]:
    """Cells already written; a line torn by an interruption is dropped (and the file rewritten without it)."""
    rows, torn = read_cells(path)
    cells = {cell_key(row): row for row in rows}
    if torn:
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in cells.values()))
    return cells


def _judge_transport(config: SteerEvalConfig, complete: Complete | None) -> Complete | None:
    """The LLM judge's `Complete` (given, or from the environment), checked before anything is written."""
    if config.judge == "offline":
        return None
    complete = complete or complete_from_env()
    check_complete(complete)
    return complete


def run_steer_eval(
    config: SteerEvalConfig, out: Path, progress: bool = True, complete: Complete | None = None
) -> list[dict]:
    """Run (or resume) the evaluation into `out`; returns the steered cells. `complete` is the LLM judge's
    transport (default: INTERP_JUDGE_URL's endpoint) when `config.judge` is llm or both."""
    _check_settings(config)
    methods = _method_names(config)
    complete = _judge_transport(config, complete)
    _check_resume(out, config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = load_model(config.model, device=config.device)
    site = parse_site(config.site, model.info.n_layers)
    concepts, names = CONCEPTS[config.protocol](config)
    decomposers = _decomposers({m: f for m, f in methods.items() if not m.endswith(SUFFIX)}, site, model)
    method_kinds = {name: _decomposer_kind(folder) if folder else name for name, folder in methods.items()}
    kinds = steer_kinds(config.steer_at, method_kinds, model.info.family, site.kind)
    _record_config(out, config)  # only now: a run refused above leaves nothing behind

    text_acts = text_activations(model, concepts.texts, site, config.max_len)
    detections, directions = DIRECTIONS[config.protocol](
        config, model, site, concepts, text_acts, decomposers, out
    )
    _write_detection(out, detections)
    placed = {(c, m): place(model, site, kinds[m], directions[c, m]) for c in names for m in methods}
    scale = float(text_acts.acts[text_acts.mask].norm(dim=-1).mean())  # typical activation norm at the site
    sweep = _Sweep.build(config, model, site, concepts, complete, out / "cells.jsonl")
    unsteered = sweep.unsteered(names)
    rows = sweep.run(placed, scale, progress)
    sites = {m: placed[names[0], m][0].name for m in methods}
    layout = Layout(
        f"Steering evaluation: {config.model}, detection at {config.site}, concepts {config.concepts}",
        names, [*methods, UNSTEERED], [m for m, folder in methods.items() if folder], sites,
        (len(config.prompts), config.n_samples), config.judge,
        f"{config.n_samples} samples x {len(config.prompts)} test prompts x {config.max_new_tokens} tokens per cell",
    )  # fmt: skip
    write_results(out, rows, unsteered, detections, layout)
    return rows


def _concept_directions(
    config, model, site, concepts, text_acts, decomposers, out: Path
) -> tuple[list, dict]:
    """The concept protocol: detection chooses each method's direction (and the output score, when selected)."""
    n_random = config.n_random or max([d.n_features for d in decomposers.values()], default=1)
    detections, directions = detect(concepts, text_acts, decomposers, config.seed, n_random)
    if "output" in config.selection:
        rows, chosen, scored = select_by_output(model, site, concepts, text_acts, decomposers,
                                                config.output_candidates)  # fmt: skip
        detections, directions = detections + rows, {**directions, **chosen}
        atomic_write_json(out / "output_scores.json", scored)
    return detections, directions


def _feature_directions(
    config, model, site, concepts, text_acts, decomposers, out: Path
) -> tuple[list, dict]:
    """The feature protocol: each feature's own direction, with difference-in-means and random baselines."""
    ((name, decomposer),) = decomposers.items()
    return feature_directions(concepts, text_acts, decomposer, name, list(config.features), config.seed)


def _feature_concepts(config: SteerEvalConfig):
    concepts = feature_concepts(config.decomposers[0], list(config.features), config.per_concept, config.seed)
    return concepts, [c for c in dict.fromkeys(concepts.concepts) if c != NEUTRAL]


def _concept_set(config: SteerEvalConfig):
    concepts = _concepts(config)
    return concepts, concepts.names


def _concepts(config: SteerEvalConfig):
    concepts = load_concepts(config.concepts, config.per_concept, config.seed)
    if config.concept_names:
        concepts = concepts.select(list(config.concept_names))
    if len(concepts.names) < 2:
        raise ConceptError("detection needs at least two concepts (each is scored against the others)")
    return concepts


# the protocols (concept: labelled concept sets; feature: explained features, the SNMF paper's): concepts, directions
CONCEPTS = {"concept": _concept_set, "feature": _feature_concepts}
DIRECTIONS = {"concept": _concept_directions, "feature": _feature_directions}


def _decomposer_kind(folder: str) -> str:
    """The decomposer's method name (snmf, topk, ...) from its config.json."""
    return str(json.loads((Path(folder) / CONFIG_FILE).read_text()).get("method", ""))


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
class _Sweep:
    """The grid of one run: sampling on both prompt splits, the judges, the cells file."""

    config: SteerEvalConfig
    model: Any
    site: Any
    prompts: dict[str, Prompts]  # split -> prompts
    judges: Judges
    sampling: Sampling
    path: Path
    finished: dict
    reference: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # split -> unsteered median perplexity

    @classmethod
    def build(cls, config, model, site, concepts, complete, path: Path) -> _Sweep:
        train_texts = [concepts.texts[i] for i in concepts.train]
        train_labels = [concepts.concepts[i] for i in concepts.train]
        use_embedder = config.embedding_judge and EmbeddingJudge.available()
        judges = Judges(config.judge, ConceptClassifier.fit(train_texts, train_labels),
                        EmbeddingJudge(train_texts, train_labels) if use_embedder else None, complete)  # fmt: skip
        prompts = {
            "select": Prompts.build(model, config.select_prompts),
            "test": Prompts.build(model, config.prompts),
        }
        sampling = Sampling(config.n_samples, config.max_new_tokens, config.top_k, config.top_p, config.seed,
                            config.backend)  # fmt: skip
        return cls(config, model, site, prompts, judges, sampling, path, finished_cells(path))

    def _generate(self, split: str, site, direction, alpha: float) -> Texts:
        prompts = self.prompts[split]
        texts, ppl = steered_samples(self.model, prompts, site, direction, alpha, self.sampling)
        instructions = [p for p in prompts.texts for _ in range(self.sampling.n_samples)]
        return Texts(texts, ppl, instructions, self.reference.get(split, float(ppl.median())))

    def _append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        self.finished[cell_key(row)] = row

    def unsteered(self, concepts: list[str]) -> list[dict]:
        """The strength-0 row of every concept (one generation per split, judged for each concept); sets the
        reference perplexity of the fluency score."""
        todo = [c for c in concepts if (c, UNSTEERED, "none", 0, 0.0) not in self.finished]
        if todo:
            generated = {split: self._generate(split, self.site, None, 0.0) for split in SPLITS}
            for concept in todo:
                self._append({"concept": concept, "method": UNSTEERED, "kind": "none", "sign": 0, "target": 0.0,
                              "alpha": 0.0, "kl": 0.0, "reached": True, "reason": "", "site": "-",
                              "reference": {s: float(t.perplexity.median()) for s, t in generated.items()},
                              "texts": generated["test"].texts, "select_texts": generated["select"].texts,
                              **{s: self.judges.judge(generated[s], concept) for s in SPLITS}})  # fmt: skip
        rows = [self.finished[c, UNSTEERED, "none", 0, 0.0] for c in concepts]
        self.reference = dict(rows[0]["reference"])
        return rows

    def run(self, placed: dict, scale: float, progress: bool) -> list[dict]:
        """Every steered cell (finished ones read back), in grid order."""
        cfg = self.config
        targets = [("kl", t) for t in cfg.kl_targets] + [("strength", s) for s in cfg.strengths]
        grid = [
            (c, m, kind, sign, value) for (c, m) in placed for sign in cfg.signs for kind, value in targets
        ]
        todo = [cell for cell in grid if cell not in self.finished]
        kl_functions: dict[tuple, Any] = {}
        bar = tqdm(todo, desc="steer-eval", unit="cell", disable=not progress)
        for concept, method, kind, sign, value in bar:
            bar.set_postfix_str(f"{concept} / {method} / {sign:+d} {kind} {value}")
            site, direction = placed[concept, method]
            signed = sign * direction
            key = (concept, method, sign)
            if key not in kl_functions:
                kl_functions[key] = kl_function(self.model, self.prompts["test"], site, signed, cfg.backend)
            if kind == "kl":
                calib = alpha_for_kl(kl_functions[key], value, start=scale / 8)
                alpha, kl, reached, reason = calib.alpha, calib.kl, calib.reached, calib.reason
            else:
                alpha, reached, reason = value * scale, True, ""
                kl = kl_functions[key](alpha)
            generated = {s: self._generate(s, site, signed, alpha) for s in SPLITS}
            self._append({"concept": concept, "method": method, "kind": kind, "sign": sign, "target": value,
                          "alpha": alpha, "kl": kl, "reached": reached, "reason": reason, "site": site.name,
                          "texts": generated["test"].texts, "select_texts": generated["select"].texts,
                          **{s: self.judges.judge(generated[s], concept) for s in SPLITS}})  # fmt: skip
        return [self.finished[cell] for cell in grid]


def _write_detection(out: Path, detections: list) -> None:
    import pandas as pd

    frame = pd.DataFrame([dataclasses.asdict(d) for d in detections])
    atomic_write_text(out / "detection.csv", frame.to_csv(index=False))
