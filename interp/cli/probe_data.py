"""Labelled text sets for `interp bench store`'s probing: the built-in concept sets (bbc, sentiment) or a user
.csv / .jsonl / .parquet file with columns `text` and `label` (or `concept`)."""

from __future__ import annotations

from pathlib import Path


def probing_texts(source: str, n_texts: int, seed: int = 0):
    """A LabelledTexts of at most about `n_texts` texts (an equal share per class), 30% held out."""
    from interp.evaluate.store_bench import LabelledTexts
    from interp.steer.concepts import BUILTIN, load_concepts, make_concept_set

    if source in BUILTIN or Path(source).suffix not in (".csv", ".jsonl", ".parquet"):
        probe = load_concepts(source, seed=seed)
    else:
        from interp.corpus import dataset_documents

        docs = dataset_documents(source, "text", label_column="label")
        if not any(d.label for d in docs):
            docs = dataset_documents(source, "text", label_column="concept")
        if not any(d.label for d in docs):
            raise ValueError(f"{source} needs columns 'text' and 'label' (or 'concept')")
        docs = [d for d in docs if d.text.strip() and d.label]
        probe = make_concept_set(
            Path(source).stem, [d.text for d in docs], [d.label for d in docs], seed=seed
        )
    per_class = max(2, n_texts // max(len(probe.names), 1))
    probe = make_concept_set(probe.name, probe.texts, probe.concepts, per_concept=per_class, seed=seed)
    names = probe.names
    labels = [names.index(c) for c in probe.concepts]
    return LabelledTexts(probe.name, probe.texts, labels, names, probe.train, probe.held_out)
