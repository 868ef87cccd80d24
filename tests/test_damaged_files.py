"""Damaged files (torn by a crash or a full disk, or overwritten): every reader names the file and the fix."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from interp.cli import app
from interp.decompose.base import DecomposerError, read_decomposer, save_decomposer
from interp.store import ActivationStore, StoreError

runner = CliRunner()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def damage(data: bytes, cut: int | None, start: int, garbage: bytes) -> bytes:
    """`data` truncated to `cut` bytes (None: kept whole), then bytes from `start` overwritten by `garbage`."""
    data = data[:cut] if cut is not None else data
    start = min(start, len(data))
    return data[:start] + garbage + data[start + len(garbage) :]


damages = st.tuples(st.one_of(st.none(), st.integers(0, 2000)), st.integers(0, 2000), st.binary(max_size=64))


@FUZZ
@given(damages)
def test_a_damaged_decomposer_file_is_named(case):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dec"
        save_decomposer(folder, "fixed", {"n_features": 4, "d_in": 8}, {"W": torch.randn(4, 8)})
        path = folder / "model.safetensors"
        data = path.read_bytes()
        broken = damage(data, *case)
        path.write_bytes(broken)
        try:
            meta, tensors = read_decomposer(folder)
        except DecomposerError as e:
            assert str(path) in str(e) and "fit the decomposer again" in str(e)
        else:  # only overwritten tensor bytes can go unnoticed (safetensors has no checksum)
            assert len(broken) == len(data) and tensors["W"].shape == (4, 8)


def test_a_damaged_config_is_named(tmp_path):
    save_decomposer(tmp_path / "d", "fixed", {"n_features": 4, "d_in": 8}, {"W": torch.randn(4, 8)})
    for text in ('{"method": "fix', "\udcff", "[1, 2]"):
        (tmp_path / "d" / "config.json").write_text(text, errors="surrogateescape")
        with pytest.raises(DecomposerError, match="config.json is damaged"):
            read_decomposer(tmp_path / "d")


@pytest.fixture(scope="module")
def shard_store(tmp_path_factory) -> ActivationStore:
    from interp.store import StoreManifest

    manifest = StoreManifest(model="tiny-llama", site="0.resid_post", d=8, dtype="float32",
                             corpus_fingerprint="x", context_len=4, drop_bos=True)  # fmt: skip
    store = ActivationStore.create(tmp_path_factory.mktemp("store") / "0.resid_post", manifest)
    n = 12
    store.append(torch.randn(n, 8), torch.arange(n), torch.arange(n) // 4, torch.arange(n) % 4, 3, 0)
    return store


@FUZZ
@given(damages)
def test_a_damaged_store_shard_is_named(shard_store, case):
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "0.resid_post"
        shutil.copytree(shard_store.path, copy)
        path = copy / shard_store.manifest.shards[0].file
        data = path.read_bytes()
        broken = damage(data, *case)
        path.write_bytes(broken)
        store = ActivationStore.open(copy)
        try:
            acts = store.load_shard(0)["acts"]
        except StoreError as e:
            assert str(path) in str(e) and "capture again" in str(e)
        else:
            assert len(broken) == len(data) and acts.shape == (12, 8)


def test_index_and_evaluate_name_a_truncated_file(tmp_path):
    """A torn decomposer `model.safetensors` or store shard: exit 2, the file and the fix named, no traceback."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} is about cats and dogs, {i * 7}." for i in range(40)))
    capture = ["capture", "--model", "tiny-llama", "--sites", "0.resid_post", "--corpus", str(corpus), "--n-tokens",
               "200", "--context-len", "32", "--out", str(tmp_path / "run"), "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, capture).exit_code == 0
    store = ActivationStore.open(tmp_path / "run" / "0.resid_post")
    fit = ["fit", "--method", "topk", "--store", str(store.path), "--out", str(tmp_path / "sae"), "--k", "16",
           "--topk-k", "2", "--n-steps", "3", "--batch-size", "64", "--device", "cpu"]  # fmt: skip
    assert runner.invoke(app, fit).exit_code == 0
    weights = tmp_path / "sae" / "model.safetensors"
    intact = weights.read_bytes()
    commands = (["index", str(tmp_path / "sae"), "--device", "cpu"],
                ["evaluate", str(tmp_path / "sae"), "--n-contexts", "0", "--device", "cpu"])  # fmt: skip
    weights.write_bytes(intact[: len(intact) // 2])
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert str(weights) in result.output and "fit the decomposer again" in result.output
    weights.write_bytes(intact)
    shard = store.path / store.manifest.shards[0].file
    shard.write_bytes(shard.read_bytes()[:100])
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert str(shard) in result.output and "capture again" in result.output
