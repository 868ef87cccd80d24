"""The explainer's and the scorers' prompts (delphi's protocol, our own wording) and the parsers of replies.

Change any text here and bump `PROMPT_VERSION`: it is recorded with every explanation and is part of the cache
key (through the prompt text), so a rerun with new prompts asks again.
"""

from __future__ import annotations

import re

from interp.autointerp.examples import Snippet

PROMPT_VERSION = "delphi-style-v1"
HIGHLIGHT_FRACTION = 0.3  # a token is marked when its activation exceeds this fraction of its example's peak
Messages = list[dict[str, str]]

EXPLAINER_SYSTEM = (
    "You are studying one feature of a language model: a direction in its activations that fires on some "
    "tokens. You will see text examples where the feature fires; the tokens where it fires most are marked "
    "<<like this>> (consecutive marked tokens share one pair of marks). After each example, its marked tokens are "
    "listed with the feature's activation on a 0-10 scale.\n"
    "Find what the examples have in common that makes the feature fire: the marked tokens themselves, the words "
    "around them, or both. Write one short, specific description. Do not list alternatives, do not quote many "
    "examples, do not mention the << >> marks.\n"
    "End with one line of the form\n[EXPLANATION]: <your description>"
)
EXPLAINER_ASK = "Give the description on the last line, after [EXPLANATION]:"

DETECTION_SYSTEM = (
    "You will read an explanation of a feature of a language model and a numbered list of text examples. The "
    "feature fires on some tokens of some of the examples and not at all in the others. Using only the "
    "explanation, decide for each example whether the feature fires anywhere in it.\n"
    "Answer with one list of numbers in brackets, in the order of the examples: 1 if the feature fires in the "
    "example, 0 if it does not. For three examples: [1, 0, 1]"
)
DETECTION_ASK = "Your list of {n} labels, 1 if the feature fires in the example and 0 if not:"

FUZZING_SYSTEM = (
    "You will read an explanation of a feature of a language model and a numbered list of text examples. In "
    "each example some tokens are marked <<like this>>. In some examples the marks are on the tokens where the "
    "feature fires; in the others they were put on tokens where it does not. Using only the explanation, decide "
    "for each example whether its marked tokens are ones the explanation describes.\n"
    "Answer with one list of numbers in brackets, in the order of the examples: 1 if the marks are right, 0 if "
    "they are misplaced. For three examples: [0, 1, 1]"
)
FUZZING_ASK = "Your list of {n} labels, 1 if the marks are right and 0 if they are misplaced:"


def clean(token: str) -> str:
    """A token's text on one line (a newline shown as ⏎)."""
    return token.replace("\r", "").replace("\n", "⏎")


def marked(texts: list[str], positions: set[int]) -> str:
    """The tokens joined, with runs of `positions` wrapped in << >>."""
    out = []
    for i, token in enumerate(texts):
        if i in positions and i - 1 not in positions:
            out.append("<<")
        out.append(clean(token))
        if i in positions and i + 1 not in positions:
            out.append(">>")
    return "".join(out)


def active_positions(example: Snippet, threshold: float) -> set[int]:
    """Window positions where the activation exceeds `threshold` and `HIGHLIGHT_FRACTION` of the example's peak."""
    peak = max(example.acts, default=0.0)
    cut = max(threshold, HIGHLIGHT_FRACTION * peak)
    return {i for i, a in enumerate(example.acts) if a > cut}


def explainer_messages(examples: list[Snippet], max_activation: float, threshold: float) -> Messages:
    """The explainer's chat: examples with marked tokens and their activations scaled to 0-10."""
    scale = 10.0 / max_activation if max_activation > 0 else 0.0
    lines = []
    for n, example in enumerate(examples, 1):
        where = sorted(active_positions(example, threshold))
        acts = ", ".join(
            f'("{clean(example.texts[i])}", {round(example.acts[i] * scale)})' for i in where[:10]
        )
        lines += [f"Example {n}: {marked(example.texts, set(where))}", f"Activations: {acts}"]
    user = "\n".join(lines) + "\n\n" + EXPLAINER_ASK
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": user}]


def scorer_messages(system: str, ask: str, explanation: str, shown: list[str]) -> Messages:
    """A scorer's chat: the explanation, the numbered examples (already rendered) and the question."""
    examples = "\n".join(f"Example {n}: {text}" for n, text in enumerate(shown, 1))
    user = f"Explanation: {explanation}\n\n{examples}\n\n{ask.format(n=len(shown))}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------- parsing
TAG = re.compile(r"\[EXPLANATION\]\s*:?\s*(.*)", re.IGNORECASE)
LIST = re.compile(r"\[([^\[\]]*)\]")
WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
LEADING_WORD = re.compile(r"\W*(1|0|true|false|yes|no)\b", re.IGNORECASE)


def parse_explanation(reply: str | None) -> tuple[str, str]:
    """(explanation, status): status "tagged" (an [EXPLANATION]: line), "untagged" (the reply's last line is
    taken) or "empty" (no text: the feature is not scored)."""
    if not reply or not reply.strip():
        return "", "empty"
    for line in reversed(reply.strip().splitlines()):
        match = TAG.search(line)
        if match and match.group(1).strip():
            return match.group(1).strip(), "tagged"
    last = [line.strip() for line in reply.strip().splitlines() if line.strip()][-1]
    return last[:300], "untagged"


def parse_labels(reply: str | None, n: int) -> list[int] | None:
    """The first bracketed list of `n` labels (0/1, true/false, yes/no) in `reply`, or None (malformed). For
    one example (`n` 1) a reply that starts with its label ("No, the text ...") counts too: small models
    answer a one-example question so."""
    if not reply:
        return None
    leading = LEADING_WORD.match(reply) if n == 1 else None
    if leading and not reply.lstrip().startswith("["):
        return [WORDS[leading.group(1).lower()]]
    for match in LIST.finditer(reply):
        items = [item.strip().strip("'\"").lower() for item in match.group(1).split(",")]
        if len(items) == 1 and " " in items[0]:
            items = items[0].split()
        labels = [WORDS.get(item) for item in items]
        if len(labels) == n and None not in labels:
            return labels  # type: ignore[return-value]
    return None
