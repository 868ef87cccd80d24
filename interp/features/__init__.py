"""The feature index: built once by streaming passes over a store, read by the browser, notebooks and CLI."""

from interp.features.build import IndexConfig, IndexManifest, build_index
from interp.features.reader import (
    Example,
    Feature,
    FeatureIndex,
    FeatureIndexError,
    find_indexes,
    find_unindexed,
)

__all__ = ["Example", "Feature", "FeatureIndex", "FeatureIndexError", "IndexConfig", "IndexManifest",
           "build_index", "find_indexes", "find_unindexed"]  # fmt: skip
