"""ActivationStore: one site's activations on disk, its manifest, the merge of rank stores, and batch iterators."""

from interp.store.activations import ActivationStore, as_tensor, data_fingerprint
from interp.store.manifest import CONTEXTS_FILE, DTYPES, MANIFEST, ShardInfo, StoreError, StoreManifest
from interp.store.merge import merge_rank_stores

__all__ = ["CONTEXTS_FILE", "DTYPES", "MANIFEST", "ActivationStore", "ShardInfo", "StoreError", "StoreManifest",
           "as_tensor", "data_fingerprint", "merge_rank_stores"]  # fmt: skip
