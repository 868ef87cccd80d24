"""torch.distributed on CPU (gloo, 2 processes): a 2-rank capture equals a 1-rank capture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from interp.distributed import rank_range

CORPUS = [f"Sentence {i} is about cats, dogs and the weather on day {i}." for i in range(40)]


def _contexts(model):
    from interp.corpus import Document, pack

    return pack([Document(t) for t in CORPUS], model.tokenizer, context_len=16, n_tokens=400)


def _capture_rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from interp.capture import capture
        from interp.models import load_model

        model = load_model("tiny-llama", device="cpu")
        capture(model, _contexts(model), "0.mlp_hidden,1.resid_post", out, batch_size=3, shard_tokens=30,
                progress=False)  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_rank_range_splits_contiguously():
    blocks = [rank_range(10, r, 3) for r in range(3)]
    assert blocks == [(0, 4), (4, 7), (7, 10)]
    assert rank_range(5, 0, 1) == (0, 5)


def test_two_rank_capture_equals_one_rank(tmp_path, tiny_llama):
    from interp.capture import capture
    from interp.store import ActivationStore

    single, _ = capture(tiny_llama, _contexts(tiny_llama), "0.mlp_hidden,1.resid_post", tmp_path / "one",
                        batch_size=3, shard_tokens=30, progress=False)  # fmt: skip
    mp.start_processes(_capture_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "two")), nprocs=2,
                       start_method="spawn")  # fmt: skip
    for site, store in single.items():
        merged = ActivationStore.open(tmp_path / "two" / site)
        assert merged.n_tokens == store.n_tokens
        assert {s.file.split("/")[0] for s in merged.manifest.shards} == {"rank_000", "rank_001"}
        assert torch.allclose(merged.load_all(), store.load_all(), atol=1e-6)
        for key, value in store.tokens().items():
            assert torch.equal(merged.tokens()[key], value), key
    # rerunning resumes per rank: nothing left to do, nothing duplicated
    mp.start_processes(_capture_rank, args=(2, str(tmp_path / "init2"), str(tmp_path / "two")), nprocs=2,
                       start_method="spawn")  # fmt: skip
    assert ActivationStore.open(tmp_path / "two" / "0.mlp_hidden").n_tokens == single["0.mlp_hidden"].n_tokens


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """`torchrun --nproc-per-node 2 -m interp capture --distributed` end to end."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "interp", "capture", "--distributed", "--model", "tiny-gpt2", "--sites", "1.resid_post",
           "--corpus", str(corpus), "--n-tokens", "300", "--context-len", "16", "--device", "cpu",
           "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from interp.store import ActivationStore

    assert ActivationStore.open(tmp_path / "run" / "1.resid_post").n_tokens == 300


def _snmf_rank(rank: int, world: int, init_file: str, store_path: str, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from safetensors.torch import save_file

        from interp.decompose.snmf import SNMF, SNMFConfig
        from interp.store import ActivationStore

        snmf = SNMF(SNMFConfig(n_features=6, init=init, max_iter=25, stream=True)).fit(
            ActivationStore.open(store_path), progress=False
        )
        save_file({"F": snmf.f.contiguous(), "losses": torch.tensor(snmf.state.losses)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("init", ["svd", "random"])
def test_distributed_snmf_equals_single_process(tmp_path, init):
    from safetensors.torch import load_file

    from interp.decompose.snmf import SNMF, SNMFConfig
    from interp.store import ActivationStore, StoreManifest

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1200, 6, generator=gen).relu() @ torch.randn(6, 64, generator=gen)).contiguous()
    store = ActivationStore.create(
        tmp_path / "s", StoreManifest("m", "0.mlp_hidden", 64, "float32", "x", 8, True)
    )
    for i in range(4):
        ids = torch.arange(300)
        store.append(x[i * 300 : (i + 1) * 300], ids, ids, ids, context_end=i + 1)
    single = SNMF(SNMFConfig(n_features=6, init=init, max_iter=25, stream=True)).fit(store, progress=False)
    mp.start_processes(_snmf_rank, args=(2, str(tmp_path / "init"), str(tmp_path / "s"), init, str(tmp_path / "f")),
                       nprocs=2, start_method="spawn")  # fmt: skip
    for rank in range(2):
        result = load_file(str(tmp_path / f"f.{rank}"))
        assert torch.allclose(result["F"], single.f, atol=1e-4 * single.f.abs().max()), rank
        assert torch.allclose(result["losses"], torch.tensor(single.state.losses), rtol=1e-4)
