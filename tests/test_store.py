"""ActivationStore: atomic shards, corrupt / truncated files, bounded-memory shuffled batches."""

from __future__ import annotations

import json

import pytest
import torch

from interp.store import MANIFEST, ActivationStore, StoreError, StoreManifest


def make_store(
    path, n_shards: int = 5, rows: int = 100, d: int = 8, dtype: str = "float32"
) -> ActivationStore:
    manifest = StoreManifest(
        model="synthetic",
        site="0.mlp_hidden",
        d=d,
        dtype=dtype,
        corpus_fingerprint="x",
        context_len=11,
        drop_bos=True,
    )
    store = ActivationStore.create(path, manifest)
    for i in range(n_shards):
        acts = torch.arange(i * rows, (i + 1) * rows, dtype=torch.float32)[:, None].repeat(1, d)
        ids = torch.arange(i * rows, (i + 1) * rows)
        store.append(acts, ids, ids // 10, ids % 10 + 1, context_end=(i + 1) * rows // 10)
    return store


def test_round_trip_and_reopen(tmp_path):
    store = make_store(tmp_path / "s")
    again = ActivationStore.open(tmp_path / "s")
    assert again.n_tokens == 500 and again.n_shards == 5 and again.d == 8
    assert torch.equal(again.load_all()[:, 0], torch.arange(500, dtype=torch.float32))
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["n_tokens"] == 500 and manifest["model"] == "synthetic" and manifest["interp_version"]
    assert store.manifest.n_contexts == 50


def test_shuffled_batches_cover_every_row_once_with_bounded_memory(tmp_path, monkeypatch):
    store = make_store(tmp_path / "s", n_shards=10, rows=100)
    loaded = []
    real_load = store.load_shard
    monkeypatch.setattr(store, "load_shard", lambda i: loaded.append(i) or real_load(i))
    batches = store.batches(batch_size=64, shuffle=True, seed=1, buffer_shards=2)
    first = next(batches)
    assert len(loaded) == 2  # only the first buffer's shards are in memory
    rows = torch.cat([first, *batches])[:, 0]
    assert len(loaded) == 10
    assert torch.equal(rows.sort().values, torch.arange(1000, dtype=torch.float32))
    assert not torch.equal(rows, torch.arange(1000, dtype=torch.float32))  # shuffled
    again = torch.cat(list(store.batches(64, seed=1, buffer_shards=2)))[:, 0]
    assert torch.equal(rows, again)  # same seed, same order


def test_unshuffled_batches_keep_order_and_drop_last(tmp_path):
    store = make_store(tmp_path / "s", n_shards=3, rows=50)
    rows = torch.cat(list(store.batches(40, shuffle=False)))[:, 0]
    assert torch.equal(rows, torch.arange(150, dtype=torch.float32))
    assert all(b.shape[0] == 40 for b in store.batches(40, shuffle=False, drop_last=True))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage(tmp_path, dtype):
    store = make_store(tmp_path / "s", n_shards=2, rows=10, dtype=dtype)
    assert store.load_shard(0)["acts"].dtype == getattr(torch, dtype)
    assert store.load_all().dtype == torch.float32


def test_truncated_shard_is_reported(tmp_path):
    store = make_store(tmp_path / "s")
    shard = tmp_path / "s" / store.manifest.shards[2].file
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(StoreError, match="truncated or corrupt; delete the folder and capture again"):
        list(ActivationStore.open(tmp_path / "s").iter_shards())


def test_corrupt_shard_is_reported(tmp_path):
    store = make_store(tmp_path / "s")
    shard = tmp_path / "s" / store.manifest.shards[1].file
    data = bytearray(shard.read_bytes())
    data[:8] = b"\xff" * 8  # header length garbage, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="cannot be read"):
        ActivationStore.open(tmp_path / "s").load_shard(1)


def test_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(StoreError, match="no activation store at"):
        ActivationStore.open(tmp_path / "nothing")
    make_store(tmp_path / "run" / "0.mlp_hidden")
    with pytest.raises(StoreError, match="holds the stores of sites 0.mlp_hidden: pass one of them"):
        ActivationStore.open(tmp_path / "run")
    (tmp_path / "run" / "0.mlp_hidden" / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="corrupt manifest"):
        ActivationStore.open(tmp_path / "run" / "0.mlp_hidden")


def test_orphan_shard_from_a_killed_write_is_never_read(tmp_path):
    """A shard renamed into place whose manifest update never happened is ignored, then overwritten."""
    make_store(tmp_path / "s", n_shards=2)
    (tmp_path / "s" / "shard_00002.safetensors").write_bytes(b"half a shard")
    (tmp_path / "s" / ".shard_00003.safetensors.tmp-123").write_bytes(b"temp")
    again = ActivationStore.open(tmp_path / "s")
    assert again.n_shards == 2 and again.n_tokens == 200
    again.append(torch.ones(5, 8), torch.zeros(5), torch.zeros(5), torch.ones(5), context_end=21)
    assert again.load_shard(2)["acts"].shape == (5, 8)


def test_empty_store_and_wrong_width(tmp_path):
    store = make_store(tmp_path / "s", n_shards=0)
    with pytest.raises(StoreError, match="is empty; capture some tokens first"):
        store.load_all()
    with pytest.raises(StoreError, match="acts must be \\[n, 8\\]"):
        store.append(torch.ones(3, 7), torch.zeros(3), torch.zeros(3), torch.zeros(3), context_end=1)


def test_older_format_is_refused(tmp_path):
    make_store(tmp_path / "s", n_shards=1)
    path = tmp_path / "s" / MANIFEST
    data = json.loads(path.read_text())
    data["format_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="format version 0 is not 1"):
        ActivationStore.open(tmp_path / "s")
