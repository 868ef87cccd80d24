"""The LLM judge of steered text, with AxBench's rubric: three ratings 0-2 per text (concept, instruction
relevance, fluency), combined by their harmonic mean, which is 0 when any rating is 0.

The judge talks to a model only through a `Complete` function (prompts -> replies), so any client plugs in:
`client_complete` below (the project's one LLM client, `interp.llm`, on any OpenAI-compatible endpoint:
INTERP_JUDGE_URL / _MODEL / _KEY) or, in tests, any function. Replies end with `Rating: [[N]]`; a reply without a rating is counted as
unparseable and rated 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.llm import LLMClient, LLMConfig, LLMError

Complete = Callable[[list[str]], list[str]]  # prompts -> reply texts, one per prompt

_FRAME = (
    "Please act as an impartial judge and {task} Begin with a short explanation, then give a rating from 0 to "
    '2, where {scale} Give the rating in exactly this format: "Rating: [[score]]".\n\n{blocks}'
)
RUBRICS = {
    "concept": (
        "decide whether the concept below is incorporated in the text fragment below. Judge only whether the "
        "concept is there, not grammar or coherence.",
        "0 means the concept is absent, 1 that it is somewhat present but minimal or awkward, and 2 that it is "
        "clearly and naturally incorporated.",
    ),
    "instruction": (
        "decide whether the text fragment below is a relevant continuation of the prompt below, whatever else "
        "it talks about.",
        "0 means unrelated to the prompt, 1 somewhat related, and 2 clearly related.",
    ),
    "fluency": (
        "rate how fluent the text fragment below is, whatever it talks about.",
        "0 means not fluent (broken or highly repetitive), 1 somewhat fluent, and 2 fluent, natural language.",
    ),
}
RATINGS = tuple(RUBRICS)
_RATING = re.compile(r"\[\[\s*([0-2](?:\.\d+)?)\s*\]\]")
_BARE = re.compile(r"^\s*(?:rating:?\s*)?([0-2])\s*\.?\s*$", re.IGNORECASE)
_LABELLED = re.compile(
    r"\brating:\s*([0-2])(?![\d/]|\.\d)", re.IGNORECASE
)  # "Rating: 2" without the brackets


class JudgeError(ConnectionError):
    """A judge that cannot run (endpoint unreachable, bad reply)."""


def judge_prompt(rating: str, text: str, concept: str, instruction: str) -> str:
    """The judge's prompt for one rating of one text."""
    task, scale = RUBRICS[rating]
    blocks = {
        "concept": f"[Concept Start]\n{concept}\n[Concept End]\n\n",
        "instruction": f"[Prompt Start]\n{instruction}\n[Prompt End]\n\n",
        "fluency": "",
    }[rating]
    blocks += f"[Text Fragment Start]\n{text}\n[Text Fragment End]"
    return _FRAME.format(task=task, scale=scale, blocks=blocks)


def parse_rating(reply: str) -> float | None:
    """The last `[[N]]` rating in a reply, else a bare digit reply, else the last `Rating: N` (small judges drop
    the brackets); None when there is none."""
    found = _RATING.findall(reply)
    if found:
        return min(float(found[-1]), 2.0)
    bare = _BARE.match(reply) or ([*_LABELLED.finditer(reply)] or [None])[-1]
    return float(bare.group(1)) if bare else None


def axbench_score(ratings: dict[str, torch.Tensor]) -> torch.Tensor:
    """Harmonic mean of the ratings per text `[n]`; 0 where any rating is 0."""
    stacked = torch.stack([ratings[r] for r in RATINGS])  # [3, n]
    positive = (stacked > 0).all(dim=0)
    return torch.where(positive, len(RATINGS) / (1 / stacked.clamp_min(1e-12)).sum(0), torch.zeros(()))


@dataclass
class LLMRatings:
    """Ratings per text: `ratings[name] [n]` for concept / instruction / fluency; `score [n]`; `unparseable`."""

    ratings: dict[str, torch.Tensor]
    score: torch.Tensor
    unparseable: int


def rate_texts(complete: Complete, texts: list[str], concept: str, instructions: list[str]) -> LLMRatings:
    """Rate every text (continuing `instructions[i]`) on the three rubrics in one `complete` call."""
    prompts = [
        judge_prompt(r, t, concept, i) for r in RATINGS for t, i in zip(texts, instructions, strict=True)
    ]
    replies = complete(prompts)
    if len(replies) != len(prompts):
        raise JudgeError(f"the LLM judge returned {len(replies)} replies for {len(prompts)} prompts")
    parsed = [parse_rating(reply) for reply in replies]
    values = torch.tensor([0.0 if p is None else p for p in parsed]).view(len(RATINGS), len(texts))
    ratings = {r: values[k] for k, r in enumerate(RATINGS)}
    return LLMRatings(ratings, axbench_score(ratings), sum(p is None for p in parsed))


def check_complete(complete: Complete) -> None:
    """Refuse early (before anything is written) when the judge cannot answer at all."""
    complete(["Reply with: Rating: [[0]]"])


def client_complete(url: str, model: str, key_env: str | None = None, timeout: float = 60.0,
                    concurrency: int = 4, retries: int = 2, max_tokens: int = 256,
                    cache_path: str | Path | None = None) -> Complete:  # fmt: skip
    """A `Complete` through the project's LLM client (`interp.llm`, the official `openai` package): temperature 0,
    `concurrency` requests at once, retries with backoff. A request the server rejects gives an empty reply (counted
    as unparseable); an endpoint that cannot be used at all raises JudgeError. With `cache_path`, replies are kept
    in that JSON-lines file and a request asked before is answered from it."""
    config = LLMConfig(url=url, model=model, key_env=key_env, timeout=timeout, retries=retries, backoff=0.5,
                       concurrency=concurrency, max_tokens=max_tokens, temperature=0.0)  # fmt: skip

    def complete(prompts: list[str]) -> list[str]:
        try:
            replies = LLMClient(config, cache_path).map(
                [[{"role": "user", "content": p}] for p in prompts], progress=False
            )
        except LLMError as e:
            raise JudgeError(f"{e} (the LLM judge: check INTERP_JUDGE_URL, or use --judge offline)") from e
        return ["" if reply is None else reply for reply in replies]

    return complete


def complete_from_env(**options: Any) -> Complete:
    """`client_complete` from INTERP_JUDGE_URL / INTERP_JUDGE_MODEL, the key in INTERP_JUDGE_KEY when set;
    `options` are client_complete's (timeout, concurrency, max_tokens, cache_path)."""
    url = os.environ.get("INTERP_JUDGE_URL")
    if not url:
        raise JudgeError(
            "--judge llm / both needs INTERP_JUDGE_URL (an OpenAI-compatible endpoint, e.g. "
            "http://127.0.0.1:8000/v1) and INTERP_JUDGE_MODEL; or use --judge offline"
        )
    key_env = "INTERP_JUDGE_KEY" if os.environ.get("INTERP_JUDGE_KEY") else None
    return client_complete(url, judge_model(), key_env, **options)


def judge_model() -> str:
    """The LLM judge's model name (INTERP_JUDGE_MODEL)."""
    return os.environ.get("INTERP_JUDGE_MODEL", "gpt-4o-mini")
