"""The stores that the ranks of a distributed capture wrote, seen as one store."""

from __future__ import annotations

from pathlib import Path

from interp.store.activations import ActivationStore
from interp.store.manifest import ShardInfo, StoreManifest


def merge_rank_stores(site_dir: str | Path, world: int) -> ActivationStore:
    """Write the manifest of `site_dir` listing the shards of its `rank_NNN/` stores in context order (atomically).

    Used after a distributed capture: each rank wrote its own store; readers see one store.
    """
    site_dir = Path(site_dir)
    parts = [ActivationStore.open(site_dir / f"rank_{r:03d}") for r in range(world)]
    manifest = StoreManifest(**{**parts[0].manifest.__dict__, "shards": []})
    for r, part in enumerate(parts):
        for shard in part.manifest.shards:
            manifest.shards.append(ShardInfo(**{**shard.__dict__, "file": f"rank_{r:03d}/{shard.file}"}))
    manifest.shards.sort(key=lambda s: s.context_start)
    store = ActivationStore(site_dir, manifest)
    store._write_manifest()
    return store
