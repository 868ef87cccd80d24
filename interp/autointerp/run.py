"""`explain_index`: explain features of an index with an LLM, score the explanations, write them to the index.

Writes into the index folder:
  explanations.parquet      one row per feature: explanation, detection / fuzzing scores, their shuffled
                            baselines, the ids ("context:position") of every example shown, the LLM and prompt
  explanations.json         the run's summary: settings, counts (requests, malformed replies, skipped features),
                            where the non-activating examples came from, mean scores vs the baseline
  explanations.cache.jsonl  every prompt -> reply (a rerun asks only what is missing)
The parquet is rewritten after the explanations and after each chunk of scored features, so an interrupted run
keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interp.autointerp.examples import (
    FeatureExamples,
    activating_examples,
    candidate_pool,
    load_encoder,
    non_activating,
    pool_codes,
    snippet,
)
from interp.autointerp.firing import Firing
from interp.autointerp.prompts import (
    DETECTION_ASK,
    DETECTION_SYSTEM,
    FUZZING_ASK,
    FUZZING_SYSTEM,
    PROMPT_VERSION,
    explainer_messages,
    parse_explanation,
    scorer_messages,
)
from interp.autointerp.scoring import Trial, derangement, detection_trials, fuzzing_trials, score
from interp.autointerp.simulation import simulation_messages, simulation_score, simulation_trials
from interp.core.io import atomic_write_bytes, atomic_write_json
from interp.features import Feature, FeatureIndex
from interp.features.layout import EXPLANATIONS
from interp.llm import LLMClient

RESULTS = EXPLANATIONS
SUMMARY = "explanations.json"
CACHE = "explanations.cache.jsonl"
METRICS = ("accuracy", "precision", "recall", "f1", "n")


@dataclass(frozen=True)
class ExplainConfig:
    """How many examples the explainer and the scorers see (defaults after delphi's, scaled to the index)."""

    n_explain: int = 10  # top examples shown to the explainer
    n_test: int = 10  # activating test examples per feature (and as many non-activating ones)
    per_prompt: int = 5  # examples per scoring prompt
    scorers: tuple[str, ...] = ("detection", "fuzzing")
    shuffled_baseline: bool = True  # also score each feature with another feature's explanation
    chunk: int = 32  # features scored between two writes of explanations.parquet
    context: int | None = None  # tokens shown each side of a test example's centre (None: the index's window)
    pool: int = 0  # candidate non-activating windows (0: max(64, 8 * n_test))
    seed: int = 0
    firing: str = "auto"  # when a feature fires (firing.py): relative | quantile | auto
    firing_q: float = 0.99  # quantile: the share of index tokens at or below the firing threshold
    firing_dense: float = 0.1  # auto: quantile for features denser than this at the index threshold

    def __post_init__(self) -> None:
        Firing(self.firing, self.firing_q, self.firing_dense)  # checks the firing settings
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown:
            raise ValueError(f"unknown scorer(s) {unknown}; valid: {', '.join(SCORERS)}")
        if min(self.n_explain, self.n_test, self.per_prompt, self.chunk) < 1:
            raise ValueError("n_explain, n_test, per_prompt and chunk must be at least 1")

    @property
    def firing_rule(self) -> Firing:
        return Firing(self.firing, self.firing_q, self.firing_dense)


@dataclass(frozen=True)
class Scorer:
    """One scorer: its trials of a feature, its chat per trial, and how replies become metrics."""

    trials: Callable[[FeatureExamples, Feature, ExplainConfig], list[Trial]]
    messages: Callable[[str, Trial], list[dict[str, str]]]  # (explanation, trial) -> chat
    score: Callable[[list[Trial], list[str | None]], tuple[dict[str, float], int]]
    metrics: tuple[str, ...]  # columns `<scorer>_<metric>` of explanations.parquet
    headline: tuple[str, ...]  # metrics also scored with a shuffled explanation (`..._shuffled`)


def _asking(system: str, ask: str) -> Callable[[str, Trial], list[dict[str, str]]]:
    return lambda explanation, trial: scorer_messages(system, ask, explanation, trial.texts)


SCORERS = {
    "detection": Scorer(lambda fx, feature, c: detection_trials(fx, c.per_prompt, c.seed),
                        _asking(DETECTION_SYSTEM, DETECTION_ASK), score, METRICS, ("accuracy", "f1")),
    "fuzzing": Scorer(lambda fx, feature, c: fuzzing_trials(fx, feature.threshold, c.per_prompt, c.seed),
                      _asking(FUZZING_SYSTEM, FUZZING_ASK), score, METRICS, ("accuracy", "f1")),
    "simulation": Scorer(lambda fx, feature, c: simulation_trials(fx), simulation_messages, simulation_score,
                         ("correlation", "n"), ("correlation",)),
}  # fmt: skip


def parse_features(spec: str | None, sample: int | None, n_features: int, seed: int = 0) -> list[int]:
    """Features from `--features 0-99,120` or `--sample N` (random, seeded); all features when neither."""
    import random

    if spec and sample:
        raise ValueError("pass --features or --sample, not both")
    if sample:
        return sorted(random.Random(seed).sample(range(n_features), min(sample, n_features)))
    if not spec:
        return list(range(n_features))
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise ValueError(f"--features takes ranges like 0-99,120; got {spec!r}") from None
    bad = [f for f in out if not 0 <= f < n_features]
    if bad:
        raise ValueError(f"features {bad[:5]} are out of range: this index has features 0..{n_features - 1}")
    return sorted(set(out))


def gather(index: FeatureIndex, features: list[int], config: ExplainConfig) -> tuple[dict, list[int], str]:
    """({feature: (Feature, FeatureExamples)}, features skipped for having no activating example, how the
    non-activating examples were checked)."""
    pool = candidate_pool(index, config.pool or max(64, 8 * config.n_test), config.seed)
    encoder = load_encoder(index)
    chosen, skipped, rules = {}, [], {}
    for f in features:
        feature = index.feature(f)
        if feature.count == 0 or not feature.top:
            skipped.append(f)
        else:  # the feature with its firing threshold of this run's definition
            rule, threshold = config.firing_rule.threshold(feature, index.manifest.n_tokens)
            chosen[f], rules[f] = dataclasses.replace(feature, threshold=threshold), rule
    live = sorted(chosen)
    codes = pool_codes(encoder, pool, live, config.context) if encoder is not None and live else None
    out = {}
    for column, f in enumerate(live):
        feature = chosen[f]
        explain, test, note = activating_examples(feature, config.n_explain, config.n_test)
        negatives = non_activating(feature, pool, codes, column, len(test), config.seed, config.context)
        activating = [snippet(e, context=config.context) for e in test][: len(negatives)]
        fx = FeatureExamples(f, [snippet(e) for e in explain], activating, negatives, note, rules[f])
        out[f] = (feature, fx)
    return out, skipped, "verified" if codes is not None else "unverified"


def explain_index(index: str | Path | FeatureIndex, features: list[int], client: LLMClient,
                  config: ExplainConfig = ExplainConfig(), progress: bool = True) -> Any:  # fmt: skip
    """Explain and score `features` of `index`; returns the rows of this run (a DataFrame) and writes them.

    `client` should cache into `<index>/explanations.cache.jsonl` (`explanation_client` builds one)."""
    started = time.perf_counter()
    index = index if isinstance(index, FeatureIndex) else FeatureIndex.open(index)
    refuse_other_firing(index.path, config)
    client.check()
    data, skipped, checked = gather(index, features, config)
    replies = client.map([explainer_messages(fx.explain, feat.max, feat.threshold) for feat, fx in data.values()],
                         desc="explain", progress=progress)  # fmt: skip
    rows = {f: _row(f, feat, fx, parse_explanation(reply), client, config) for (f, (feat, fx)), reply
            in zip(data.items(), replies, strict=True)}  # fmt: skip
    _write(index.path, rows)
    explained = [f for f, row in rows.items() if row["explanation"]]
    donors = derangement(explained, config.seed) if config.shuffled_baseline else {}
    for start in range(0, len(explained), config.chunk):
        chunk = explained[start : start + config.chunk]
        _score_chunk(chunk, data, rows, donors, client, config, progress)
        _write(index.path, rows)
    summary = _summary(rows, skipped, checked, client, config, time.perf_counter() - started)
    atomic_write_json(index.path / SUMMARY, summary)
    import pandas as pd

    return pd.DataFrame(list(rows.values()))


def refuse_other_firing(folder: Path, config: ExplainConfig) -> None:
    """Refuse to add to an explanations.parquet written under another firing definition (rows written before
    firing was recorded used the index threshold: `--firing relative`)."""
    import pandas as pd

    path = folder / RESULTS
    if not path.exists():
        return
    table = pd.read_parquet(path)
    if not len(table):
        return
    old = set(table["firing_setting"]) if "firing_setting" in table else {"--firing relative"}
    new = config.firing_rule.describe()
    if old != {new}:
        raise ValueError(
            f"{path} holds explanations scored with {', '.join(sorted(old))}; this run asks {new}. Rerun with "
            f"those options to resume, or delete {folder}/explanations.* to start over"
        )


def explanation_client(index: str | Path | FeatureIndex, llm: Any) -> LLMClient:
    """An `LLMClient` for `llm` (an LLMConfig) caching into the index folder."""
    path = index.path if isinstance(index, FeatureIndex) else FeatureIndex.open(index).path
    return LLMClient(llm, path / CACHE)


def _row(f: int, feature: Feature, fx: FeatureExamples, parsed: tuple[str, str], client: LLMClient,
         config: ExplainConfig) -> dict[str, Any]:  # fmt: skip
    explanation, status = parsed
    row: dict[str, Any] = {"feature": f, "explanation": explanation, "explanation_status": status,
                           "shuffled_from": -1, "n_malformed": int(status == "empty")}  # fmt: skip
    for name, scorer in SCORERS.items():
        row |= {f"{name}_{m}": math.nan for m in scorer.metrics}
        row |= {f"{name}_{m}_shuffled": math.nan for m in scorer.headline}
    row |= {"explain_ids": [s.id for s in fx.explain], "activating_ids": [s.id for s in fx.activating],
            "non_activating_ids": [s.id for s in fx.non_activating], "examples_note": fx.note,
            "llm_model": client.config.model, "prompt_version": PROMPT_VERSION,
            "firing_setting": config.firing_rule.describe(), "firing": fx.firing,
            "firing_threshold": feature.threshold}  # fmt: skip
    return row


def _score_chunk(chunk: list[int], data: dict, rows: dict, donors: dict[int, int], client: LLMClient,
                 config: ExplainConfig, progress: bool) -> None:  # fmt: skip
    """Score the features of `chunk` with their own and (baseline) their donors' explanations, in one batch."""
    jobs = []  # (feature, scorer, shuffled?, trials, first conversation, number of conversations)
    conversations = []
    longest = 0  # labels of the longest trial: the reply's length limit
    for f in chunk:
        feature, fx = data[f]
        if not fx.activating or not fx.non_activating:
            continue
        for name in config.scorers:
            scorer = SCORERS[name]
            trials = scorer.trials(fx, feature, config)
            tellings = [(False, rows[f]["explanation"])]
            if f in donors:
                tellings.append((True, rows[donors[f]]["explanation"]))
            for shuffled, explanation in tellings:
                jobs.append((f, name, shuffled, trials, len(conversations)))
                conversations += [scorer.messages(explanation, t) for t in trials]
                longest = max([longest] + [len(t.labels) for t in trials])
    # a list of labels is short: cap the reply (small local models may ramble on)
    limit = min(client.config.max_tokens, 16 + 4 * longest)
    replies = client.map(conversations, desc="score", progress=progress, max_tokens=limit)
    for f, name, shuffled, trials, first in jobs:
        scorer = SCORERS[name]
        result, malformed = scorer.score(trials, replies[first : first + len(trials)])
        row = rows[f]
        row["n_malformed"] += malformed
        if shuffled:
            row["shuffled_from"] = donors[f]
            row |= {f"{name}_{m}_shuffled": result[m] for m in scorer.headline}
        else:
            row |= {f"{name}_{m}": result[m] for m in scorer.metrics}


def _write(folder: Path, rows: dict[int, dict[str, Any]]) -> None:
    """explanations.parquet: this run's rows, and rows of earlier runs for other features."""
    import pandas as pd

    if not rows:
        return
    table = pd.DataFrame(list(rows.values()))
    path = folder / RESULTS
    if path.exists():
        old = pd.read_parquet(path)
        table = pd.concat([old[~old["feature"].isin(list(rows))], table], ignore_index=True)
    buffer = io.BytesIO()
    table.sort_values("feature").reset_index(drop=True).to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


def _summary(rows: dict, skipped: list[int], checked: str, client: LLMClient, config: ExplainConfig,
             seconds: float) -> dict[str, Any]:  # fmt: skip
    import pandas as pd

    table = pd.DataFrame(list(rows.values()))
    means = {}
    for name in config.scorers:
        for m in SCORERS[name].headline:
            for suffix in ("", "_shuffled"):
                column = f"{name}_{m}{suffix}"
                mean = float(table[column].mean()) if len(table) else math.nan
                means[column] = None if math.isnan(mean) else mean  # strict JSON: null, not NaN
    statuses = table["explanation_status"].value_counts().to_dict() if len(table) else {}
    return {
        "llm_model": client.config.model, "llm_url": client.config.url, "prompt_version": PROMPT_VERSION,
        "config": dataclasses.asdict(config), "n_features": len(rows), "skipped_no_activations": skipped,
        "non_activating_examples": checked, "explanations": statuses,
        "unscored_no_non_activating": [f for f, row in rows.items() if not row["non_activating_ids"]],
        "n_malformed_replies": int(table["n_malformed"].sum()) if len(table) else 0,
        "requests_sent": client.n_sent, "requests_cached": client.n_cached, "requests_failed": client.n_failed,
        "mean": means, "seconds": seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip
