"""When a feature "fires" for autointerp: the definitions `interp explain --firing` takes.

Scoring needs balanced examples: contexts where the feature fires, and as many where its activation stays at or
below the firing threshold (non-activating); fuzzing highlights the tokens above it.

- relative: the index's threshold (fire_threshold x the feature's max; 0 for SAEs). Right for sparse codes.
- quantile: the feature's q-quantile over the index's tokens (read from its histogram of firing activations),
  so a share 1 - q of tokens fire, as in a sparse code. SNMF codes are dense (densities 0.93-0.999 at the
  relative threshold), so almost no window stays at or below that one.
- auto (default): relative where the feature's density at the index threshold is at most `dense`, else quantile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from interp.features import Feature


@dataclass(frozen=True)
class Firing:
    """A firing definition and its parameters (`ExplainConfig.firing`, `.firing_q`, `.firing_dense`)."""

    rule: str = "auto"
    q: float = 0.99
    dense: float = 0.1

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown --firing {self.rule!r}; valid: {', '.join(RULES)}")
        if not 0.0 < self.q < 1.0:
            raise ValueError(f"--firing-q must be in (0, 1); got {self.q}")
        if not 0.0 < self.dense <= 1.0:
            raise ValueError(f"--firing-dense must be in (0, 1]; got {self.dense}")

    def describe(self) -> str:
        """The options that select this definition (parameters it does not use left out)."""
        used = {"relative": "", "quantile": f" --firing-q {self.q}",
                "auto": f" --firing-q {self.q} --firing-dense {self.dense}"}  # fmt: skip
        return f"--firing {self.rule}{used[self.rule]}"

    def threshold(self, feature: Feature, n_tokens: int) -> tuple[str, float]:
        """(the rule applied to `feature`, its firing threshold)."""
        return RULES[self.rule](self, feature, n_tokens)


def quantile_threshold(feature: Feature, n_tokens: int, q: float) -> float:
    """The feature's `q`-quantile over `n_tokens` index tokens, from its histogram of activations above the
    index threshold (linear within a bin); the index threshold itself when fewer than 1 - q of tokens exceed it."""
    target = (1.0 - q) * n_tokens  # tokens allowed above the threshold
    if feature.count <= target or not feature.hist_counts:
        return feature.threshold
    above = 0.0
    for b in range(len(feature.hist_counts) - 1, -1, -1):  # from the top bin down
        lo, hi, c = feature.hist_edges[b], feature.hist_edges[b + 1], feature.hist_counts[b]
        if above + c >= target:
            return hi - (target - above) / c * (hi - lo) if c else hi
        above += c
    return feature.threshold


def _auto(firing: Firing, feature: Feature, n_tokens: int) -> tuple[str, float]:
    density = feature.count / max(n_tokens, 1)
    return ("quantile", quantile_threshold(feature, n_tokens, firing.q)) if density > firing.dense \
        else ("relative", feature.threshold)  # fmt: skip


RULES: dict[str, Callable[[Firing, Feature, int], tuple[str, float]]] = {
    "relative": lambda firing, feature, n_tokens: ("relative", feature.threshold),
    "quantile": lambda firing, feature, n_tokens: (
        "quantile",
        quantile_threshold(feature, n_tokens, firing.q),
    ),
    "auto": _auto,
}
