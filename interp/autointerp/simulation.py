"""Simulation scoring (OpenAI's explainer / simulator protocol, Bills et al. 2023), from generated numbers.

The simulator reads an explanation and one example's tokens, one per line, and predicts the feature's activation
on each token as an integer 0-10. The score of an explanation is the Pearson correlation between the predicted
and the true activations over all tokens of the feature's test examples at once (activating examples from the
quantile bands and non-activating ones, as detection uses), OpenAI's "all at once" correlation score.

OpenAI reads the prediction off the logprobs of the digits at every position; `transformers serve` refuses
`logprobs`, so here the simulator writes its numbers and the reply is parsed: a reply without a list of exactly
one number per token is counted as malformed and left out (as the other scorers do).
"""

from __future__ import annotations

import math
import re

import torch

from interp.autointerp.examples import FeatureExamples
from interp.autointerp.prompts import Messages, clean
from interp.autointerp.scoring import Trial

SIMULATION_SYSTEM = (
    "You will read an explanation of a feature of a language model and the tokens of one text, one token per "
    "line. Using only the explanation, predict how strongly the feature fires on each token, as an integer from "
    "0 (not at all) to 10 (as strongly as it ever does). Most tokens are 0.\n"
    "Answer with one list of integers in brackets, one per token, in order. For three tokens: [0, 7, 0]"
)
SIMULATION_ASK = "Your list of {n} integers from 0 to 10, one per token:"

LIST = re.compile(r"\[([^\[\]]*)\]")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def simulation_trials(examples: FeatureExamples) -> list[Trial]:
    """One trial per test example (activating, then non-activating): its tokens, and its true activations as
    the labels `[n_tokens]`."""
    return [
        Trial(["\n".join(clean(t) for t in s.texts)], list(s.acts), [s.id])
        for s in examples.activating + examples.non_activating
    ]


def simulation_messages(explanation: str, trial: Trial) -> Messages:
    """The simulator's chat for one example."""
    user = (
        f"Explanation: {explanation}\n\nTokens:\n{trial.texts[0]}\n\n"
        f"{SIMULATION_ASK.format(n=len(trial.labels))}"
    )
    return [{"role": "system", "content": SIMULATION_SYSTEM}, {"role": "user", "content": user}]


def parse_numbers(reply: str | None, n: int) -> list[float] | None:
    """The first bracketed list of `n` numbers in `reply` (or, without brackets, a reply of exactly `n`
    numbers), clipped to 0-10; None when there is none (malformed)."""
    if not reply:
        return None
    candidates = [m.group(1) for m in LIST.finditer(reply)] or [reply]
    for text in candidates:
        numbers = NUMBER.findall(text)
        if len(numbers) == n:
            return [min(max(float(x), 0.0), 10.0) for x in numbers]
    return None


def correlation(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Pearson correlation of two `[n]` tensors; NaN when either is constant or n < 2."""
    if predicted.numel() < 2:
        return math.nan
    p, t = predicted - predicted.mean(), true - true.mean()
    denominator = float(p.norm() * t.norm())
    return float((p * t).sum()) / denominator if denominator > 0 else math.nan


def simulation_score(trials: list[Trial], replies: list[str | None]) -> tuple[dict[str, float], int]:
    """({"correlation", "n"}, malformed replies): the correlation over every token of the parsed replies."""
    predicted, true, malformed = [], [], 0
    for trial, reply in zip(trials, replies, strict=True):
        parsed = parse_numbers(reply, len(trial.labels))
        if parsed is None:
            malformed += 1
            continue
        predicted += parsed
        true += trial.labels
    p, t = torch.tensor(predicted, dtype=torch.float64), torch.tensor(true, dtype=torch.float64)
    return {"correlation": correlation(p, t), "n": len(true)}, malformed
