"""Delphi's two classification scores of an explanation, and the shuffled-explanation baseline.

- detection: the scorer sees unmarked examples, half where the feature fires (from the quantile bands) and
  half where it does not, and labels each: does the feature fire in it, going by the explanation?
- fuzzing: the scorer sees the feature's activating examples with their firing tokens marked (label 1) and
  non-activating examples with marks copied from an activating example's positions (label 0), and labels each:
  are these the tokens the explanation describes?
Both report accuracy, precision, recall and F1 (positive class: fires / marks right) over the labels of the
replies that could be parsed; a reply that cannot be parsed is counted as malformed and left out.
- shuffled baseline: every feature is scored again, on the same examples, with another feature's explanation (a
  random derangement); an explanation means something only where it beats its baseline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from interp.autointerp.examples import FeatureExamples, Snippet
from interp.autointerp.prompts import active_positions, marked, parse_labels


@dataclass(frozen=True)
class Trial:
    """The examples of one scoring prompt: their rendered text, true labels and ids."""

    texts: list[str]
    labels: list[int]
    ids: list[str]


def batched(items: list[tuple[str, int, str]], per_prompt: int) -> list[Trial]:
    out = []
    for start in range(0, len(items), per_prompt):
        chunk = items[start : start + per_prompt]
        out.append(Trial([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk]))
    return out


def detection_trials(examples: FeatureExamples, per_prompt: int, seed: int) -> list[Trial]:
    """Activating and non-activating examples, unmarked, shuffled, `per_prompt` to a prompt."""
    items = [
        (marked(s.texts, set()), int(s.activating), s.id)
        for s in examples.activating + examples.non_activating
    ]
    random.Random(seed + examples.feature).shuffle(items)
    return batched(items, per_prompt)


def shifted(positions: set[int], source: Snippet, target: Snippet) -> set[int]:
    """`positions` of `source` moved to the same offsets from `target`'s centre token (clipped to its length)."""
    moved = {p - source.peak + target.peak for p in positions}
    return {p for p in moved if 0 <= p < len(target.texts)} or {target.peak}


def fuzzing_trials(examples: FeatureExamples, threshold: float, per_prompt: int, seed: int) -> list[Trial]:
    """Activating examples marked where the feature fires (1); non-activating ones marked at the firing
    positions of a random activating example (0); shuffled, `per_prompt` to a prompt."""
    rng = random.Random(seed + examples.feature + 1)
    items = [(marked(s.texts, active_positions(s, threshold)), 1, s.id) for s in examples.activating]
    for s in examples.non_activating:
        donor = rng.choice(examples.activating)
        items.append((marked(s.texts, shifted(active_positions(donor, threshold), donor, s)), 0, s.id))
    rng.shuffle(items)
    return batched(items, per_prompt)


def metrics(labels: list[int], predictions: list[int]) -> dict[str, float]:
    """accuracy, precision, recall, f1 (positive class 1) and n; NaN where no labels."""
    n = len(labels)
    if n == 0:
        return {"accuracy": math.nan, "precision": math.nan, "recall": math.nan, "f1": math.nan, "n": 0}
    tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == 1 and p == 1)
    fp = sum(1 for y, p in zip(labels, predictions, strict=True) if y == 0 and p == 1)
    fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y == 1 and p == 0)
    correct = sum(1 for y, p in zip(labels, predictions, strict=True) if y == p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"accuracy": correct / n, "precision": precision, "recall": recall, "f1": f1, "n": n}


def score(trials: list[Trial], replies: list[str | None]) -> tuple[dict[str, float], int]:
    """(metrics over the parsed replies, number of malformed replies)."""
    labels, predictions, malformed = [], [], 0
    for trial, reply in zip(trials, replies, strict=True):
        parsed = parse_labels(reply, len(trial.labels))
        if parsed is None:
            malformed += 1
            continue
        labels += trial.labels
        predictions += parsed
    return metrics(labels, predictions), malformed


def derangement(features: list[int], seed: int) -> dict[int, int]:
    """feature -> another feature whose explanation it is scored with (a random cycle; {} for < 2 features)."""
    if len(features) < 2:
        return {}
    order = sorted(features)
    random.Random(seed).shuffle(order)
    return {f: order[(i + 1) % len(order)] for i, f in enumerate(order)}
