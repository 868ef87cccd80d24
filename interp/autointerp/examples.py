"""Which examples an explainer and its scorers see, read through the feature index's Python API.

- explainer: the feature's top examples (the first `n_explain`).
- activating test examples: spread over the quantile bands (round-robin from the lowest band up), so scores
  cover weak activations too; without bands, the top examples the explainer did not see.
- non-activating test examples: windows of other features' examples where this feature does not fire. When the
  decomposer and its store are on disk, the feature's codes over each window are recomputed and only windows
  where it stays at or below its firing threshold are kept ("verified"); otherwise the windows are only
  checked not to be this feature's own examples ("unverified", said in the run's summary).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.features import Example, Feature, FeatureIndex


@dataclass(frozen=True)
class Snippet:
    """One window of text shown to the LLM, with the feature's activation per token."""

    id: str  # "context:position" of the window's centre token
    texts: list[str]  # the window's tokens inside its context
    acts: list[float]  # [len(texts)] the feature's activation per token (0 where unknown)
    activating: bool
    peak: int  # index in `texts` of the centre token


@dataclass
class FeatureExamples:
    """The examples of one feature: for the explainer, and the test sets (balanced)."""

    feature: int
    explain: list[Snippet]
    activating: list[Snippet]
    non_activating: list[Snippet]
    note: str  # where the activating test examples came from
    firing: str = "relative"  # the firing rule applied to the feature (firing.py)


def example_id(example: Example) -> str:
    return f"{example.context}:{example.position}"


def inside(example: Example, context: int | None = None) -> list[int]:
    """Window indices inside the example's context (and within `context` tokens of its centre, when given)."""
    near = (
        range(len(example.acts))
        if context is None
        else range(example.peak - context, example.peak + context + 1)
    )
    return [j for j in near if 0 <= j < len(example.acts) and example.acts[j] is not None]


def snippet(example: Example, acts: list[float] | None = None, activating: bool = True,
            context: int | None = None) -> Snippet:  # fmt: skip
    """A `Snippet` of an index example (`context` tokens each side of its centre; None: its whole window);
    `acts` replaces its activations (those of another feature)."""
    keep = inside(example, context)
    values = acts if acts is not None else [float(example.acts[j]) for j in keep]
    return Snippet(
        example_id(example), [example.texts[j] for j in keep], values, activating, keep.index(example.peak)
    )


def band_examples(feature: Feature, n: int, skip: set[str]) -> list[Example]:
    """Up to `n` examples spread over the quantile bands, lowest band first, ids in `skip` left out."""
    bands = [[e for e in ex if example_id(e) not in skip] for _, _, ex in feature.bands]
    out: list[Example] = []
    depth = 0
    while len(out) < n and any(depth < len(b) for b in bands):
        out += [b[depth] for b in bands if depth < len(b)][: n - len(out)]
        depth += 1
    return out


def activating_examples(
    feature: Feature, n_explain: int, n_test: int
) -> tuple[list[Example], list[Example], str]:
    """(explainer examples, activating test examples, note saying where the test examples came from).

    Only examples above `feature.threshold` (the firing threshold: see firing.py) are activating."""
    explain = feature.top[:n_explain]
    shown = {example_id(e) for e in explain} | {
        example_id(e) for _, _, ex in feature.bands for e in ex if e.value <= feature.threshold
    }
    test = band_examples(feature, n_test, shown)
    if not any(ex for _, _, ex in feature.bands):
        return (
            explain,
            [e for e in feature.top[n_explain:] if e.value > feature.threshold][:n_test],
            "top examples not shown (no quantile bands)",
        )
    if len(test) < n_test:  # few band examples: top up with unseen top examples
        test += [e for e in feature.top[n_explain:] if e.value > feature.threshold][: n_test - len(test)]
        return explain, test, "quantile bands and top examples not shown"
    return explain, test, "quantile bands"


# ------------------------------------------------------------------------------------------ non-activating
def candidate_pool(index: FeatureIndex, n: int, seed: int) -> list[Example]:
    """`n` windows from the top and band examples of random features (contexts from across the store)."""
    rng = random.Random(seed)
    order = list(range(index.n_features))
    rng.shuffle(order)
    pool: list[Example] = []
    seen: set[str] = set()
    for f in order:
        if len(pool) >= n:
            break
        feature = index.feature(f)
        found = [
            e
            for e in [e for _, _, ex in feature.bands for e in ex] + feature.top
            if example_id(e) not in seen
        ]
        if found:  # one window per feature, each window once
            pick = rng.choice(found)
            seen.add(example_id(pick))
            pool.append(pick)
    return pool


def load_encoder(index: FeatureIndex) -> tuple[Any, Any] | None:
    """(decomposer, store) of the index when both are on disk, else None."""
    from interp.decompose import load_decomposer
    from interp.store import ActivationStore

    m = index.manifest
    if not m.decomposer or not m.store or not Path(m.decomposer).exists() or not Path(m.store).exists():
        return None
    try:
        return load_decomposer(m.decomposer), ActivationStore.open(m.store)
    except (ValueError, FileNotFoundError, OSError):
        return None


@torch.no_grad()
def pool_codes(encoder: tuple[Any, Any], pool: list[Example], features: list[int], context: int | None = None,
               chunk: int = 1024) -> list[torch.Tensor]:  # fmt: skip
    """Codes of `features` over each pool window (cut to `context`): `[len(window), len(features)]` each."""
    decomposer, store = encoder
    rows = torch.tensor([e.row - e.peak + j for e in pool for j in inside(e, context)], dtype=torch.long)
    cols = torch.tensor(features, dtype=torch.long)
    parts = []
    for start in range(0, rows.numel(), chunk):  # a loop over chunks of rows
        x = store.read_rows(rows[start : start + chunk])
        parts.append(decomposer.encode(x).detach().float().cpu()[:, cols])
    codes = torch.cat(parts) if parts else torch.zeros(0, len(features))
    return list(codes.split([len(inside(e, context)) for e in pool]))


def non_activating(feature: Feature, pool: list[Example], codes: list[torch.Tensor] | None, column: int,
                   n: int, seed: int, context: int | None = None) -> list[Snippet]:  # fmt: skip
    """Up to `n` pool windows (cut to `context`) where `feature` does not fire (checked by `codes` when
    given: `pool_codes` with the same `context`)."""
    own = {example_id(e) for e in feature.top} | {example_id(e) for _, _, ex in feature.bands for e in ex}
    picks = []
    for i, example in enumerate(pool):
        if example_id(example) in own:
            continue
        if codes is None:
            picks.append(snippet(example, [0.0] * len(inside(example, context)), False, context))
        elif float(codes[i][:, column].max()) <= feature.threshold:
            picks.append(snippet(example, codes[i][:, column].tolist(), False, context))
    random.Random(seed + feature.id).shuffle(picks)
    return picks[:n]
