"""Text corpora (documents) and their packing into token contexts."""

from interp.corpus.contexts import Contexts, load_contexts, pack
from interp.corpus.documents import (
    BBC_TOPICS,
    DEFAULT_CORPUS,
    CorpusError,
    Document,
    bbc_documents,
    dataset_documents,
    load_documents,
)

__all__ = ["BBC_TOPICS", "DEFAULT_CORPUS", "Contexts", "CorpusError", "Document", "bbc_documents",
           "dataset_documents", "load_contexts", "load_documents", "pack"]  # fmt: skip
