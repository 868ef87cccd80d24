"""Reading an index from disk: FeatureIndex, its features and examples, and finding indexes under a folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp import __version__
from interp.features.layout import (
    EXPLANATIONS,
    HIERARCHY,
    INDEX_DIR,
    INDEX_FORMAT_VERSION,
    MANIFEST,
    TABLE,
    TENSORS,
    TOKENS,
    FeatureIndexError,
    IndexManifest,
)


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class Example:
    """One example: the activation at its token, where it is, and its window of tokens with activations."""

    value: float
    row: int  # row in the store
    context: int  # context id in the run's contexts.safetensors
    position: int  # position in that context
    token_ids: list[int]
    texts: list[str]
    acts: list[float | None]  # None outside the context
    peak: int  # index in the window of the example's own token


@dataclass
class Feature:
    """Everything the index holds about one feature."""

    id: int
    density: float
    max: float
    mean: float
    count: int
    threshold: float
    top: list[Example]
    bands: list[tuple[float, float, list[Example]]]  # (low, high, examples) per quantile band
    hist_edges: list[float]
    hist_counts: list[int]
    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]
    similar: list[tuple[int, float]]
    neurons: list[tuple[int, float]]
    n_neurons_nonzero: int | None
    hierarchy: dict | None  # this feature's node: parents and children with weights


class FeatureIndex:
    """A feature index on disk; per-feature reads are slices of a memory-mapped safetensors file."""

    def __init__(self, path: Path, manifest: IndexManifest, table: Any, vocab: dict[int, str],
                 hierarchy: dict | None):  # fmt: skip
        from safetensors import safe_open

        self.path, self.manifest, self.table, self.vocab = path, manifest, table, vocab
        self.hierarchy = hierarchy
        self.nodes = {node["id"]: node for node in hierarchy["nodes"]} if hierarchy else {}
        self._file = safe_open(str(path / TENSORS), framework="pt")
        self._names = set(self._file.keys())

    @classmethod
    def open(cls, path: str | Path) -> FeatureIndex:
        """Open an index folder (or a decomposer folder holding `index/`)."""
        import pandas as pd

        path = Path(path)
        if not (path / MANIFEST).exists() and (path / INDEX_DIR / MANIFEST).exists():
            path = path / INDEX_DIR
        if not (path / MANIFEST).exists():
            raise FeatureIndexError(
                f"no feature index at {path} (no {MANIFEST}); build one with `interp index DECOMPOSER_FOLDER`"
            )
        try:
            data = json.loads((path / MANIFEST).read_text())
        except json.JSONDecodeError as e:
            raise FeatureIndexError(
                f"corrupt index manifest {path / MANIFEST} ({e}); rebuild the index"
            ) from e
        version = data.get("format_version")
        if version != INDEX_FORMAT_VERSION:
            raise FeatureIndexError(
                f"the index at {path} has format version {version}, but this interp ({__version__}) reads "
                f"version {INDEX_FORMAT_VERSION}; rebuild it with `interp index {data.get('decomposer') or 'FOLDER'}`"
            )
        fields = {f.name for f in dataclasses.fields(IndexManifest)}
        try:
            manifest = IndexManifest(**{k: v for k, v in data.items() if k in fields})
        except TypeError as e:
            raise FeatureIndexError(
                f"incomplete index manifest {path / MANIFEST} ({e}); rebuild the index"
            ) from e
        missing = [name for name in (TABLE, TENSORS, TOKENS) if not (path / name).exists()]
        if missing:
            raise FeatureIndexError(f"the index at {path} lacks {', '.join(missing)}; rebuild the index")
        tokens = pd.read_parquet(path / TOKENS)
        vocab = dict(zip(tokens["id"].tolist(), tokens["text"].tolist(), strict=True))
        tree = json.loads((path / HIERARCHY).read_text()) if (path / HIERARCHY).exists() else None
        table = pd.read_parquet(path / TABLE)
        if (path / EXPLANATIONS).exists():  # the explanations join the table, for sorting and search
            explained = pd.read_parquet(path / EXPLANATIONS, columns=["feature", "explanation"])
            text = dict(zip(explained["feature"].tolist(), explained["explanation"].tolist(), strict=True))
            table["explanation"] = [text.get(f, "") for f in table["feature"].tolist()]
        return cls(path, manifest, table, vocab, tree)

    @property
    def n_features(self) -> int:
        return self.manifest.n_features

    def explanations(self) -> Any:
        """The table `interp explain` wrote (one row per explained feature: explanation, detection / fuzzing
        scores and their shuffled baselines, example ids, LLM and prompt version), or None when not explained."""
        import pandas as pd

        path = self.path / EXPLANATIONS
        return pd.read_parquet(path) if path.exists() else None

    def explanation(self, feature: int) -> dict[str, Any] | None:
        """The explanation row of one feature (a dict), or None when it has none."""
        table = self.explanations()
        if table is None:
            return None
        rows = table[table["feature"] == self.check_feature(feature)]
        return rows.iloc[-1].to_dict() if len(rows) else None

    def _row(self, name: str, feature: int) -> torch.Tensor:
        return self._file.get_slice(name)[feature]

    def _examples(self, prefix: str, feature: int) -> list[Example] | list[list[Example]]:
        """Examples of one feature: a list (`top`) or a list per band (`band`)."""
        get = {f: self._row(f"{prefix}_{f}", feature) for f in ("values", "rows", "context", "position",
                                                                 "tokens", "acts")}  # fmt: skip
        if get["values"].ndim == 2:  # bands: [n_bands, s]
            return [self._make(get, band) for band in range(get["values"].shape[0])]
        return self._make(get, None)

    def _make(self, get: dict[str, torch.Tensor], band: int | None) -> list[Example]:
        pick = {name: (t if band is None else t[band]) for name, t in get.items()}
        keep = (pick["rows"] >= 0).nonzero()[:, 0].tolist()
        order = sorted(keep, key=lambda j: -float(pick["values"][j]))
        width = pick["tokens"].shape[1]
        out = []
        for j in order:  # the few examples of one feature
            ids = pick["tokens"][j].tolist()
            acts = [None if a != a else a for a in pick["acts"][j].tolist()]
            out.append(Example(float(pick["values"][j]), int(pick["rows"][j]), int(pick["context"][j]),
                               int(pick["position"][j]), ids, [self.vocab.get(i, "") for i in ids], acts,
                               width // 2))  # fmt: skip
        return out

    def check_feature(self, feature: int) -> int:
        if not 0 <= int(feature) < self.n_features:
            raise FeatureIndexError(
                f"feature {feature} is out of range: this index has features 0..{self.n_features - 1}"
            )
        return int(feature)

    def feature(self, feature: int) -> Feature:
        """Everything about one feature, read from disk."""
        f = self.check_feature(feature)
        edges = self._row("band_edges", f).tolist()
        bands = [(edges[b], edges[b + 1], ex) for b, ex in enumerate(self._examples("band", f))]
        peak, threshold = float(self._row("max", f)), float(self._row("threshold", f))
        n_bins = self._file.get_slice("hist").get_shape()[1]
        step = (peak - threshold) / n_bins
        lens = {}
        for side in ("promoted", "suppressed"):
            if f"logit_{side}_ids" in self._names:
                ids, values = self._row(f"logit_{side}_ids", f).tolist(), self._row(f"logit_{side}_values", f)
                lens[side] = [(self.vocab.get(i, str(i)), float(v)) for i, v in zip(ids, values, strict=True)]
        neurons, nonzero = [], None
        if "neuron_ids" in self._names:
            ids, weights = self._row("neuron_ids", f).tolist(), self._row("neuron_weights", f).tolist()
            neurons = [(i, w) for i, w in zip(ids, weights, strict=True) if w != 0]
            nonzero = int(self._row("neuron_nonzero", f))
        similar = list(
            zip(self._row("similar_ids", f).tolist(), self._row("similar_cos", f).tolist(), strict=True)
        )
        return Feature(
            id=f, density=float(self._row("density", f)), max=peak, mean=float(self._row("mean", f)),
            count=int(self._row("count", f)), threshold=threshold, top=self._examples("top", f), bands=bands,
            hist_edges=[threshold + step * i for i in range(n_bins + 1)],
            hist_counts=self._row("hist", f).tolist(), promoted=lens.get("promoted", []),
            suppressed=lens.get("suppressed", []), similar=similar, neurons=neurons,
            n_neurons_nonzero=nonzero, hierarchy=self.nodes.get(f"L1:{f}"),
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------- discovery
def find_indexes(root: str | Path) -> list[dict[str, Any]]:
    """Every index folder under `root`: {"path", "model", "site", "method", "n_features", "decomposer", "error"}.

    An index that cannot be read (e.g. an older format) is listed with its error, so the browser can say so.
    """
    rows = []
    for manifest in sorted(Path(root).rglob(f"{INDEX_DIR}/{MANIFEST}")):
        row: dict[str, Any] = {"path": str(manifest.parent), "error": ""}
        try:
            data = json.loads(manifest.read_text())
        except (json.JSONDecodeError, OSError) as e:
            data = {}
            row["error"] = f"unreadable manifest: {e}"
        for key in ("model", "site", "method", "n_features", "decomposer", "format_version"):
            row[key] = data.get(key, "?")
        if not row["error"] and data.get("format_version") != INDEX_FORMAT_VERSION:
            row["error"] = (
                f"format version {data.get('format_version')} (this interp reads {INDEX_FORMAT_VERSION}): rebuild "
                f"it with `interp index {data.get('decomposer') or manifest.parent.parent}`"
            )
        row["name"] = (
            Path(row["decomposer"]).name
            if row["decomposer"] not in ("", "?")
            else manifest.parent.parent.name
        )
        rows.append(row)
    return rows


def find_unindexed(root: str | Path) -> list[Path]:
    """Decomposer folders under `root` (config.json with a method, model.safetensors) that have no index yet."""
    out = []
    for config in sorted(Path(root).rglob("config.json")):
        folder = config.parent
        if "checkpoint" in folder.parts or not (folder / "model.safetensors").exists():
            continue
        if (folder / INDEX_DIR / MANIFEST).exists():
            continue
        try:
            if "method" in json.loads(config.read_text()):
                out.append(folder)
        except (json.JSONDecodeError, OSError):
            continue
    return out
