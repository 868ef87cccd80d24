"""The feature-centric protocol (the SNMF paper's): steer chosen features toward their own explanation.

For each selected feature of one decomposer:
- the concept is its explanation, read from the index's `explanations.parquet` (written by `interp explain`);
- its texts are the windows of its top-activating examples in the index; the neutral texts are the top windows of
  other features of the index that were not selected (seeded draw), so every concept is judged against the rest;
- the baselines: difference-in-means of the mean-pooled site activations (the feature's windows minus the neutral
  windows), and one seeded random unit direction per feature.
The judges then score the presence of the explanation in steered text, exactly as for a concept.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from interp.features.reader import FeatureIndex
from interp.steer.concepts import ConceptError, ConceptSet, make_concept_set
from interp.steer.detection import Detection, TextActivations, auroc, diff_in_means, random_directions

NEUTRAL = "neutral"


class FeatureProtocolError(ConceptError):
    """The feature protocol cannot run: no explanations, unknown or unexplained features."""


def explained(index: FeatureIndex, features: list[int]) -> dict[int, str]:
    """feature -> explanation for `features`; a clear error when the index has none, or lacks some."""
    table = index.explanations()
    if table is None:
        raise FeatureProtocolError(
            f"the index at {index.path} has no explanations.parquet; run `interp explain` on it first"
        )
    text = {int(f): str(e) for f, e in zip(table["feature"], table["explanation"], strict=True) if e}
    missing = [f for f in features if f not in text]
    if missing:
        raise FeatureProtocolError(
            f"feature(s) {missing} have no explanation in {index.path}; run `interp explain` for them, or pick "
            f"among the explained ones ({', '.join(map(str, sorted(text)[:20]))}, ...)"
        )
    return {f: text[f] for f in features}


def _window_text(example) -> str:
    return "".join(t for t, a in zip(example.texts, example.acts, strict=True) if a is not None)


def feature_concepts(folder: str | Path, features: list[int], per_feature: int, seed: int) -> ConceptSet:
    """Texts of each feature (its top windows, labelled with its explanation) and neutral windows (label
    `neutral`) from other features of the index."""
    index = FeatureIndex.open(folder)
    for f in features:
        index.check_feature(f)
    labels = explained(index, features)
    if len(set(labels.values())) < len(labels):
        raise FeatureProtocolError("two selected features share one explanation; select one of them")
    texts, concepts = [], []
    for f in features:
        own = [_window_text(e) for e in index.feature(f).top[:per_feature]]
        texts += own
        concepts += [labels[f]] * len(own)
    others = [f for f in range(index.n_features) if f not in labels]
    random.Random(seed).shuffle(others)
    neutral: list[str] = []
    for f in others:
        if len(neutral) >= per_feature:
            break
        neutral += [_window_text(e) for e in index.feature(f).top[:2]]
    texts += neutral[:per_feature]
    concepts += [NEUTRAL] * len(neutral[:per_feature])
    return make_concept_set(f"features of {Path(folder).name}", texts, concepts, seed=seed)


def feature_directions(
    concepts: ConceptSet, acts: TextActivations, decomposer, name: str, features: list[int], seed: int
) -> tuple[list[Detection], dict[tuple[str, str], torch.Tensor]]:
    """Per explained feature (`acts`: the site's activations of the concepts' texts): its own direction (method `name`), difference-in-means and a random direction, with
    a detection row each (AUROC of the direction's max-pooled projection: the feature's texts vs the rest)."""
    train, held = torch.tensor(concepts.train), torch.tensor(concepts.held_out)
    mean_acts = acts.mean_pool()
    randoms = random_directions(mean_acts.shape[1], len(features), seed)
    order = [c for c in dict.fromkeys(concepts.concepts) if c != NEUTRAL]  # explanations in feature order
    rows, directions = [], {}
    for i, (concept, f) in enumerate(zip(order, features, strict=True)):
        positive = torch.tensor([c == concept for c in concepts.concepts])
        own = decomposer.directions[f].float()
        candidates = {name: (f, own / own.norm().clamp_min(1e-12)),
                      "diff_in_means": (-1, diff_in_means(mean_acts[train], positive[train])),
                      "random": (-1, randoms[i])}  # fmt: skip
        for method, (feature, direction) in candidates.items():
            scores = acts.max_pool((acts.acts @ direction)[..., None])
            rows.append(Detection(concept, method, feature, float(auroc(scores[train], positive[train])[0]),
                                  float(auroc(scores[held], positive[held])[0]), float("nan")))  # fmt: skip
            directions[concept, method] = direction
    return rows, directions
