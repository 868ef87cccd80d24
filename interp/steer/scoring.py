"""The judges of one run (`--judge offline | llm | both`) and the per-text scores of a cell.

Every judge gives, per text: `score` (0-2), `concept` (0-2), `fluency` (0-2) and `on_topic` (0 / 1), under its
own prefix (`offline_*`, `llm_*`); the run's judge (`llm` when it is used, else `offline`) also fills the plain
names, which every table and figure reads. With `both`, `spearman` is the rank agreement of the two scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from interp.steer.judges import ConceptClassifier, EmbeddingJudge, fluency_scores, harmonic_mean, on_topic
from interp.steer.judges import spearman as rank_agreement
from interp.steer.llm_judge import Complete, rate_texts

JUDGE_MODES = {"offline": ("offline",), "llm": ("llm",), "both": ("offline", "llm")}
PRIMARY = {"offline": "offline", "llm": "llm", "both": "llm"}
SCORES = ("score", "concept", "fluency", "on_topic")


@dataclass
class Texts:
    """One cell's generations on one prompt split: texts `[n]`, perplexity `[n]`, the prompt each continues."""

    texts: list[str]
    perplexity: torch.Tensor
    instructions: list[str]
    reference_perplexity: float  # median perplexity of the unsteered texts of the same split


@dataclass
class Judges:
    mode: str
    classifier: ConceptClassifier
    embedder: EmbeddingJudge | None = None
    complete: Complete | None = None

    def judge(self, cell: Texts, concept: str) -> dict:
        """Per-text scores (lists) of `cell` for `concept`; `unparseable` counts LLM replies without a rating."""
        out: dict = {}
        for name in JUDGE_MODES[self.mode]:
            out.update(JUDGE_FUNCTIONS[name](self, cell, concept))
        return combined(self.mode, out)


def combined(mode: str, scores: dict) -> dict:
    """`scores` (every judge's, under its prefix) plus the plain names of the mode's primary judge, and `spearman`
    of the offline and LLM scores when the mode has both."""
    out = dict(scores)
    out.update({key: out[f"{PRIMARY[mode]}_{key}"] for key in SCORES})
    if len(JUDGE_MODES[mode]) > 1:
        out["spearman"] = rank_agreement(torch.tensor(out["offline_score"]), torch.tensor(out["llm_score"]))
    return out


def offline_scores(judges: Judges, cell: Texts, concept: str) -> dict:
    concept_score = judges.classifier.scores(cell.texts, concept)
    if judges.embedder is not None:
        concept_score = (concept_score + judges.embedder.scores(cell.texts, concept)) / 2
    fluency = fluency_scores(cell.perplexity, cell.texts, cell.reference_perplexity)
    return {"offline_score": harmonic_mean(concept_score, fluency).tolist(), "offline_concept":
            concept_score.tolist(), "offline_fluency": fluency.tolist(),
            "offline_on_topic": on_topic(judges.classifier, cell.texts, concept).tolist()}  # fmt: skip


def llm_scores(judges: Judges, cell: Texts, concept: str) -> dict:
    assert judges.complete is not None
    return llm_ratings(judges.complete, cell.texts, cell.instructions, concept)


def llm_ratings(complete: Complete, texts: list[str], instructions: list[str], concept: str) -> dict:
    """AxBench's three ratings of `texts` (each continuing `instructions[i]`); on topic = a concept rating >= 1."""
    rated = rate_texts(complete, texts, concept, instructions)
    return {"llm_score": rated.score.tolist(), "llm_concept": rated.ratings["concept"].tolist(),
            "llm_instruction": rated.ratings["instruction"].tolist(),
            "llm_fluency": rated.ratings["fluency"].tolist(),
            "llm_on_topic": (rated.ratings["concept"] >= 1).float().tolist(), "unparseable": rated.unparseable}  # fmt: skip


JUDGE_FUNCTIONS: dict[str, Callable[[Judges, Texts, str], dict]] = {
    "offline": offline_scores,
    "llm": llm_scores,
}
