"""The index folder's format: its file names, version, manifest and error type (shared by build and reader).

index/manifest.json         # IndexManifest: format version, source run, settings, sizes, norm handling
index/features.parquet      # one row per feature: density, max, mean, top tokens and text (for search)
index/index.safetensors     # per-feature tensors, first dimension n_features
index/tokens.parquet        # id -> display text of every token id the index mentions
index/hierarchy.json        # optional: SNMF hierarchy {"levels": [...], "nodes": [...]}
index/explanations.parquet  # optional (`interp explain`): one row per explained feature, with its scores
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interp import __version__

INDEX_DIR = "index"


INDEX_FORMAT_VERSION = 1


MANIFEST = "manifest.json"


TABLE = "features.parquet"


TENSORS = "index.safetensors"


TOKENS = "tokens.parquet"


HIERARCHY = "hierarchy.json"


EXPLANATIONS = "explanations.parquet"


class FeatureIndexError(ValueError):
    """An index cannot be built or read; the message says what to do."""


@dataclass
class IndexManifest:
    method: str
    n_features: int
    d_in: int
    model: str
    site: str
    decomposer: str  # folder of the decomposer ("" when built from an object)
    store: str
    contexts: str  # contexts.safetensors of the run ("" when absent)
    n_tokens: int  # tokens indexed
    fire_threshold: float
    mean_input_norm: float  # mean L2 norm of the site's activations (the unit of steering strengths)
    logit_lens: str  # how norms are handled ("" when there is no logit lens)
    has_neurons: bool
    has_hierarchy: bool
    config: dict
    seconds: float = 0.0
    created: str = ""
    interp_version: str = __version__
    format_version: int = INDEX_FORMAT_VERSION
    extra: dict = field(default_factory=dict)
